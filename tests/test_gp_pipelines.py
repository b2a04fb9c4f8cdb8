"""Gunpowder sources, augmentations, targets and batch recipes on real and synthetic volumes.

Alignment checks use volumes whose raw is a known function of the labels, so wherever a voxel
sits (after elastic deformation, rotation, mirror, transpose, misaligned sections) its raw
value must still match its label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi

from marlseg.config import DatasetRef
from marlseg.errors import ConfigError
from marlseg.gp_pipelines.augment import NO_AUGMENT, AugmentOptions, augmentations, options
from marlseg.gp_pipelines.normalize import normalize_raw
from marlseg.gp_pipelines.recipes import affinity_batches, batch_seed, raw_batches
from marlseg.gp_pipelines.sources import dataset_spec
from marlseg.gp_pipelines.targets import neighborhood
from marlseg.volumes import prepare_volume, write

REPO_DATA = Path(__file__).parents[1] / "data"
FIB_RAW = DatasetRef(path=REPO_DATA / "fib_train.h5", dataset="volumes/raw")
FIB_LABELS = DatasetRef(path=REPO_DATA / "fib_train.h5", dataset="volumes/labels/neuron_ids")

GEOMETRY_ONLY = AugmentOptions(
    elastic=True,
    mirror=True,
    transpose=True,
    intensity=False,
    noise=False,
    sections=False,
)


def intensity_of(labels: np.ndarray) -> np.ndarray:
    """The synthetic raw: a fixed uint8 intensity per label."""
    return ((labels.astype(np.int64) * 7919) % 200 + 30).astype(np.uint8)


def synthetic_labels(shape, block=(4, 6, 6), zero_planes=True, seed=0) -> np.ndarray:
    """Piecewise-constant labels (cuboids of ``block``), with label-0 boundary planes."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    cells = (z // block[0]) * 10000 + (y // block[1]) * 100 + (x // block[2])
    ids = rng.permutation(cells.max() + 1) + 1
    labels = ids[cells].astype(np.uint64)
    if zero_planes:
        labels[(y % block[1]) == 0] = 0
    return labels


def write_zarr(
    path: Path,
    labels: np.ndarray,
    voxel_size=(10, 10, 10),
    offset=(0, 0, 0),
    drop_resolution=False,
    raw: np.ndarray | None = None,
) -> tuple[DatasetRef, DatasetRef]:
    """A FAFB-style zarr with ``volumes/raw`` and ``volumes/labels/neuron_ids``."""
    vs = Coordinate(voxel_size)
    roi = Roi(Coordinate(offset), Coordinate(labels.shape) * vs)
    refs = []
    for name, data in (
        ("volumes/raw", intensity_of(labels) if raw is None else raw),
        ("volumes/labels/neuron_ids", labels),
    ):
        ref = DatasetRef(path=path, dataset=name)
        arr = prepare_volume(ref, roi, vs, data.dtype, roi.shape)
        write(arr, roi, data)
        if drop_resolution:  # what funlib.persistence writes: voxel_size only
            del arr._source_data.attrs["resolution"]
        refs.append(ref)
    return refs[0], refs[1]


def constant_neighbourhood(lab: np.ndarray, radius) -> np.ndarray:
    """Voxels at least ``radius`` inside the crop whose neighbourhood of that radius holds one
    non-zero label: the source voxels that linear interpolation mixes into raw there all carry
    that label, whatever the deformation, so raw must equal the label's intensity."""
    same = lab != 0
    inner = tuple(slice(r, s - r) for r, s in zip(radius, lab.shape))
    for d in np.ndindex(*(2 * r + 1 for r in radius)):
        shifted = tuple(slice(di, s - 2 * r + di) for di, r, s in zip(d, radius, lab.shape))
        same[inner] &= lab[shifted] == lab[inner]
    out = np.zeros_like(same)
    out[inner] = same[inner]
    return out


