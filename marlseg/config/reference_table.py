"""The config reference (docs/config.md's table), generated from the models' field
docstrings. Imports :mod:`marlseg.config.base` and :mod:`marlseg.config.root`."""

from __future__ import annotations

import inspect
import json
import typing
from pathlib import Path

from pydantic import BaseModel

from marlseg.config.base import DatasetRef, Section
from marlseg.config.root import Config


def _section_model(annotation: object) -> type[Section] | None:
    """The section model a field holds (``X`` or ``X | None``), or ``None`` for a plain value."""
    return next(
        (
            a
            for a in (annotation, *typing.get_args(annotation))
            if isinstance(a, type) and issubclass(a, Section)
        ),
        None,
    )


def reference(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(key, default, description)`` for every field, nested sections flattened: the
    README's config reference is generated from this, so code and docs are the same text."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _section_model(field.annotation)
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


def sections_markdown() -> str:
    """docs/architecture.md's "which file for which key" table: every top-level key, the file
    that defines (and documents) its fields, and the stage module that reads it when the key
    is a stage's own section (``run`` is the run directory, not the chain stage ``run``)."""
    from marlseg.stages import STAGES

    root = Path(__file__).resolve().parents[2]
    lines = ["| key | defined in | the stage that runs it |", "|---|---|---|"]
    for name, field in Config.model_fields.items():
        model = _section_model(field.annotation)
        assert model is not None, name  # every top-level key is a section or a DatasetRef
        defined = Path(inspect.getfile(model)).resolve().relative_to(root)
        stage = STAGES.get(name, "").split(":")[0] if name != "run" else ""
        stage_file = f"`{stage.replace('.', '/')}.py`" if stage else ""
        lines.append(f"| `{name}` | `{defined}` ({model.__name__}) | {stage_file} |")
    return "\n".join(lines)
