"""The ``tune`` section (``workflows/tune.py``) and the ``fragments`` keys it cannot vary.
Imports :mod:`marlseg.config.base`, :mod:`marlseg.config.fragments` (the grid is checked
against it) and :mod:`marlseg.config.segments` (the default thresholds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError, field_validator

from marlseg.config.base import Section, check_block, check_shape
from marlseg.config.fragments import FragmentsConfig
from marlseg.config.segments import TUNE_THRESHOLDS, Thresholds

TUNE_FIXED_KEYS = ("affs", "boundary", "fragments", "mask", "workers")
"""``fragments`` keys that name data or workers, not parameters: ``tune.fragments`` cannot
vary them."""


class TuneConfig(Section):
    """Parameter sweep on an annotated crop (``workflows/tune.py``): every combination of the
    ``fragments`` grid, each ``merge_functions`` entry and every threshold is scored against
    ``gt`` inside the crop, emulating the blockwise chain (fragments cut at the block faces of
    each setting's ``block_shape``). The input config's own setting is always scored too. The
    best setting is written as a config (``output``), all rows to ``run.dir/tune.json``."""

    offset: list[int] | None = None
    """Crop begin, nm (z, y, x); ``null``: the begin of ``gt``."""
    shape: list[int] | None = None
    """Crop shape, nm; ``null``: up to the end of ``gt``."""
    fragments: dict[str, list[Any]] = {
        "block_shape": [[400, 400, 400], [800, 800, 800], [1200, 1200, 1200]],
        "min_seed_distance": [5, 10, 15],
    }
    """Values to try per ``fragments`` key (any parameter of that section); the grid is their
    product, the config's values fill the other keys."""
    merge_functions: list[str] = ["hist_quant_50", "hist_quant_75", "mean"]
    """``agglomerate.merge_function`` values to try."""
    thresholds: Thresholds = TUNE_THRESHOLDS
    """Thresholds scored for every setting; the tuned config gets them as
    ``segments.thresholds`` and the best as ``extract.threshold``."""
    output: Path | None = None
    """The tuned config; ``null``: ``run.dir/tuned.json``."""

    _v_shape = field_validator("shape")(classmethod(lambda cls, v: check_block(v)))
    _v_offset = field_validator("offset")(classmethod(lambda cls, v: check_shape(v)))

    @field_validator("fragments")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if key in TUNE_FIXED_KEYS or key not in FragmentsConfig.model_fields:
                raise ValueError(f"{key}: not a parameter of the fragments section")
            if not values:
                raise ValueError(f"{key}: no values to try")
            for value in values:
                try:
                    FragmentsConfig.model_validate({key: value})
                except ValidationError as e:
                    raise ValueError(f"{key}: {e.errors()[0]['msg']} (got {value!r})") from None
        return v

    @field_validator("merge_functions", "thresholds")
    @classmethod
    def _nonempty(cls, v: list) -> list:
        if not v:
            raise ValueError("at least one value is needed")
        return v
