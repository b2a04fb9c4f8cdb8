"""Training targets: affinities from labels, and class-balancing weights.

An affinity for offset ``d`` at voxel ``p`` is 1 iff ``labels[p] == labels[p + d] != 0``
(gunpowder's convention; label 0 is boundary/background and never affine). The default
neighbourhood is the nearest three (``-z, -y, -x``), the one the fragment and agglomeration
stages read; longer ranges can be appended (they help the network see across thin gaps and
are ignored downstream unless a stage asks for them). Weights balance affine and non-affine
voxels per channel (gunpowder ``BalanceLabels``), zero where the labels mask says unknown.
"""

from __future__ import annotations

from collections.abc import Sequence

import gunpowder as gp
import numpy as np

NEAREST = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]


def neighborhood(long_range: Sequence[int] = ()) -> list[list[int]]:
    """Nearest three offsets, then for each ``r`` in ``long_range`` the offsets ``-r`` along
    every axis (e.g. ``[3, 9]``: 3 + 6 channels)."""
    offsets = [list(o) for o in NEAREST]
    for r in long_range:
        if int(r) < 2:
            raise ValueError(f"long-range offsets must be >= 2 voxels, got {r}")
        offsets += [[-int(r), 0, 0], [0, -int(r), 0], [0, 0, -int(r)]]
    return offsets


def affinity_targets(
    labels: gp.ArrayKey,
    affinities: gp.ArrayKey,
    weights: gp.ArrayKey,
    nbh: Sequence[Sequence[int]] = NEAREST,
    labels_mask: gp.ArrayKey | None = None,
) -> list[gp.BatchFilter]:
    """Nodes adding ``affinities`` (uint8) and ``weights`` (float32) for ``labels``."""
    affs_mask = gp.ArrayKey(f"{affinities.identifier}_MASK")
    return [
        gp.AddAffinities(
            affinity_neighborhood=[list(o) for o in nbh],
            labels=labels,
            affinities=affinities,
            labels_mask=labels_mask,
            affinities_mask=affs_mask,
            dtype=np.uint8,
        ),
        gp.BalanceLabels(affinities, weights, mask=affs_mask),
    ]


LSD_CHANNELS = 10
"""Local shape descriptor channels in 3D (lsd's ``AddLocalShapeDescriptor``): mean offset to
the object's centre of mass (3), covariance diagonal (3), off-diagonal (3), voxel count (1)."""


def lsd_targets(
    labels: gp.ArrayKey,
    descriptors: gp.ArrayKey,
    descriptors_mask: gp.ArrayKey,
    sigma_nm: float,
    downsample: int = 2,
    labels_mask: gp.ArrayKey | None = None,
) -> list[gp.BatchFilter]:
    """Nodes adding the local shape descriptors of ``labels`` (float32 in [0, 1], one channel
    per :data:`LSD_CHANNELS`) and a mask that is 0 on background (label 0) and where the labels
    mask says unknown: the auxiliary target of multi-task LSD training (MTLSD, Sheridan et
    al. 2022). ``sigma_nm`` is the Gaussian's standard deviation in world units (nm);
    ``downsample`` computes the statistics on a coarser grid and upsamples them (speed)."""
    from lsd.train.gp import AddLocalShapeDescriptor

    return [
        AddLocalShapeDescriptor(
            labels,
            descriptors,
            lsds_mask=descriptors_mask,
            labels_mask=labels_mask,
            sigma=float(sigma_nm),
            downsample=int(downsample),
        )
    ]
