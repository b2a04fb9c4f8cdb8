"""Blockwise prediction: any block shape gives the same affinities (windows on one global grid,
margin cropped), a re-run skips done blocks, and bad inputs fail before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from funlib.geometry import Coordinate, Roi

from marlseg.config import Config, DatasetRef, NetworkConfig
from marlseg.errors import ConfigError
from marlseg.inference import SHIPPED_CHECKPOINT, load_model, predict_region, read_mirrored
from marlseg.networks.unetr import build_unetr
from marlseg.stages.predict import PredictStage
from marlseg.volumes import open_volume, prepare_volume, write
from tests.tiny import TINY_NET

torch.set_num_threads(1)

DATA = Path(__file__).parents[1] / "data"
VOXEL = (10, 10, 10)
OFFSET = (40, 80, 120)
SHAPE = (26, 50, 46)  # not a multiple of the window core (6, 12, 12): edge blocks are partial


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_unetr(NetworkConfig(**TINY_NET), 3)
    path = tmp_path_factory.mktemp("ckpt") / "unetr.pt"
    torch.save(
        {
            "kind": "unetr",
            "network": TINY_NET,
            "model": model.state_dict(),
            "iteration": 0,
            "neighborhood": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]],
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def raw_ref(tmp_path_factory) -> DatasetRef:
    """A crop of fib25_tiny as a zarr with an offset."""
    import h5py

    with h5py.File(DATA / "fib25_tiny.h5") as f:
        data = f["volumes/raw"][: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    ref = DatasetRef(path=tmp_path_factory.mktemp("raw") / "raw.zarr", dataset="volumes/raw")
    roi = Roi(Coordinate(OFFSET), Coordinate(SHAPE) * Coordinate(VOXEL))
    write(prepare_volume(ref, roi, VOXEL, np.uint8, roi.shape), roi, data)
    return ref


def make_config(run_dir: Path, raw: DatasetRef, checkpoint: Path | None, **predict) -> Config:
    return Config.model_validate(
        {
            "run": {"dir": str(run_dir)},
            "raw": {"path": str(raw.path), "dataset": raw.dataset},
            "workers": {"num_workers": 2},
            "predict": {
                "checkpoint": None if checkpoint is None else str(checkpoint),
                "device": "cpu",
                "batch_size": 3,
                **predict,
            },
        }
    )


def run_in_process(stage: PredictStage) -> np.ndarray:
    """Prepare, then process every block of the stage's grid in this process."""
    stage.check()
    stage.prepare()
    stage.init_worker()
    total, block, _ = stage.geometry()
    counts = [-(-int(t) // int(b)) for t, b in zip(total.shape, block)]
    n = 0
    for k in np.ndindex(*counts):
        roi = Roi(total.begin + Coordinate(k) * block, block).intersect(total)
        stage.predict_roi(roi)
        n += 1
    out = open_volume(stage.affs_ref)
    return np.asarray(out._source_data[:]), n


def test_eight_blocks_equal_one_block(tmp_path, raw_ref, checkpoint):
    one = PredictStage(
        make_config(tmp_path / "one", raw_ref, checkpoint, block_shape=[300, 600, 600])
    )
    # halves of the volume on every axis: 8 blocks, not aligned with the window grid
    eight = PredictStage(
        make_config(tmp_path / "eight", raw_ref, checkpoint, block_shape=[130, 250, 230])
    )
    # twice the window core: 3 x 3 x 2 blocks aligned with the grid, partial at the far edges
    grid = PredictStage(
        make_config(tmp_path / "grid", raw_ref, checkpoint, block_shape=[120, 240, 240])
    )
    a, na = run_in_process(one)
    b, nb = run_in_process(eight)
    c, nc = run_in_process(grid)
    assert (na, nb, nc) == (1, 8, 18)
    assert a.shape == (3, *SHAPE) and a.dtype == np.uint8
    assert a.std() > 0  # a real prediction, not a constant
    # float results may differ in the last bit between batchings; after rounding to uint8
    # that is at most 1
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert np.abs(a.astype(int) - c.astype(int)).max() <= 1
    assert (a != b).mean() < 1e-3

    # and in floats: blocks assembled from the global grid match the whole within tolerance
    model, _ = load_model(checkpoint)
    src = open_volume(raw_ref)._source_data
    whole = predict_region(model, src, (0, 0, 0), SHAPE, [8, 16, 16], [1, 2, 2], "cpu", 5)
    part = predict_region(model, src, (7, 13, 30), (11, 20, 16), [8, 16, 16], [1, 2, 2], "cpu", 2)
    np.testing.assert_allclose(part, whole[:, 7:18, 13:33, 30:46], atol=1e-5)


def test_wrong_context_would_show(raw_ref, checkpoint):
    """The equality above is not trivial: a window placed on another grid predicts otherwise."""
    model, _ = load_model(checkpoint)
    src = open_volume(raw_ref)._source_data
    a = predict_region(model, src, (0, 0, 0), (12, 24, 24), [8, 16, 16], [1, 2, 2], "cpu", 4)
    shifted = np.asarray(src[:])[1:]  # the same data, the grid one section off
    b = predict_region(model, shifted, (0, 0, 0), (11, 24, 24), [8, 16, 16], [1, 2, 2], "cpu", 4)
    assert np.abs(a[:, 1:12] - b).max() > 1e-3


@pytest.mark.slow
def test_blockwise_run_with_workers_and_resume(tmp_path, raw_ref, checkpoint):
    config = make_config(tmp_path / "run", raw_ref, checkpoint, block_shape=[130, 250, 230])
    stage = PredictStage(config)
    stage.check()
    summary = stage.run()
    assert (summary.blocks_total, summary.blocks_done, summary.blocks_skipped) == (8, 8, 0)
    assert summary.voxels_per_s > 0
    out = np.asarray(open_volume(config.affs)._source_data[:])
    ref, _ = run_in_process(
        PredictStage(
            make_config(tmp_path / "ref", raw_ref, checkpoint, block_shape=[300, 600, 600])
        )
    )
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    saved = json.loads((config.run.dir / "summaries" / "predict.json").read_text())
    assert saved["blocks_done"] == 8
    again = PredictStage(config).run()
    assert (again.blocks_done, again.blocks_skipped) == (0, 8)
    assert np.array_equal(np.asarray(open_volume(config.affs)._source_data[:]), out)


def test_read_mirrored_matches_numpy_reflect():
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 255, (5, 7, 6), dtype=np.uint8)
    padded = np.pad(vol, 9, mode="reflect")
    for begin, shape in [
        ((-3, -2, -9), (8, 10, 20)),
        ((2, 3, 1), (3, 4, 5)),
        ((4, 6, 5), (9, 9, 9)),
    ]:
        got = read_mirrored(vol, begin, shape)
        want = padded[tuple(slice(b + 9, b + 9 + s) for b, s in zip(begin, shape))]
        np.testing.assert_array_equal(got, want)


def test_defaults_come_from_the_checkpoint(tmp_path, raw_ref, checkpoint):
    stage = PredictStage(make_config(tmp_path / "run", raw_ref, checkpoint))
    stage.check()
    total, block, context = stage.geometry()
    assert total == Roi(OFFSET, Coordinate(SHAPE) * Coordinate(VOXEL))
    assert stage.margin_voxels() == [1, 1, 1]  # 1/16 of the 8x16x16 input, at least 1
    assert block == Coordinate(120, 280, 280)  # twice the core (6, 14, 14) voxels
    assert context == Coordinate(10, 10, 10)
    assert stage.read_write_conflict is False
    fp = stage.fingerprint()
    assert fp["network"] == TINY_NET and len(fp["checkpoint"]) == 16
    stage.prepare()
    affs = open_volume(stage.affs_ref)
    assert affs._source_data.attrs["neighborhood"] == [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    assert affs._source_data.chunks == (3, 12, 28, 28)


def test_shipped_checkpoint_is_the_default(tmp_path, raw_ref):
    if not SHIPPED_CHECKPOINT.exists():
        pytest.skip("checkpoints/unetr_fib.pt not present")
    stage = PredictStage(make_config(tmp_path / "run", raw_ref, None))
    stage.check()
    ckpt = torch.load(SHIPPED_CHECKPOINT, weights_only=True)
    assert stage.network().model_dump(mode="json") == ckpt["network"]


def test_checks_fail_before_writing(tmp_path, raw_ref, checkpoint):
    mae = tmp_path / "mae.pt"
    torch.save({"kind": "mae", "network": TINY_NET, "model": {}, "iteration": 1}, mae)
    cases = [
        (dict(checkpoint=mae), "predict.checkpoint", "'mae' checkpoint"),
        (dict(checkpoint=tmp_path / "none.pt"), "predict.checkpoint", "not found"),
        (dict(margin=[40, 80, 80]), "predict.margin", "leave nothing"),
        (dict(margin=[15, 20, 20]), "predict.margin", "multiple of the voxel size"),
        (dict(block_shape=[125, 240, 240]), "predict.block_shape", "multiple"),
    ]
    for change, where, what in cases:
        kw = {"checkpoint": checkpoint, **change}
        ckpt = kw.pop("checkpoint")
        stage = PredictStage(make_config(tmp_path / "run", raw_ref, ckpt, **kw))
        with pytest.raises(ConfigError) as e:
            stage.check()
        assert e.value.where == where and what in e.value.what, e.value.line()
    no_raw = make_config(tmp_path / "run", raw_ref, checkpoint)
    no_raw.raw = None
    with pytest.raises(ConfigError, match="^raw: required"):
        PredictStage(no_raw).check()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no GPU"):
            PredictStage(make_config(tmp_path / "run", raw_ref, checkpoint, device="cuda")).check()
    assert not (tmp_path / "run").exists()
