"""LSF worker lifecycle on a fake LSF (``tests/fake_lsf.py``: real ``bsub -K``/``bjobs``/``bkill``
processes on ``PATH`` with LSF's pending, exit and kill semantics), with real daisy, real
workers and the toy copy stage: launch, a killed job replaced, a queued job cancelled once no
block is left, a bad queue in one line, an interrupted run leaving no job, and a RAG stage
refused against a loopback database. Recorded in ``test-artifacts/faults.json``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_cluster import _config_file as cluster_config_file
from tests.test_cluster import _output, _raw, _run_stage
from tests.test_faults import record

REPO = Path(__file__).resolve().parents[1]
STAGE_REF = "tests.toy_stages:ToyClusterStage"
CLI = f"import sys; from marlseg.cli import main; sys.exit(main({STAGE_REF!r}, sys.argv[1:]))"

pytestmark = pytest.mark.slow


@pytest.fixture
def lsf(tmp_path, monkeypatch) -> Path:
    """``bsub``, ``bjobs``, ``bkill`` first on ``PATH``; yields the fake's state directory."""
    bin_dir = tmp_path / "lsf-bin"
    bin_dir.mkdir()
    for tool in ("bsub", "bjobs", "bkill"):
        script = bin_dir / tool
        script.write_text(
            f'#!/bin/sh\nexec {sys.executable} {REPO / "tests" / "fake_lsf.py"} {tool} "$@"\n'
        )
        script.chmod(0o755)
    state = tmp_path / "lsf-state"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LSF_DIR", str(state))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    return state


def _jobs(state: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(state.glob("job_*.json"))]


def _live(state: Path) -> list[dict]:
    return [j for j in _jobs(state) if j["state"] in ("PEND", "RUN")]


def _config_file(tmp_path: Path, run: str, **workers) -> Path:
    return cluster_config_file(tmp_path, run, type="lsf", **workers)


def _no_process(pids) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


def test_lsf_launch_matches_raw_and_cleans_up(lsf, tmp_path):
    summary = _run_stage(_config_file(tmp_path, "run"))
    assert (summary.worker_type, summary.blocks_total, summary.blocks_done) == ("lsf", 16, 16)
    assert summary.ok and summary.worker_failures == 0
    np.testing.assert_array_equal(_output(tmp_path / "run"), _raw())
    jobs = _jobs(lsf)
    assert jobs and all(j["ran"] and j["state"] == "DONE" for j in jobs)
    logs = sorted((tmp_path / "run" / "logs" / "toy").glob("worker_*.log"))
    assert logs and all("lsf job" in p.read_text() for p in logs)
    assert _live(lsf) == [] and _no_process(j["pid"] for j in jobs)
    record("lsf_launch", 0, True, jobs=len(jobs))


def test_dead_lsf_job_is_replaced(lsf, tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_SLEEP", "1")  # reaches the jobs through bsub -env all
    killed: list[int] = []

    def kill_one() -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            running = [j for j in _jobs(lsf) if j["state"] == "RUN"]
            if len(running) >= 2:
                time.sleep(3)  # mid-stage: a few blocks done, one in flight
                subprocess.run(["bkill", str(running[0]["id"])], timeout=30, check=True)
                killed.append(running[0]["id"])
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    summary = _run_stage(_config_file(tmp_path, "run"))
    killer.join(timeout=5)
    assert killed, "the stage ended before a job could be killed"
    assert summary.ok and summary.blocks_done == 16
    assert summary.worker_failures >= 1 and summary.worker_restarts >= 1
    assert f"lsf job {killed[0]}" in summary.first_error
    np.testing.assert_array_equal(_output(tmp_path / "run"), _raw())
    assert _live(lsf) == []
    record("lsf_job_killed", 1, True, error=summary.first_error)


def test_queued_lsf_job_is_cancelled_when_no_block_is_left(lsf, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_LSF_SLOTS", "1")  # one job runs, the other waits in the queue
    t0 = time.monotonic()
    summary = _run_stage(_config_file(tmp_path, "run"))
    took = time.monotonic() - t0
    assert summary.ok and summary.blocks_done == 16 and summary.worker_failures == 0
    jobs = _jobs(lsf)
    never_ran = [j for j in jobs if not j["ran"]]
    assert len(never_ran) == 1 and never_ran[0]["killed"], jobs
    logs = [p.read_text() for p in (tmp_path / "run" / "logs" / "toy").glob("worker_*.log")]
    assert sum("cancelled while queued" in text for text in logs) == 1
    assert _live(lsf) == []
    record("lsf_queued_job_drained", 1, True, wall_s=round(took, 1))


def test_bad_queue_is_one_line_error(lsf, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", CLI, str(_config_file(tmp_path, "run", queue="nosuch"))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert errors == ["error: toy.workers: bsub failed: nosuch: No such queue. Job not submitted."]
    assert proc.stderr.strip().splitlines()[-1] == errors[0]
    assert _jobs(lsf) == []  # nothing was submitted
    record("lsf_bad_queue", 1, True, error=errors[0])


def test_sigterm_leaves_no_lsf_job(lsf, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, str(_config_file(tmp_path, "run"))],
        env={**os.environ, "TOY_SLEEP": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while len([j for j in _jobs(lsf) if j["state"] == "RUN"]) < 2:
            assert time.monotonic() < deadline, "never saw 2 running jobs"
            time.sleep(0.2)
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].endswith("interrupted; re-run the same command to resume")
    jobs = _jobs(lsf)
    assert _live(lsf) == [] and _no_process(j["pid"] for j in jobs if j["pid"])
    record("lsf_scheduler_sigterm", 1, True, jobs=len(jobs))


def test_rag_stage_with_lsf_workers_refuses_a_loopback_database(lsf, tmp_path):
    config = tmp_path / "c.json"
    config.write_text(
        json.dumps(
            {
                "run": {"dir": str(tmp_path / "run")},
                "workers": {"type": "lsf"},
                "fragments": {
                    "boundary": {
                        "path": str(REPO / "data" / "fib_train.h5"),
                        "dataset": "volumes/predictions/boundary_p1",
                    }
                },
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "MARLSEG_MONGODB_URI"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "workflows" / "02_extract_fragments.py"), str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: db.bind: lsf workers") and "0.0.0.0" in line
    assert not (tmp_path / "run" / "fragments.zarr").exists() and _jobs(lsf) == []
    record("lsf_loopback_database", 1, True, error=line)