def expected_affs(labels: np.ndarray, offset) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Affinity for ``offset`` (negative) where the neighbour is inside the crop."""
    sl = tuple(slice(-o, None) for o in offset)
    nb = tuple(slice(0, s + o) for s, o in zip(labels.shape, offset))
    a, b = labels[sl], labels[nb]
    return ((a == b) & (a != 0)).astype(np.float32), sl


def test_sources_read_voxel_size_both_dialects(tmp_path):
    labels = synthetic_labels((8, 12, 12))
    raw_r, _ = write_zarr(tmp_path / "r.zarr", labels, (40, 4, 4), (80, 8, 16))
    raw_v, _ = write_zarr(
        tmp_path / "v.zarr", labels, (40, 4, 4), (80, 8, 16), drop_resolution=True
    )
    for ref in (raw_r, raw_v):
        spec = dataset_spec(ref)
        assert spec.voxel_size == Coordinate(40, 4, 4)
        assert spec.roi == Roi((80, 8, 16), (320, 48, 48))
        assert spec.interpolatable  # uint8 intensities
    h5 = dataset_spec(FIB_LABELS, interpolatable=False)
    assert h5.voxel_size == Coordinate(10, 10, 10) and not h5.interpolatable
    assert h5.roi == Roi((0, 0, 0), (500, 1000, 2000))


def test_hdf5_batches_shapes_and_affinities():
    nbh = neighborhood(long_range=[3])
    it = affinity_batches(
        FIB_RAW, FIB_LABELS, [12, 24, 24], [8, 16, 16], nbh, batch_size=2, augment=False, seed=3
    )
    for _ in range(2):
        b = next(it)
        assert b["raw"].shape == (2, 1, 12, 24, 24) and b["raw"].dtype == np.float32
        assert b["affs"].shape == (2, 6, 8, 16, 16) and b["weights"].shape == (2, 6, 8, 16, 16)
        assert b["labels"].shape == (2, 8, 16, 16)
        assert -1.0 <= b["raw"].min() and b["raw"].max() <= 1.0
        for i in range(2):
            for c, off in enumerate(nbh):
                want, sl = expected_affs(b["labels"][i], off)
                np.testing.assert_array_equal(b["affs"][i, c][sl], want)
            # class balancing (over all channels): both classes carry the same total weight
            w, a = b["weights"][i], b["affs"][i]
            assert w.min() > 0
            if 0.05 < a.mean() < 0.95:
                assert w[a == 1].sum() == pytest.approx(w[a == 0].sum(), rel=1e-3)
    it.close()


def test_raw_is_normalised_like_prediction_and_centred():
    """Without augmentation, a batch's raw is exactly ``normalize_raw`` of a crop of the volume,
    and the labels are the centre of that crop."""
    import h5py

    with h5py.File(FIB_RAW.path) as f:
        raw = f[FIB_RAW.dataset][:]
        labels = f[FIB_LABELS.dataset][:]
    b = next(affinity_batches(FIB_RAW, FIB_LABELS, [12, 24, 24], [8, 16, 16], augment=False))
    crop = b["raw"][0, 0]
    # find the location by its labels (unique with overwhelming probability), then compare
    lab = b["labels"][0]
    hits = [
        (z, y, x)
        for z in range(raw.shape[0] - 7)
        for y in range(raw.shape[1] - 15)
        for x in range(raw.shape[2] - 15)
        if labels[z, y, x] == lab[0, 0, 0]
        and np.array_equal(labels[z : z + 8, y : y + 16, x : x + 16], lab)
    ]
    assert len(hits) == 1
    z, y, x = hits[0]
    want = normalize_raw(raw[z - 2 : z + 10, y - 4 : y + 20, x - 4 : x + 20])
    np.testing.assert_array_equal(crop, want)


@pytest.mark.parametrize(
    "voxel_size, opts",
    [
        ((10, 10, 10), GEOMETRY_ONLY),
        # ssTEM: in-plane deformation, slipped/shifted sections (labels move with raw)
        (
            (40, 4, 4),
            AugmentOptions(
                intensity=False,
                noise=False,
                sections=True,
                prob_missing=0.0,
                prob_low_contrast=0.0,
                prob_slip=0.2,
                prob_shift=0.2,
            ),
        ),
    ],
    ids=["isotropic", "anisotropic"],
)
def test_augmentation_keeps_raw_and_labels_aligned(tmp_path, voxel_size, opts):
    # isotropic: 5x5x5 neighbourhoods; ssTEM: sections stay whole (no z deformation) but slip
    # against each other, so 1x5x5
    radius = (2, 2, 2) if voxel_size[0] == voxel_size[1] else (0, 2, 2)
    labels = synthetic_labels((40, 72, 72), block=(8, 12, 12))
    raw_ref, lab_ref = write_zarr(tmp_path / "s.zarr", labels, voxel_size, (0, 40, 80))
    it = affinity_batches(
        raw_ref,
        lab_ref,
        [12, 24, 24],
        [8, 16, 16],
        batch_size=2,
        augment=opts,
        seed=7,
        min_masked=0.0,
    )
    checked = 0
    for _ in range(3):
        b = next(it)
        for i in range(2):
            lab = b["labels"][i]
            raw = b["raw"][i, 0, 2:10, 4:20, 4:20]  # the input's centre = the labels' crop
            same = constant_neighbourhood(lab, radius)
            assert same.sum() > 50
            want = normalize_raw(intensity_of(lab))
            np.testing.assert_allclose(raw[same], want[same], atol=2e-3)
            checked += int(same.sum())
    assert checked > 500
    it.close()


def test_zarr_raw_batches_are_crops(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 256, (20, 40, 40), dtype=np.uint8)
    ref = DatasetRef(path=tmp_path / "raw.zarr", dataset="volumes/raw")
    roi = Roi((0, 0, 0), (200, 400, 400))
    write(prepare_volume(ref, roi, (10, 10, 10), np.uint8, roi.shape), roi, vol)
    b = next(raw_batches([ref], [8, 16, 16], 3, augment=False, seed=1))
    assert b.shape == (3, 1, 8, 16, 16) and b.dtype == np.float32
    norm = normalize_raw(vol)
    for s in b[:, 0]:
        found = any(
            np.array_equal(norm[z : z + 8, y : y + 16, x : x + 16], s)
            for z in range(13)
            for y in range(25)
            for x in range(25)
        )
        assert found


def test_fafb_zarr_augmented_raw_batches(fafb_zarr):
    it = raw_batches(fafb_zarr, [16, 32, 32], 2, augment=True, seed=0)
    for _ in range(2):
        b = next(it)
        assert b.shape == (2, 1, 16, 32, 32) and b.dtype == np.float32
        assert -1.0 <= b.min() and b.max() <= 1.0 and b.std() > 0.05
    it.close()


def test_seeded_batches_are_reproducible_and_resumable():
    def stream(start=0, seed=5):
        return raw_batches(FIB_RAW, [8, 16, 16], 2, augment=True, seed=seed, start=start)

    a = [next(it) for it in [stream()] for _ in range(4)]
    b = [next(it) for it in [stream()] for _ in range(4)]
    c = next(stream(start=3))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a[3], c)  # resuming at batch 3 gives batch 3
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(a[0], next(stream(seed=6)))
    assert batch_seed(5, 3) != batch_seed(5, 4)


def test_precache_workers():
    it = affinity_batches(
        FIB_RAW, FIB_LABELS, [8, 16, 16], [8, 16, 16], batch_size=2, precache_workers=1
    )
    batches = [next(it) for _ in range(3)]
    it.close()
    assert all(b["raw"].shape == (2, 1, 8, 16, 16) for b in batches)
    assert not np.array_equal(batches[0]["raw"], batches[1]["raw"])


def test_rejects_mostly_unlabelled_crops(tmp_path):
    labels = synthetic_labels((16, 48, 48), block=(4, 8, 8), zero_planes=False)
    labels[:, :, :30] = 0  # most of the volume is unlabelled
    raw_ref, lab_ref = write_zarr(tmp_path / "m.zarr", labels)
    it = affinity_batches(
        raw_ref, lab_ref, [8, 16, 16], [8, 16, 16], batch_size=4, augment=False, min_masked=0.9
    )
    for _ in range(3):
        lab = next(it)["labels"]
        for i in range(4):
            assert (lab[i] != 0).mean() >= 0.9
    it.close()


def test_labels_mask_zeroes_weights(tmp_path):
    labels = synthetic_labels((16, 40, 40), zero_planes=False)
    raw_ref, lab_ref = write_zarr(tmp_path / "k.zarr", labels)
    mask = (labels % 2).astype(np.uint8)  # every other body is "unlabelled"
    mask_ref = DatasetRef(path=tmp_path / "k.zarr", dataset="volumes/labels/mask")
    roi = Roi((0, 0, 0), (160, 400, 400))
    write(prepare_volume(mask_ref, roi, (10, 10, 10), np.uint8, roi.shape), roi, mask)
    b = next(
        affinity_batches(
            raw_ref,
            lab_ref,
            [8, 24, 24],
            [8, 24, 24],
            augment=False,
            mask_refs=mask_ref,
            min_masked=0.0,
        )
    )
    m = (b["labels"][0] % 2).astype(np.uint64)
    for c, off in enumerate(neighborhood()):
        both, sl = expected_affs(m, off)  # 1 where both voxels are labelled
        w = b["weights"][0, c][sl]
        assert np.all(w[both == 0] == 0) and np.all(w[both == 1] > 0)


def test_input_errors(tmp_path):
    labels = synthetic_labels((8, 12, 12))
    raw_aniso, _ = write_zarr(tmp_path / "a.zarr", labels, (40, 4, 4))
    with pytest.raises(ConfigError, match=r"raw\[1\]: voxel size"):
        raw_batches([FIB_RAW, raw_aniso], [4, 8, 8], 1)
    with pytest.raises(ConfigError, match="smaller than a crop"):
        raw_batches(FIB_RAW, [16, 96, 96], 1)  # a rotated 96x96 crop needs 136 voxels
    with pytest.raises(ConfigError, match="smaller than a crop"):
        raw_batches(FIB_RAW, [8, 64, 64], 1, augment={"rotate": False})  # z may get 64
    raw_batches(FIB_RAW, [8, 64, 64], 1, augment={"rotate": False, "transpose": False})
    with pytest.raises(ConfigError, match="even"):
        affinity_batches(FIB_RAW, FIB_LABELS, [9, 16, 16], [8, 16, 16])
    with pytest.raises(ConfigError, match="labels"):
        affinity_batches([FIB_RAW], [], [8, 16, 16], [8, 16, 16])
    with pytest.raises(ConfigError, match="file not found"):
        raw_batches(DatasetRef(path=tmp_path / "nope.zarr", dataset="raw"), [4, 8, 8], 1)
    with pytest.raises(ValueError, match="unknown augmentation"):
        options({"flip": True})


def test_augmentation_chain_choices():
    names = lambda nodes: [type(n).__name__ for n in nodes]  # noqa: E731
    iso = augmentations(None, Coordinate(10, 10, 10), True)
    assert names(iso) == ["ElasticAugment", "SimpleAugment", "IntensityAugment", "NoiseAugment"]
    assert iso[1].transpose_only == [0, 1, 2]
    aniso = augmentations(None, Coordinate(40, 4, 4), True)
    assert names(aniso)[-1] == "DefectAugment"
    assert aniso[1].transpose_only == [1, 2]  # never swap z with an in-plane axis
    assert aniso[0].jitter_sigma[0] == 0.0 and aniso[0].prob_slip > 0
    assert augmentations(None, Coordinate(10, 10, 10), NO_AUGMENT) == []
    assert names(augmentations(None, Coordinate(10, 10, 10), {"elastic": False})) == [
        "SimpleAugment",
        "IntensityAugment",
        "NoiseAugment",
    ]
