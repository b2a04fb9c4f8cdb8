"""The config reference (docs/config.md's table), generated from the models' field
docstrings. Imports :mod:`marlseg.config.base` and :mod:`marlseg.config.root`."""

from __future__ import annotations

import json

from pydantic import BaseModel

from marlseg.config.base import DatasetRef, Section
from marlseg.config.root import Config


def reference(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(key, default, description)`` for every field, nested sections flattened: the
    README's config reference is generated from this, so code and docs are the same text."""
    import typing

    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        sub = next(
            (
                a
                for a in (ann, *typing.get_args(ann))
                if isinstance(a, type) and issubclass(a, Section)
            ),
            None,
        )
        if sub is not None and sub is not DatasetRef:
            if field.description:
                rows.append((key, "", field.description))
            rows.extend(reference(sub, key + "."))
            continue
        default = "required" if field.is_required() else json.dumps(field.default, default=str)
        rows.append((key, default, " ".join((field.description or "").split())))
    return rows


def reference_markdown() -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, text in reference():
        lines.append(
            f"| `{key}` | {f'`{default}`' if default else ''} | {text.replace('|', '/')} |"
        )
    return "\n".join(lines)
