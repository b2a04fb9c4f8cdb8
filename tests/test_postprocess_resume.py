"""Resume after crashes: the blockwise post-processing stages are idempotent per block.

* A worker SIGKILLs itself in the middle of a block (after some of the block's writes, before
  the others; ``MARLSEG_TEST_KILL``, once per run): the runner restarts it, the block is
  redone, the stage finishes, and its outputs are bit-identical to an uninterrupted run's, with
  no duplicate node or edge.
* The whole run (``02_extract_fragments.py`` and its workers, one process group) is SIGKILLed
  after some blocks are done; the re-run skips exactly the blocks done before (the summary's
  skipped count) and ends with outputs identical to the uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.test_postprocess_helpers import (
    ROOT,
    config_file,
    done_blocks,
    make_config,
    rag_rows,
    read_zarr,
    run_stage,
)

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, mongo_uri: str, tag: str):
    return make_config(tmp_path / tag, mongo_uri, f"pp_resume_{tag}_{uuid.uuid4().hex[:8]}")


def _outputs(config) -> tuple[np.ndarray, dict, dict]:
    frags = read_zarr(Path(config.fragments_ds.path), config.fragments_ds.dataset)
    nodes, edges = rag_rows(config)
    return frags, nodes, edges


def _assert_identical(a, b, edges: bool = True) -> None:
    frags_a, nodes_a, edges_a = a
    frags_b, nodes_b, edges_b = b
    np.testing.assert_array_equal(frags_a, frags_b)
    for k in nodes_a:
        np.testing.assert_array_equal(nodes_a[k], nodes_b[k])
    assert len(np.unique(nodes_b["id"])) == len(nodes_b["id"])  # no duplicate node
    if edges:
        for k in edges_a:
            np.testing.assert_array_equal(edges_a[k], edges_b[k])
        pairs = np.stack([edges_b["u"], edges_b["v"]], axis=1)
        assert len(np.unique(pairs, axis=0)) == len(pairs)  # no duplicate edge


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mongo_uri):
    """Fragments + agglomeration without interruption."""
    config = _config(tmp_path_factory.mktemp("ref"), mongo_uri, "ref")
    run_stage(config, "fragments")
    run_stage(config, "agglomerate")
    return _outputs(config)


def test_worker_sigkill_mid_block(tmp_path, mongo_uri, reference, monkeypatch):
    config = _config(tmp_path, mongo_uri, "killed")
    summaries = {}
    for stage in ("fragments", "agglomerate"):
        marker = tmp_path / f"killed_{stage}"
        # the worker dies in its second block: fragments written but not the nodes, or the
        # edges written but the block not marked done
        monkeypatch.setenv("MARLSEG_TEST_KILL", f"{stage}:2:{marker}")
        # one worker, so the death is always noticed before the stage can finish
        monkeypatch.setattr(getattr(config, stage), "workers", {"num_workers": 1})
        summaries[stage] = run_stage(config, stage)
        assert marker.exists(), f"no {stage} worker was killed"
        s = summaries[stage]
        assert s.ok and s.blocks_done == s.blocks_total == 16
        assert s.worker_failures >= 1 and s.worker_restarts >= 1
    monkeypatch.delenv("MARLSEG_TEST_KILL")
    _assert_identical(reference, _outputs(config))


def _wait_for_done(run_dir: Path, stage: str, n: int, proc: subprocess.Popen, timeout: float):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if done_blocks(run_dir, stage) >= n:
                return
        except (OSError, ValueError):
            pass  # the tracking file is being written
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {n} blocks were done:\n{proc.stderr.read()}")
        time.sleep(0.05)
    pytest.fail(f"fewer than {n} blocks done after {timeout} s")


@pytest.mark.parametrize(
    "stage, embedded",
    [("fragments", True), ("agglomerate", False)],
    ids=["fragments", "agglomerate"],
)
def test_kill_whole_run_and_resume(tmp_path, mongo_uri, reference, stage, embedded):
    """``embedded``: no ``db.uri`` (the default), so the run starts its own server under
    ``run.dir/db``; it outlives the killed run (own session) and the re-run reuses it."""
    config = _config(tmp_path, None if embedded else mongo_uri, "run")
    path = config_file(config, tmp_path / "config.json")
    run_dir = Path(config.run.dir)
    env = {k: v for k, v in os.environ.items() if k != "MARLSEG_MONGODB_URI"}
    if stage == "agglomerate":
        run_stage(config, "fragments")
    script = {"fragments": "02_extract_fragments.py", "agglomerate": "03_agglomerate.py"}[stage]
    # the scheduler, its daisy worker slots and the workers: one process group
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "workflows" / script), str(path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        _wait_for_done(run_dir, stage, 3, proc, timeout=240)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    try:
        time.sleep(0.5)  # let orphaned workers notice the scheduler is gone
        done_before = done_blocks(run_dir, stage)
        assert 3 <= done_before < 16, done_before
        resumed = subprocess.run(
            [sys.executable, str(ROOT / "workflows" / script), str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=env,
        )
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        summary = json.loads((run_dir / "summaries" / f"{stage}.json").read_text())
        assert summary["blocks_skipped"] == done_before
        assert summary["blocks_done"] == 16 - done_before
        if embedded:
            from marlseg.db import EmbeddedServer

            server = EmbeddedServer(run_dir / "db")
            assert not server.start(), "the killed run's server should still be serving"
            config = config.model_copy(
                update={"db": config.db.model_copy(update={"uri": server.uri})}
            )
        _assert_identical(reference, _outputs(config), edges=stage == "agglomerate")
    finally:
        if embedded:  # the server the killed run started (and nobody stopped): end it
            from marlseg.db import EmbeddedServer

            info = EmbeddedServer.read_info(run_dir / "db")
            if info is not None:
                pid = int(info["pid"])
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                for _ in range(200):  # it checkpoints, then exits
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        break
                    time.sleep(0.1)
