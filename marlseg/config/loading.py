"""Reading a config: ``--set`` overrides, :func:`load_config` (JSON file, overrides,
validation; writes nothing) and :func:`dump_config`. Imports :mod:`marlseg.config.root` and
:mod:`marlseg.config.errors`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from marlseg.config.errors import as_config_error
from marlseg.config.root import Config
from marlseg.errors import ConfigError


def parse_override(item: str) -> tuple[list[str], Any]:
    """``section.key=value`` with a JSON value (bare words are taken as strings)."""
    if "=" not in item:
        raise ConfigError("--set", f"expected section.key=value, got {item!r}")
    key, raw = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError("--set", f"empty key in {item!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(".".join(keys), f"{k!r} is not a section")
            node = nxt
        node[keys[-1]] = value
    return data


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a config. Raises ConfigError; writes nothing."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(str(p), "config file not found")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(
                str(p), f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(str(p), f"cannot read: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(str(p), "the config must be a JSON object")
        from marlseg.paths import rebase

        data = rebase(data, Config, p.parent)  # relative to the config file (marlseg.paths)
    data = apply_overrides(data, overrides or [])
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise as_config_error(e) from None


def dump_config(config: Config) -> str:
    """The config as JSON, ``db.uri``'s password masked: no printed or written config holds
    it (workers get a password URI through their environment, :mod:`marlseg.rag`)."""
    from marlseg.db import mask_uri

    data = config.model_dump(mode="json")
    if data["db"].get("uri"):
        data["db"]["uri"] = mask_uri(data["db"]["uri"])
    return json.dumps(data, indent=2)
