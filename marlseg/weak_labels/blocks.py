"""Which blocks the where-to-segment mask lets the blockwise stages skip.

With ``weak_labels.skip_blocks``, stages 01 predict, 02 fragments, 03 agglomerate and 05 extract
skip every block whose write ROI holds no non-zero voxel of ``weak_labels.mask`` (the mask
``08_weak_labels.py`` writes). A kept block is processed exactly as without the mask (its
context may read zeros where a neighbour was skipped upstream), so neurites in kept blocks are
untouched; skipped blocks stay at the outputs' fill value (0: no affinities, no fragment, no
RAG node, background). 04 works on the RAG, which has nothing in skipped blocks; 06 evaluates
what was written.

Which blocks are kept is part of each stage's fingerprint (:mod:`marlseg.blockwise`): a stage
re-run with another mask, or with ``skip_blocks`` switched, is refused until ``--restart``, so
outputs made under two masks are never mixed. Masked blocks are not recorded as done.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi

from marlseg.config import Config, DatasetRef
from marlseg.errors import ConfigError
from marlseg.volumes import dataset_exists, open_volume, read

MASKED_STAGES = ("predict", "fragments", "agglomerate", "extract")


def mask_ref(config: Config) -> DatasetRef:
    """Where ``08`` writes the mask and the stages read it."""
    return config.weak_labels.mask or DatasetRef(
        path=Path(config.run.dir) / "weak_mask.zarr", dataset="volumes/mask"
    )


def keep_blocks(
    config: Config, stage: str, total: Roi, write_shape: Coordinate, grid: list[int]
) -> np.ndarray | None:
    """Per block of ``stage``'s grid, whether it has a voxel to segment; ``None`` when the
    stage does not follow the mask (not asked, or not one of :data:`MASKED_STAGES`)."""
    if not config.weak_labels.skip_blocks or stage not in MASKED_STAGES:
        return None
    ref = mask_ref(config)
    if not dataset_exists(ref):
        raise ConfigError(
            "weak_labels.mask", f"no mask at {ref} (run 08_weak_labels.py, or skip_blocks=false)"
        )
    mask = open_volume(ref, field="weak_labels.mask")
    keep = np.zeros(grid, dtype=bool)
    for pos in np.ndindex(*grid):
        roi = Roi(total.offset + Coordinate(pos) * write_shape, write_shape).intersect(total)
        roi = roi.snap_to_grid(mask.voxel_size, mode="grow").intersect(mask.roi)
        keep[pos] = not roi.empty and bool(np.any(read(mask, roi, fill_value=0)))
    return keep
