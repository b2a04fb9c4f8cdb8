"""The ``fragments`` section (``02_extract_fragments.py``). Imports only
:mod:`marlseg.config.base`."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from marlseg.config.base import (
    DatasetRef,
    NonNegInt,
    PosInt,
    StageSection,
    Unit,
    check_block,
    check_context,
)


class FragmentsConfig(StageSection):
    affs: DatasetRef | None = None
    """Input affinities (uint8 or float, channels first). ``null``: ``predict.affs``."""
    boundary: DatasetRef | None = None
    """Use a boundary map (float in [0, 1], 1 = membrane) instead of affinities:
    ``aff_d(x) = 1 - max(b(x), b(x + d))`` for the nearest three neighbours, computed per block."""
    fragments: DatasetRef | None = None
    """Output fragment ids (uint64). ``null``: ``run.dir/fragments.zarr`` / ``volumes/fragments``."""
    mask: DatasetRef | None = None
    """Optional mask (non-zero = process); voxels outside get fragment 0 and blocks entirely
    outside are skipped."""
    block_shape: list[int] = [800, 800, 800]
    """Write block shape in nm. Fragments are cut at block faces, so larger blocks cut fewer
    neurites (chosen with ``workflows/tune.py`` on the selection part of the medulla crop,
    docs/network.md; 400 nm blocks cut most neurites)."""
    context: list[int] = [80, 80, 80]
    """Context read around each block, nm."""
    method: Literal["watershed", "mutex", "waterz"] = "watershed"
    """``watershed``: seeded by maxima of the distance transform of the boundary-free mask (as
    lsd); ``mutex``: mutex watershed (mwatershed) with attractive/repulsive long-range offsets;
    ``waterz``: waterz's own compiled initial watershed (fastest; pure-membrane voxels get 0)."""
    fragments_in_xy: bool = False
    """Extract fragments per z-section (anisotropic ssTEM data)."""
    boundary_threshold: Unit = 0.5
    """Mean affinity below which a voxel counts as boundary for the distance transform."""
    min_seed_distance: PosInt = 15
    """Minimum distance between watershed seeds, voxels (chosen with ``workflows/tune.py``,
    docs/network.md)."""
    mutex_offsets: list[list[int]] = [[-2, 0, 0], [0, -2, 0], [0, 0, -2]]
    """``mutex``: long-range offsets (voxels, negative along one axis). Their affinities are the
    weakest nearest-neighbour affinity on the straight path (a membrane in between repels)."""
    mutex_bias: list[float] = [-0.5, -0.5]
    """``mutex``: added to the [nearest, long-range] affinities; positive edges attract,
    negative ones repel (the defaults: attract above 0.5, repel below, tuned on fib_train)."""
    epsilon_agglomerate: Unit = 0.0
    """If > 0, merge fragments within a block up to this waterz threshold before storing."""
    filter_fragments: Unit = 0.0
    """Drop fragments whose mean affinity is below this value (set to 0)."""
    min_size: NonNegInt = 0
    """Drop fragments with fewer voxels than this (set to 0)."""

    _v_block = field_validator("block_shape")(classmethod(lambda cls, v: check_block(v)))
    _v_context = field_validator("context")(classmethod(lambda cls, v: check_context(v)))

    @field_validator("mutex_offsets")
    @classmethod
    def _mutex_offsets(cls, v: list[list[int]]) -> list[list[int]]:
        for o in v:
            if len(o) != 3 or sum(1 for x in o if x != 0) != 1 or min(o) >= 0:
                raise ValueError(f"offsets are negative along exactly one axis (z, y, x), got {o}")
        return v

    @field_validator("mutex_bias")
    @classmethod
    def _mutex_bias(cls, v: list[float]) -> list[float]:
        if len(v) != 2:
            raise ValueError(f"expected 2 values (nearest, long-range), got {len(v)}")
        return v
