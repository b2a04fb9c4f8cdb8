"""What every config section is built on: :class:`Section` (unknown keys are errors),
:class:`DatasetRef`, the constrained number types, the shape and context validators, and
the base of the blockwise stages' sections (a per-stage ``workers`` override). Imports no
other config module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

NonNegInt = Annotated[int, Field(ge=0)]
PosInt = Annotated[int, Field(gt=0)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True
    )


class DatasetRef(Section):
    """A dataset inside a container: ``{"path": "x.zarr" | "x.h5", "dataset": "volumes/raw"}``."""

    path: Path
    """Container path: a zarr directory (``.zarr``/``.n5``) or an HDF5 file (``.h5``/``.hdf``).
    Relative paths are taken from the config file's directory (a ``--set`` value's from the
    directory the command runs in)."""
    dataset: str
    """Dataset inside the container, e.g. ``volumes/raw``."""

    def __str__(self) -> str:
        return f"{self.path}:{self.dataset}"


def check_shape(v: list[int] | None, n: int = 3) -> list[int] | None:
    if v is None:
        return v
    if len(v) != n:
        raise ValueError(f"expected {n} values (z, y, x), got {len(v)}")
    return v


def check_context(v: list[int] | None) -> list[int] | None:
    v = check_shape(v)
    if v is not None and any(c < 0 for c in v):
        raise ValueError(f"context must be >= 0 on every axis, got {v}")
    return v


def check_block(v: list[int] | None) -> list[int] | None:
    v = check_shape(v)
    if v is not None and any(c <= 0 for c in v):
        raise ValueError(f"block shape must be > 0 on every axis, got {v}")
    return v


def check_yx(v: list[int]) -> list[int]:
    if len(v) != 2:
        raise ValueError(f"expected 2 values (y, x), got {len(v)}")
    if any(c <= 0 for c in v):
        raise ValueError(f"expected (y, x) > 0, got {v}")
    return v


class StageSection(Section):
    workers: dict[str, Any] | None = None
    """Overrides of the global ``workers`` keys for this stage."""
