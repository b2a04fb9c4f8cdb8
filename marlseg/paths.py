"""Where a relative path in a config points.

The rule: **a relative path written in a config file is relative to that file's directory**,
so a config works from any current directory (the shipped ones in ``configs/`` say
``../data/fib_train.h5``). Paths given on the command line (``--set``) and the defaults
(``run.dir``: ``runs/default``) are relative to the directory the command runs in, as any
command-line path is. Files a config points at follow their own rule (a tags CSV's rows are
relative to the CSV).

Which fields are paths is read from the config models (every ``Path`` field, at any depth,
in sections, dataset references and lists of them), so a new path field follows the rule
without being listed anywhere.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel


def _types(annotation: Any) -> list[Any]:
    """``annotation`` and, recursively, its arguments (``list[X] | None`` -> list, X, None)."""
    out = [annotation]
    for arg in typing.get_args(annotation):
        out.extend(_types(arg))
    return out


def _is_path(annotation: Any) -> bool:
    return any(t is Path for t in _types(annotation))


def _section(annotation: Any) -> type[BaseModel] | None:
    return next(
        (t for t in _types(annotation) if isinstance(t, type) and issubclass(t, BaseModel)),
        None,
    )


def absolute(value: str | os.PathLike[str], base: str | os.PathLike[str]) -> str:
    """``value`` (``~`` expanded) made absolute against ``base``, ``..`` folded."""
    path = Path(value).expanduser()
    return os.path.normpath(path if path.is_absolute() else Path(base).absolute() / path)


def rebase(data: Any, model: type[BaseModel], base: str | os.PathLike[str]) -> Any:
    """``data`` (the JSON of a ``model``) with every relative path field made absolute
    against ``base``; anything that is not a path is left as it is (validation comes after)."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for name, field in model.model_fields.items():
        value = out.get(name)
        if value is None:
            continue
        sub = _section(field.annotation)
        if sub is not None and isinstance(value, dict):
            out[name] = rebase(value, sub, base)
        elif sub is not None and isinstance(value, list):
            out[name] = [rebase(v, sub, base) for v in value]
        elif _is_path(field.annotation) and isinstance(value, str | os.PathLike):
            out[name] = absolute(value, base)
    return out


def path_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """The dotted names of every path field of ``model`` (``[]`` marks a list)."""
    names: list[str] = []
    for name, field in model.model_fields.items():
        sub = _section(field.annotation)
        key = f"{prefix}{name}"
        if sub is not None:
            is_list = any(typing.get_origin(t) is list for t in _types(field.annotation))
            names.extend(path_fields(sub, f"{key}[]." if is_list else f"{key}."))
        elif _is_path(field.annotation):
            names.append(key)
    return names
