"""Raw intensity normalisation, shared by training (gunpowder) and prediction (numpy).

Networks see raw in ``[-1, 1]``: integer raw is divided by its dtype's maximum (uint8: 255),
then mapped ``x -> 2x - 1``. Augmentations work in between, on ``[0, 1]`` (gunpowder's
intensity and noise augmentations expect that range), so a pipeline is
``unit_range`` -> augmentations -> ``signed_range``. :func:`normalize_raw` is the same mapping
for prediction; a test checks the two agree voxel for voxel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # prediction workers use normalize_raw only: no gunpowder import there
    import gunpowder as gp


def raw_factor(dtype: np.dtype | type) -> float:
    """What multiplies raw of ``dtype`` into ``[0, 1]``."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return 1.0 / float(np.iinfo(dtype).max)
    return 1.0  # float raw is taken to be in [0, 1] already


def normalize_raw(data: np.ndarray) -> np.ndarray:
    """Raw (any dtype) -> float32 in ``[-1, 1]``, exactly as the training pipeline does it."""
    unit = data.astype(np.float32) * np.float32(raw_factor(data.dtype))
    return unit * np.float32(2.0) - np.float32(1.0)


def unit_range(raw: gp.ArrayKey, dtype: np.dtype | type) -> gp.BatchFilter:
    """Raw -> float32 in ``[0, 1]`` (before augmentation)."""
    import gunpowder as gp

    return gp.Normalize(raw, factor=raw_factor(dtype), dtype=np.float32)


def signed_range(raw: gp.ArrayKey) -> gp.BatchFilter:
    """``[0, 1]`` -> ``[-1, 1]`` (after augmentation)."""
    import gunpowder as gp

    return gp.IntensityScaleShift(raw, 2.0, -1.0)
