"""Volume I/O on every real volume we have: voxel sizes, offsets, padding, prepared outputs."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate, Roi

from marlseg.config import DatasetRef
from marlseg.errors import ConfigError
from marlseg.volumes import check_multiple, open_volume, prepare_volume, read, write

REPO_DATA = Path(__file__).parents[1] / "data"

H5_VOLUMES = [
    (REPO_DATA / "fib25_tiny.h5", (10, 10, 10), (50, 200, 100)),
    (REPO_DATA / "fib_train.h5", (10, 10, 10), (50, 100, 200)),
]


@pytest.mark.parametrize("path, voxel_size, shape", H5_VOLUMES, ids=lambda v: str(v)[-20:])
@pytest.mark.parametrize("dataset", ["volumes/raw", "volumes/labels/neuron_ids"])
def test_hdf5_cremi_layout(path, voxel_size, shape, dataset):
    check_cremi(path, voxel_size, shape, dataset)


@pytest.mark.parametrize("dataset", ["volumes/raw", "volumes/labels/neuron_ids"])
def test_hdf5_cremi_layout_anisotropic(tmp_path, dataset):
    """CREMI-like anisotropy (50 x 4 x 4 nm, as ssTEM), made here from the repo's data."""
    path = tmp_path / "aniso.h5"
    with h5py.File(REPO_DATA / "fib_train.h5", "r") as src, h5py.File(path, "w") as dst:
        for name in ("volumes/raw", "volumes/labels/neuron_ids"):
            ds = dst.create_dataset(name, data=src[name][:30])
            ds.attrs["resolution"] = [50, 4, 4]
            ds.attrs["offset"] = [0, 0, 0]
    check_cremi(path, (50, 4, 4), (30, 100, 200), dataset)


def check_cremi(path, voxel_size, shape, dataset):
    a = open_volume(DatasetRef(path=path, dataset=dataset))
    assert tuple(a.voxel_size) == voxel_size
    assert a.roi == Roi((0, 0, 0), Coordinate(shape) * Coordinate(voxel_size))
    assert a.channel_dims == 0
    with h5py.File(path, "r") as f:
        ref = f[dataset][:]
    assert a.dtype == ref.dtype
    # a ROI in nm maps to the right voxels
    roi = Roi((voxel_size[0] * 3, voxel_size[1] * 5, voxel_size[2] * 7), Coordinate(voxel_size) * 4)
    np.testing.assert_array_equal(read(a, roi), ref[3:7, 5:9, 7:11])


def test_fafb_style_zarr(fafb_zarr):
    path = fafb_zarr.path
    a = open_volume(fafb_zarr)
    assert tuple(a.voxel_size) == (10, 10, 10)
    assert a.roi.shape == Coordinate(1000, 960, 1600)
    raw = zarr.open(str(path), "r")["volumes/raw"]
    np.testing.assert_array_equal(
        read(a, Roi((640, 0, 100), (100, 50, 30))), raw[64:74, 0:5, 10:13]
    )


def test_read_pads_outside_the_array():
    a = open_volume(DatasetRef(path=REPO_DATA / "fib25_tiny.h5", dataset="volumes/raw"))
    out = read(a, Roi((-20, -20, -20), (40, 40, 40)), fill_value=7)
    assert out.shape == (4, 4, 4)
    assert (out[:2] == 7).all() and (out[:, :2] == 7).all()
    with h5py.File(REPO_DATA / "fib25_tiny.h5", "r") as f:
        np.testing.assert_array_equal(out[2:, 2:, 2:], f["volumes/raw"][:2, :2, :2])


def test_prepare_writes_both_metadata_dialects_and_root_group(tmp_path):
    ref = DatasetRef(path=tmp_path / "out.zarr", dataset="volumes/affs")
    roi = Roi((40, 80, 80), (400, 800, 800))
    a = prepare_volume(ref, roi, (40, 8, 8), np.uint8, (200, 400, 400), num_channels=3)
    assert a.roi == roi and a.channel_dims == 1 and a.shape == (3, 10, 100, 100)
    root = zarr.open_group(str(tmp_path / "out.zarr"), "r")  # the root group exists
    attrs = dict(root["volumes/affs"].attrs)
    assert attrs["resolution"] == attrs["voxel_size"] == [40, 8, 8]
    assert attrs["offset"] == [40, 80, 80]
    assert root["volumes/affs"].chunks == (3, 5, 50, 50)  # one chunk per write block
    block = Roi((240, 480, 480), (200, 400, 400))
    write(a, block, np.full((3, 5, 50, 50), 9, np.uint8))
    again = open_volume(ref)  # reopens with the same geometry
    assert again.roi == roi and tuple(again.voxel_size) == (40, 8, 8)
    assert (
        read(again, block).min() == 9 and read(again, Roi((40, 80, 80), (200, 400, 400))).max() == 0
    )
    # re-preparing the same geometry resumes; another geometry is refused
    prepare_volume(ref, roi, (40, 8, 8), np.uint8, (200, 400, 400), num_channels=3)
    with pytest.raises(ConfigError, match="exists with shape"):
        prepare_volume(ref, roi, (40, 8, 8), np.uint64, (200, 400, 400), num_channels=3)


def test_gunpowder_reads_prepared_zarr(tmp_path):
    import gunpowder as gp

    ref = DatasetRef(path=tmp_path / "g.zarr", dataset="raw")
    a = prepare_volume(ref, Roi((0, 0, 0), (80, 80, 80)), (20, 8, 8), np.uint8, (40, 40, 40))
    data = np.arange(4 * 10 * 10, dtype=np.uint8).reshape(4, 10, 10)
    write(a, a.roi, data)
    key = gp.ArrayKey("RAW")
    source = gp.ZarrSource(str(ref.path), {key: "raw"})
    with gp.build(source):
        batch = source.request_batch(
            gp.BatchRequest({key: gp.ArraySpec(roi=gp.Roi((20, 16, 16), (40, 16, 16)))})
        )
    assert tuple(batch[key].spec.voxel_size) == (20, 8, 8)
    np.testing.assert_array_equal(batch[key].data, data[1:3, 2:4, 2:4])


@pytest.mark.parametrize(
    "ref, where, what",
    [
        (
            DatasetRef(path=REPO_DATA / "nope.h5", dataset="volumes/raw"),
            "raw.path",
            "file not found",
        ),
        (
            DatasetRef(path=REPO_DATA / "fib25_tiny.h5", dataset="volumes/nope"),
            "raw.dataset",
            "no dataset",
        ),
        (
            DatasetRef(path=REPO_DATA / "LICENSE-gala-BSD3.txt", dataset="x"),
            "raw.path",
            "cannot open zarr",
        ),
    ],
)
def test_open_errors_name_the_field(ref, where, what):
    with pytest.raises(ConfigError) as e:
        open_volume(ref, field="raw")
    assert e.value.where == where and what in e.value.what


def test_check_multiple():
    check_multiple("fragments.block_shape", (400, 400, 400), (40, 8, 8))
    with pytest.raises(ConfigError, match="not a multiple of the voxel size"):
        check_multiple("fragments.block_shape", (100, 400, 400), (40, 8, 8))
