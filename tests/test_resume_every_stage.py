"""The mid-block kill in the stages ``tests/test_postprocess_resume.py`` does not cover: predict,
extract and evaluate. A worker SIGKILLs itself in its second block (``MARLSEG_TEST_KILL``,
after the block's writes, before it is marked done; for evaluate, with its table still in a
temporary file); the runner restarts it and the outputs are identical to an uninterrupted
run's."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.test_postprocess_helpers import CHAIN, read_zarr, run_stage
from tests.test_postprocess_helpers import make_config as chain_config
from tests.test_predict import checkpoint, make_config, raw_ref  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow
SMALL_BLOCKS = "fragments.block_shape=[250, 500, 1000]"  # 8 blocks on fib_train


def _killed(monkeypatch, tmp_path: Path, config, stage: str):
    marker = tmp_path / f"killed_{stage}"
    # one worker: the blocks after the killed one wait for the runner to notice the death and
    # start a new worker, so the death is always counted (with two, the survivor could finish
    # the stage before the dead worker's exit is reported)
    monkeypatch.setattr(getattr(config, stage), "workers", {"num_workers": 1})
    monkeypatch.setenv("MARLSEG_TEST_KILL", f"{stage}:2:{marker}")
    try:
        summary = run_stage(config, stage)
    finally:
        monkeypatch.delenv("MARLSEG_TEST_KILL")
    assert marker.exists(), f"no {stage} worker was killed"
    assert summary.ok and summary.blocks_done == summary.blocks_total
    assert summary.worker_failures >= 1 and summary.worker_restarts >= 1
    return summary


def test_worker_sigkill_mid_block_in_predict(tmp_path, raw_ref, checkpoint, monkeypatch):  # noqa: F811
    shape = [130, 250, 230]  # 8 blocks
    ref = make_config(tmp_path / "ref", raw_ref, checkpoint, block_shape=shape)
    run_stage(ref, "predict")
    config = make_config(tmp_path / "killed", raw_ref, checkpoint, block_shape=shape)
    _killed(monkeypatch, tmp_path, config, "predict")
    np.testing.assert_array_equal(
        read_zarr(Path(config.affs.path), config.affs.dataset),
        read_zarr(Path(ref.affs.path), ref.affs.dataset),
    )


def test_worker_sigkill_mid_block_in_extract_and_evaluate(tmp_path, mongo_uri, monkeypatch):
    def config(tag):
        return chain_config(
            tmp_path / tag, mongo_uri, f"kill_{tag}_{uuid.uuid4().hex[:8]}", SMALL_BLOCKS
        )

    ref = config("ref")
    for stage in CHAIN:
        run_stage(ref, stage)
    killed = config("killed")
    for stage in CHAIN:
        if stage in ("extract", "evaluate"):
            _killed(monkeypatch, tmp_path, killed, stage)
        else:
            run_stage(killed, stage)
    seg_ref, seg = ref.segmentation_ds(), killed.segmentation_ds()
    np.testing.assert_array_equal(
        read_zarr(Path(seg.path), seg.dataset), read_zarr(Path(seg_ref.path), seg_ref.dataset)
    )
    scores = json.loads((Path(killed.run.dir) / "scores.json").read_text())
    assert scores == json.loads((Path(ref.run.dir) / "scores.json").read_text())
    # the killed block's temporary table is left behind but never counted
    tables = list((Path(killed.run.dir)).rglob("block_*.npz"))
    assert len(tables) == len(list(Path(ref.run.dir).rglob("block_*.npz")))
