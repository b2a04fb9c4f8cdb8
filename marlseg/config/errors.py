"""A pydantic ``ValidationError`` as one :class:`~marlseg.errors.ConfigError` naming the dotted
field path. Imports no other config module."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from marlseg.errors import ConfigError


def _loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif p in ("function-after", "function-before") or str(p).startswith("function-"):
            continue
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts)


def as_config_error(e: ValidationError, prefix: str | None = None) -> ConfigError:
    err = e.errors()[0]
    where = _loc(tuple(err["loc"]))
    if prefix:
        where = f"{prefix}.{where}" if where else prefix
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif "input" in err and err["type"] not in ("value_error",):
        msg = f"{msg} (got {json.dumps(err['input'], default=str)[:60]})"
    msg = msg.removeprefix("Value error, ")
    more = len(e.errors()) - 1
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ConfigError(where or "config", msg)
