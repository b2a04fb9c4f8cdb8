"""The ``extract`` section (``05_extract_segmentation.py``). Imports only
:mod:`marlseg.config.base`."""

from __future__ import annotations

from pydantic import field_validator

from marlseg.config.base import DatasetRef, StageSection, Unit, check_block


class ExtractConfig(StageSection):
    threshold: Unit = 0.5
    """Which LUT (one of ``segments.thresholds``) to relabel the fragments with."""
    segmentation: DatasetRef | None = None
    """Output segmentation. ``null``: ``run.dir/segmentation.zarr`` / ``volumes/segmentation_<t>``."""
    block_shape: list[int] | None = None
    """Write block shape, nm; ``null``: ``fragments.block_shape``."""

    _v_block = field_validator("block_shape")(classmethod(lambda cls, v: check_block(v)))
