"""The ``evaluate`` section (``06_evaluate.py``). Imports :mod:`marlseg.config.base` and
:mod:`marlseg.config.segments` (the thresholds type)."""

from __future__ import annotations

from pydantic import field_validator

from marlseg.config.base import StageSection, check_block
from marlseg.config.segments import Thresholds


class EvaluateConfig(StageSection):
    thresholds: Thresholds | None = None
    """Thresholds to score; ``null``: all of ``segments.thresholds``."""
    ignore_label: int | None = 0
    """Ground-truth label excluded from scoring (``null``: score every voxel)."""
    block_shape: list[int] | None = None
    """Block shape for the contingency table, nm; ``null``: ``fragments.block_shape``."""

    _v_block = field_validator("block_shape")(classmethod(lambda cls, v: check_block(v)))
