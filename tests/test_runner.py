"""The blockwise runner with real daisy workers: output, resume, failures, changed parameters."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from marlseg.config import DatasetRef, load_config
from marlseg.errors import ConfigError, StageFailed
from marlseg.volumes import open_volume
from tests.toy_stages import ToyCopyStage

RAW = Path(__file__).parents[1] / "data" / "fib25_tiny.h5"


def toy_config(run_dir: Path, *overrides: str):
    return load_config(
        None,
        [
            json.dumps({"path": str(RAW), "dataset": "volumes/raw"}).join(["raw=", ""]),
            f'run.dir="{run_dir}"',
            *overrides,
        ],
    )


class BigBlocks(ToyCopyStage):
    block_shape = (250, 500, 500)


def output(run_dir: Path) -> np.ndarray:
    return open_volume(DatasetRef(path=run_dir / "toy.zarr", dataset="copy"))._source_data[:]


def raw() -> np.ndarray:
    with h5py.File(RAW, "r") as f:
        return f["volumes/raw"][:]


def test_run_then_resume_skips_every_done_block(tmp_path):
    cfg = toy_config(tmp_path / "run")
    first = BigBlocks(cfg).run()
    assert first.ok and first.blocks_total == 16 and first.blocks_done == 16
    np.testing.assert_array_equal(output(tmp_path / "run"), raw())
    summary = json.loads((tmp_path / "run/summaries/toy.json").read_text())
    assert summary["blocks_done"] == 16 and summary["voxels"] == 50 * 200 * 100

    second = BigBlocks(cfg).run()
    assert second.blocks_skipped == 16 and second.blocks_done == 0 and second.ok
    np.testing.assert_array_equal(output(tmp_path / "run"), raw())


def test_failed_blocks_fail_the_stage_and_resume_finishes(tmp_path, monkeypatch):
    cfg = toy_config(tmp_path / "run", "workers.max_retries=1", "workers.max_worker_restarts=10")
    monkeypatch.setenv("TOY_FAIL_BLOCKS", "3")
    with pytest.raises(StageFailed) as e:
        BigBlocks(cfg).run()
    assert e.value.exit_code == 1
    assert "planted failure in block 3" in e.value.what and "logs/toy" in e.value.what
    done = json.loads((tmp_path / "run/summaries/toy.json").read_text())
    assert done["blocks_failed"] >= 1 and done["blocks_done"] < 16

    monkeypatch.delenv("TOY_FAIL_BLOCKS")
    again = BigBlocks(cfg).run()
    assert again.ok
    assert again.blocks_skipped == done["blocks_done"]  # nothing done before is redone
    assert again.blocks_done == 16 - done["blocks_done"]
    np.testing.assert_array_equal(output(tmp_path / "run"), raw())


def test_local_workers_memory_cap_fails_blocks_over_it(tmp_path, monkeypatch):
    # each block allocates 2 GB; workers capped at 1500 MB fail every block with MemoryError
    cfg = toy_config(
        tmp_path / "run",
        "workers.mem_mb=1500",
        "workers.max_retries=0",
        "workers.max_worker_restarts=0",
    )
    monkeypatch.setenv("TOY_ALLOC_MB", "2000")
    with pytest.raises(StageFailed):
        BigBlocks(cfg).run()
    logs = "".join(p.read_text() for p in (tmp_path / "run/logs/toy").glob("worker_*.log"))
    assert "MemoryError" in logs
    # under the cap the same workers finish every block
    monkeypatch.setenv("TOY_ALLOC_MB", "100")
    assert BigBlocks(cfg).run().ok
    np.testing.assert_array_equal(output(tmp_path / "run"), raw())


def test_workers_dying_on_every_block_give_up_with_one_clear_line(tmp_path, monkeypatch):
    cfg = toy_config(tmp_path / "run", "workers.max_worker_restarts=1")
    monkeypatch.setenv("TOY_DIE", "1")
    with pytest.raises(StageFailed) as e:
        BigBlocks(cfg).run()
    line = e.value.line()
    assert "\n" not in line
    assert "gave up after repeated worker deaths" in line
    assert "workers.max_worker_restarts=1" in line and "logs/toy" in line
    assert "Task(" not in line  # daisy's advice about its own API is not ours to give
    monkeypatch.delenv("TOY_DIE")
    assert BigBlocks(cfg).run().ok  # the re-run finishes
    np.testing.assert_array_equal(output(tmp_path / "run"), raw())


def test_changed_parameters_are_refused_until_restart(tmp_path):
    cfg = toy_config(tmp_path / "run")
    BigBlocks(cfg).run()
    with pytest.raises(ConfigError, match="parameters changed since blocks were done"):
        ToyCopyStage(cfg).run()
    # --restart forgets the old blocks; the output (other chunking) must go too
    import shutil

    shutil.rmtree(tmp_path / "run" / "toy.zarr")
    summary = ToyCopyStage(cfg).run(restart=True)
    assert summary.blocks_skipped == 0 and summary.ok
    np.testing.assert_array_equal(output(tmp_path / "run"), raw())
