"""Affinities: the one input of the post-processing stages, from a network or a boundary map.

Convention (the one waterz, mwatershed and gunpowder's ``AddAffinities`` share): channel ``c``
of an affinity volume relates voxel ``x`` to voxel ``x + d_c``, with the nearest-neighbour
offsets ``d = (-1, 0, 0), (0, -1, 0), (0, 0, -1)`` (z, y, x) first. ``1`` means "same object",
``0`` means "boundary between". A voxel whose neighbour lies outside the data has affinity 0
on that channel: we know nothing across the volume's faces.

Two sources produce them:

* a prediction (``fragments.affs``), uint8 in 0..255 (scaled to [0, 1]) or float in [0, 1],
  channels first, at least 3 channels (extra long-range channels are ignored here);
* a boundary map ``b`` (``fragments.boundary``, float in [0, 1] or uint8, 1 = membrane),
  turned into affinities per block by ``aff_d(x) = 1 - max(b(x), b(x + d))``: two voxels are
  as connected as the more membrane-like of the two allows. Outside the data ``b = 1``.

:func:`affinity_source` picks the one a config's fragments read (:class:`AffinitySource`).

A block computes affinities over its read ROI only, so the boundary is read one voxel further
on the low side of every axis (where ``x + d`` points); the result is a pure function of the
block's ROI, which is what makes blockwise work resumable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array

from marlseg.config import Config, DatasetRef
from marlseg.errors import ConfigError
from marlseg.volumes import dataset_exists, open_volume, read

NEAREST: tuple[tuple[int, int, int], ...] = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))
"""Offsets of the first three affinity channels (z, y, x)."""


def _shifted(volume: np.ndarray, offset: Sequence[int], fill: float) -> np.ndarray:
    """``out[x] = volume[x + offset]``, ``fill`` where ``x + offset`` is outside."""
    out = np.full_like(volume, fill)
    dst: list[slice] = []
    src: list[slice] = []
    for o, n in zip(offset, volume.shape):
        o = int(o)
        if abs(o) >= n:
            return out
        dst.append(slice(max(0, -o), n - max(0, o)))
        src.append(slice(max(0, o), n - max(0, -o)))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def boundary_to_affinities(
    boundary: np.ndarray, offsets: Sequence[Sequence[int]] = NEAREST
) -> np.ndarray:
    """Affinities ``aff_d(x) = 1 - max(b(x), b(x + d))`` for each offset ``d``.

    ``boundary`` is float in [0, 1] (1 = membrane); voxels whose neighbour ``x + d`` lies
    outside the array get affinity 0. Returns float32 ``(len(offsets), *boundary.shape)``.
    """
    b = np.asarray(boundary, dtype=np.float32)
    affs = np.empty((len(offsets), *b.shape), dtype=np.float32)
    for c, d in enumerate(offsets):
        np.maximum(b, _shifted(b, d, 1.0), out=affs[c])
        np.subtract(1.0, affs[c], out=affs[c])
    return affs


def long_range_affinities(affs: np.ndarray, offsets: Sequence[Sequence[int]]) -> np.ndarray:
    """Axis-aligned long-range affinities derived from the nearest three channels.

    Two voxels ``k`` steps apart along one axis are as connected as the weakest step of the
    straight path between them: ``aff_{k e}(x) = min_{j < k} aff_e(x + j e)``. Used by the
    mutex watershed when the input has no trained long-range channels; the derived values are
    split-biased by ``fragments.mutex_bias``. Offsets must be non-zero on exactly one axis and
    negative (the nearest channels point to the lower neighbour).
    """
    out = np.empty((len(offsets), *affs.shape[1:]), dtype=np.float32)
    for c, d in enumerate(offsets):
        axes = [i for i, o in enumerate(d) if o != 0]
        if len(axes) != 1 or d[axes[0]] >= 0:
            raise ValueError(f"long-range offset {list(d)} must be negative along one axis only")
        axis = axes[0]
        k = -int(d[axis])
        step = [0, 0, 0]
        acc = affs[axis].astype(np.float32, copy=True)
        for j in range(1, k):
            step[axis] = -j
            np.minimum(acc, _shifted(affs[axis], step, 0.0), out=acc)
        out[c] = acc
    return out


def to_unit(data: np.ndarray) -> np.ndarray:
    """Scale stored values to float32 in [0, 1]: uint8 is divided by 255, floats are kept."""
    if data.dtype == np.uint8:
        return data.astype(np.float32) / np.float32(255.0)
    return data.astype(np.float32, copy=False)


class AffinitySource:
    """Where a stage's affinities come from: a stored affinity volume or a boundary map.

    Opened once per worker; :meth:`read` returns float32 ``(3, z, y, x)`` in [0, 1] over any
    ROI (padded with affinity 0 outside the data).
    """

    def __init__(
        self,
        affs: DatasetRef | None,
        boundary: DatasetRef | None,
        affs_field: str = "fragments.affs",
        boundary_field: str = "fragments.boundary",
    ):
        self.is_boundary = boundary is not None
        ref = boundary if boundary is not None else affs
        field = boundary_field if boundary is not None else affs_field
        if ref is None:
            raise ConfigError(affs_field, "no affinities configured")
        self.ref = ref
        self.field = field
        self.array: Array = open_volume(ref, field=field)
        self._check()

    def _check(self) -> None:
        a = self.array
        dtype = np.dtype(a.dtype)
        if dtype != np.uint8 and dtype.kind != "f":
            raise ConfigError(
                f"{self.field}.dataset",
                f"{self.ref} has dtype {dtype}; expected uint8 (0-255) or float in [0, 1]",
            )
        if len(a.voxel_size) != 3:
            raise ConfigError(
                f"{self.field}.dataset", f"{self.ref} is not a 3D volume ({a.voxel_size})"
            )
        if self.is_boundary:
            if a.channel_dims != 0:
                raise ConfigError(
                    f"{self.field}.dataset",
                    f"{self.ref} has {a.channel_dims} channel axes; a boundary map has none",
                )
        else:
            shape = a._source_data.shape
            if a.channel_dims != 1 or shape[0] < 3:
                raise ConfigError(
                    f"{self.field}.dataset",
                    f"{self.ref} has shape {tuple(shape)}; affinities are (channels >= 3, z, y, x)",
                )

    @property
    def roi(self) -> Roi:
        return self.array.roi

    @property
    def voxel_size(self) -> Coordinate:
        return self.array.voxel_size

    def read(self, roi: Roi) -> np.ndarray:
        """Float32 ``(3, z, y, x)`` affinities in [0, 1] over ``roi``."""
        if not self.is_boundary:
            return to_unit(read(self.array, roi, fill_value=0)[:3])
        # one more voxel on the low side, where x + d points; outside the data b = 1
        vs = self.voxel_size
        grown = roi.grow(vs, Coordinate((0,) * 3))
        b = to_unit(read(self.array, grown, fill_value=1 if self.array.dtype != np.uint8 else 255))
        return boundary_to_affinities(b)[:, 1:, 1:, 1:]


def affinity_source(config: Config) -> AffinitySource:
    """The fragments' input: ``fragments.boundary`` if set, else ``fragments.affs`` (default:
    ``predict``'s output)."""
    if config.fragments.boundary is None and not dataset_exists(config.fragment_affs):
        field = "fragments.affs" if config.fragments.affs else "predict.affs"
        raise ConfigError(
            field,
            f"no affinities at {config.fragment_affs} (run 01_predict.py, or set "
            "fragments.affs or fragments.boundary)",
        )
    return AffinitySource(config.fragment_affs, config.fragments.boundary)
