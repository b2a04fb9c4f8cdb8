"""Open and prepare volumes: zarr (FAFB-style) and HDF5 (CREMI-style) as funlib Arrays.

An Array is data + voxel size + offset; ROIs stay in world units everywhere and become voxels
only here, at the array edge. Two metadata dialects meet in our files: funlib.persistence
writes ``voxel_size``, gunpowder and CREMI write ``resolution``. We read either and write both,
so every tool in the chain agrees on where a voxel is.

Channels (e.g. affinities ``c, z, y, x``) are the leading axes: an array has as many channel
axes as its number of dimensions minus the number of spatial values in its voxel size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array

from marlseg.config import DatasetRef
from marlseg.errors import ConfigError

H5_SUFFIXES = {".h5", ".hdf", ".hdf5"}
ZARR_SUFFIXES = {".zarr", ".n5"}


def is_hdf5(path: Path) -> bool:
    return path.suffix.lower() in H5_SUFFIXES


def _attr(attrs: Any, *names: str) -> list[int] | None:
    for n in names:
        if n in attrs:
            return [int(round(float(x))) for x in np.asarray(attrs[n]).ravel()]
    return None


def _spatial_meta(attrs: Any, ndim: int, where: str) -> tuple[Coordinate, Coordinate, int]:
    voxel_size = _attr(attrs, "voxel_size", "resolution")
    offset = _attr(attrs, "offset")
    types = attrs.get("types") if hasattr(attrs, "get") else None
    if types is not None:
        n_spatial = sum(1 for t in types if t != "channel")
    elif voxel_size is not None:
        n_spatial = len(voxel_size)
    else:
        n_spatial = min(ndim, 3)
    if voxel_size is None:
        voxel_size = [1] * n_spatial
    if offset is None:
        offset = [0] * n_spatial
    if len(voxel_size) != n_spatial or len(offset) != n_spatial or n_spatial > ndim:
        raise ConfigError(
            where, f"inconsistent metadata: voxel size {voxel_size}, offset {offset}, ndim {ndim}"
        )
    if any(v <= 0 for v in voxel_size):
        raise ConfigError(where, f"voxel size must be positive, got {voxel_size}")
    if any(o % v for o, v in zip(offset, voxel_size)):
        raise ConfigError(where, f"offset {offset} is not a multiple of voxel size {voxel_size}")
    return Coordinate(voxel_size), Coordinate(offset), ndim - n_spatial


def _array(data: Any, voxel_size: Coordinate, offset: Coordinate, n_channels: int) -> Array:
    n = len(voxel_size)
    spatial = ["z", "y", "x"][-n:] if n <= 3 else [f"d{i}" for i in range(n)]
    return Array(
        data,
        offset=offset,
        voxel_size=voxel_size,
        axis_names=[f"c{i}" for i in range(n_channels)] + spatial,
        units=["nm"] * n,
        types=["channel"] * n_channels + ["space"] * n,
        chunks="auto" if getattr(data, "chunks", None) is None else data.chunks,
    )


def open_volume(ref: DatasetRef, mode: str = "r", field: str = "dataset") -> Array:
    """Open ``ref`` as an Array. ``field`` names the config field in error messages."""
    path = Path(ref.path)
    if not path.exists():
        raise ConfigError(f"{field}.path", f"file not found: {path}")
    if is_hdf5(path):
        import h5py

        try:
            f = h5py.File(path, "r" if mode == "r" else "r+")
        except OSError as e:
            raise ConfigError(f"{field}.path", f"cannot open HDF5 file {path}: {e}") from None
        if ref.dataset not in f or not isinstance(f[ref.dataset], h5py.Dataset):
            raise ConfigError(f"{field}.dataset", f"no dataset {ref.dataset!r} in {path}")
        ds = f[ref.dataset]
        vs, off, nc = _spatial_meta(ds.attrs, ds.ndim, f"{field}.dataset")
        return _array(ds, vs, off, nc)
    try:
        root = zarr.open(str(path), mode="r" if mode == "r" else "r+")
    except Exception as e:  # zarr raises several types for "not a container"
        raise ConfigError(f"{field}.path", f"cannot open zarr container {path}: {e}") from None
    if isinstance(root, zarr.Array):
        ds = root
    else:
        if ref.dataset not in root or not isinstance(root[ref.dataset], zarr.Array):
            raise ConfigError(f"{field}.dataset", f"no dataset {ref.dataset!r} in {path}")
        ds = root[ref.dataset]
    vs, off, nc = _spatial_meta(ds.attrs, ds.ndim, f"{field}.dataset")
    return _array(ds, vs, off, nc)


def dataset_exists(ref: DatasetRef) -> bool:
    path = Path(ref.path)
    if not path.exists():
        return False
    if is_hdf5(path):
        import h5py

        with h5py.File(path, "r") as f:
            return ref.dataset in f
    try:
        root = zarr.open(str(path), mode="r")
    except Exception:
        return False
    return isinstance(root, zarr.Array) or ref.dataset in root


def prepare_volume(
    ref: DatasetRef,
    total_roi: Roi,
    voxel_size: Sequence[int],
    dtype: Any,
    write_size: Sequence[int],
    num_channels: int | None = None,
    field: str = "output",
    fill_value: Any = 0,
) -> Array:
    """Create (or reopen, to resume) a zarr output covering ``total_roi``.

    Creates the root group (funlib's ``prepare_ds`` does not), chunks by the block write size
    so block writes never share a chunk, and writes both ``voxel_size`` and ``resolution``.
    An existing dataset of another shape, dtype, chunking or voxel size is refused: resuming
    into it would mix two runs.
    """
    path = Path(ref.path)
    if is_hdf5(path):
        raise ConfigError(f"{field}.path", f"outputs are zarr containers, not HDF5: {path}")
    voxel_size = Coordinate(voxel_size)
    total_roi = total_roi.snap_to_grid(voxel_size, mode="grow")
    shape = tuple(total_roi.shape / voxel_size)
    chunks = tuple(Coordinate(write_size) / voxel_size)
    if num_channels is not None:
        shape = (num_channels, *shape)
        chunks = (num_channels, *chunks)
    dtype = np.dtype(dtype)
    try:
        root = zarr.open_group(str(path), mode="a")
    except Exception as e:
        raise ConfigError(f"{field}.path", f"cannot create zarr container {path}: {e}") from None
    attrs = {
        "voxel_size": list(voxel_size),
        "resolution": list(voxel_size),
        "offset": list(total_roi.offset),
        "axis_names": (["c"] if num_channels is not None else []) + ["z", "y", "x"],
        "units": ["nm"] * 3,
        "types": (["channel"] if num_channels is not None else []) + ["space"] * 3,
    }
    if ref.dataset in root:
        ds = root[ref.dataset]
        if not isinstance(ds, zarr.Array):
            raise ConfigError(f"{field}.dataset", f"{ref.dataset!r} in {path} is a group")
        existing = (ds.shape, ds.dtype, ds.chunks, _attr(ds.attrs, "voxel_size", "resolution"))
        wanted = (shape, dtype, chunks, list(voxel_size))
        if existing != wanted or _attr(ds.attrs, "offset") != list(total_roi.offset):
            raise ConfigError(
                f"{field}.dataset",
                f"{path}/{ref.dataset} exists with shape/dtype/chunks/voxel size {existing}, "
                f"this run needs {wanted}: delete {path.absolute() / ref.dataset} and re-run "
                "with --restart, or use a fresh run.dir",
            )
    else:
        ds = root.create_dataset(
            ref.dataset,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=fill_value,
            compressor=zarr.Blosc(cname="zstd", clevel=3, shuffle=zarr.Blosc.BITSHUFFLE),
            write_empty_chunks=False,
        )
        ds.attrs.update(attrs)
    return _array(ds, voxel_size, Coordinate(total_roi.offset), 1 if num_channels else 0)


def voxel_slices(array: Array, roi: Roi) -> tuple[slice, ...]:
    """Voxel slices of ``roi`` (world units) in ``array``'s spatial axes."""
    vs = array.voxel_size
    begin = (roi.begin - array.roi.begin) / vs
    end = (roi.end - array.roi.begin) / vs
    return tuple(slice(int(b), int(e)) for b, e in zip(begin, end))


def read(array: Array, roi: Roi, fill_value: Any = 0) -> np.ndarray:
    """Read ``roi`` straight from the store (no dask), padding outside the array."""
    roi = roi.snap_to_grid(array.voxel_size, mode="grow")
    inside = array.roi.intersect(roi)
    src = array._source_data
    nc = array.channel_dims
    shape = tuple(src.shape[:nc]) + tuple(roi.shape / array.voxel_size)
    if inside == roi:
        return np.asarray(src[(slice(None),) * nc + voxel_slices(array, roi)])
    out = np.full(shape, fill_value, dtype=src.dtype)
    if inside.empty:
        return out
    dst = tuple(
        slice(int(b), int(e))
        for b, e in zip(
            (inside.begin - roi.begin) / array.voxel_size,
            (inside.end - roi.begin) / array.voxel_size,
        )
    )
    out[(slice(None),) * nc + dst] = src[(slice(None),) * nc + voxel_slices(array, inside)]
    return out


def write(array: Array, roi: Roi, data: np.ndarray) -> None:
    """Write ``data`` covering ``roi`` (clipped to the array) straight to the store."""
    inside = array.roi.intersect(roi)
    if inside.empty:
        return
    nc = array.channel_dims
    src = tuple(
        slice(int(b), int(e))
        for b, e in zip(
            (inside.begin - roi.begin) / array.voxel_size,
            (inside.end - roi.begin) / array.voxel_size,
        )
    )
    array._source_data[(slice(None),) * nc + voxel_slices(array, inside)] = data[
        (slice(None),) * nc + src
    ]


def check_multiple(field: str, shape_nm: Sequence[int], voxel_size: Sequence[int]) -> None:
    """Block shapes and contexts must be whole voxels."""
    bad = [int(s) % int(v) for s, v in zip(shape_nm, voxel_size)]
    if any(bad):
        raise ConfigError(
            field, f"{list(shape_nm)} nm is not a multiple of the voxel size {list(voxel_size)} nm"
        )
