"""Gunpowder sources for CREMI-style HDF5 and FAFB-style zarr datasets.

A source is built from a :class:`~marlseg.config.DatasetRef`. Its voxel size, offset, shape and
dtype are read through :mod:`marlseg.volumes` (which understands both the ``resolution`` and the
``voxel_size`` attribute dialects) and handed to gunpowder as an ``array_specs`` override, so
gunpowder never guesses: a zarr written by funlib.persistence (``voxel_size`` only) and a CREMI
file (``resolution``) give the same, correct world-unit ROIs. Anisotropic voxel sizes pass
through unchanged.
"""

from __future__ import annotations

from pathlib import Path

import gunpowder as gp
import numpy as np

from marlseg.config import DatasetRef
from marlseg.volumes import is_hdf5, open_volume


def dataset_spec(
    ref: DatasetRef, interpolatable: bool | None = None, field: str = "dataset"
) -> gp.ArraySpec:
    """The gunpowder spec of ``ref``: ROI and voxel size in world units, dtype.

    ``interpolatable`` defaults to True for floats and uint8 (intensities), False otherwise
    (labels, masks): labels must be resampled by nearest neighbour, never averaged.
    """
    array = open_volume(ref, field=field)
    try:
        dtype = np.dtype(array.dtype)
        spec = gp.ArraySpec(
            roi=gp.Roi(array.roi.offset, array.roi.shape),
            voxel_size=gp.Coordinate(array.voxel_size),
            dtype=dtype,
            interpolatable=(
                interpolatable
                if interpolatable is not None
                else bool(np.issubdtype(dtype, np.floating) or dtype == np.uint8)
            ),
        )
    finally:
        _close(array)
    return spec


def _close(array) -> None:
    # HDF5 files opened for metadata are closed again: gunpowder opens its own handle per
    # request, and an h5py handle inherited across a fork (PreCache workers) is asking for trouble
    f = getattr(array._source_data, "file", None)
    if f is not None and hasattr(f, "close"):
        f.close()


def array_source(
    key: gp.ArrayKey,
    ref: DatasetRef,
    interpolatable: bool | None = None,
    field: str = "dataset",
) -> gp.BatchProvider:
    """One gunpowder source providing ``key`` from ``ref`` (HDF5 or zarr by suffix)."""
    spec = dataset_spec(ref, interpolatable, field)
    path = str(Path(ref.path))
    if is_hdf5(Path(ref.path)):
        return gp.Hdf5Source(path, {key: ref.dataset}, array_specs={key: spec})
    return gp.ZarrSource(path, {key: ref.dataset}, array_specs={key: spec})


def merged_source(
    datasets: dict[gp.ArrayKey, DatasetRef],
    interpolatable: dict[gp.ArrayKey, bool] | None = None,
    field: str = "dataset",
) -> gp.Pipeline | gp.BatchProvider:
    """Several datasets (e.g. raw and labels, possibly in different containers) as one
    provider."""
    interpolatable = interpolatable or {}
    sources = [
        array_source(k, ref, interpolatable.get(k), field=f"{field}[{k.identifier.lower()}]")
        for k, ref in datasets.items()
    ]
    if len(sources) == 1:
        return sources[0]
    return tuple(sources) + gp.MergeProvider()
