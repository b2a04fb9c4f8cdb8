"""Cluster workers against a real one-node Slurm (started by ``scripts/start_slurm.sh`` when it
is not running): identical output to local workers, a cancelled worker job replaced, no job left
behind by Ctrl-C or SIGTERM, a bad partition reported in one line, and a queued job cancelled
when no block is left for it. Plus one local test: a killed scheduler leaves no local worker.

The stage is ``tests.toy_stages:ToyClusterStage`` (16 blocks copying ``data/fib25_tiny.h5``),
run in this process or through the CLI in a child process, with real daisy workers in real
Slurm jobs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # workers import the toy stage as tests.toy_stages
    sys.path.insert(0, str(REPO))

from marlseg.config import load_config  # noqa: E402
from tests.toy_stages import ToyClusterStage  # noqa: E402

RAW = REPO / "data" / "fib25_tiny.h5"
STAGE_REF = "tests.toy_stages:ToyClusterStage"
CLI = f"import sys; from marlseg.cli import main; sys.exit(main({STAGE_REF!r}, sys.argv[1:]))"

pytestmark = pytest.mark.slow


def _slurm_ready() -> bool:
    if shutil.which("sinfo") is None:
        return False
    r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    return r.returncode == 0 and any(
        s.rstrip("*~#") in ("idle", "mix", "alloc") for s in r.stdout.split()
    )


@pytest.fixture(scope="session")
def slurm() -> None:
    """A running Slurm: the one here, or one started by scripts/start_slurm.sh."""
    if _slurm_ready():
        return
    if os.geteuid() != 0:
        pytest.skip("Slurm is not running and scripts/start_slurm.sh needs root to start it")
    r = subprocess.run(
        ["bash", str(REPO / "scripts" / "start_slurm.sh")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0 or not _slurm_ready():
        tail = " ".join((r.stdout + r.stderr).strip().splitlines()[-3:])
        pytest.skip(f"could not start Slurm (scripts/start_slurm.sh exit {r.returncode}): {tail}")


def _config_file(tmp_path: Path, run: str, **workers) -> Path:
    path = tmp_path / f"{run}.json"
    path.write_text(
        json.dumps(
            {
                "run": {"dir": str(tmp_path / run)},
                "raw": {"path": str(RAW), "dataset": "volumes/raw"},
                "workers": {"num_workers": 2, **workers},
            }
        )
    )
    return path


def _run_stage(config_file: Path):
    stage = ToyClusterStage(load_config(config_file))
    stage.check()
    return stage.run()


def _output(run_dir: Path) -> np.ndarray:
    return zarr.open(str(run_dir / "toy.zarr"), mode="r")["copy"][...]


def _raw() -> np.ndarray:
    import h5py

    with h5py.File(RAW, "r") as f:
        return f["volumes/raw"][...]


def _job_name(run_dir: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    path = run_dir / "logs" / "toy" / "run.json"
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())["job_name"]
        time.sleep(0.2)
    raise AssertionError(f"{path} never appeared")


def _jobs(name: str, states: str = "PENDING,RUNNING,COMPLETING,CONFIGURING") -> list[str]:
    out = subprocess.run(
        ["squeue", "--noheader", f"--name={name}", f"--states={states}", "--format=%i"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return out.split()


def _wait_running(name: str, n: int, timeout: float = 90) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = _jobs(name, "RUNNING")
        if len(running) >= n:
            return running
        time.sleep(0.3)
    raise AssertionError(f"never saw {n} running jobs named {name}")


def _cli(config_file: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CLI, str(config_file), *args],
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )


@pytest.mark.slurm
def test_slurm_workers_match_local_workers(slurm, tmp_path):
    local = _run_stage(_config_file(tmp_path, "local", type="local"))
    t0 = time.monotonic()
    summary = _run_stage(_config_file(tmp_path, "slurm", type="slurm"))
    wall = time.monotonic() - t0
    print(f"16 blocks, 2 slurm workers: {wall:.1f} s (local: {local.wall_s:.1f} s)")
    assert (summary.worker_type, summary.blocks_total, summary.blocks_done) == ("slurm", 16, 16)
    assert summary.ok and summary.worker_failures == 0
    assert np.array_equal(_output(tmp_path / "slurm"), _output(tmp_path / "local"))
    assert np.array_equal(_output(tmp_path / "slurm"), _raw())
    logs = sorted((tmp_path / "slurm" / "logs" / "toy").glob("worker_*.log"))
    assert logs and all("slurm job" in p.read_text() for p in logs)
    assert _jobs(_job_name(tmp_path / "slurm")) == []


@pytest.mark.slurm
def test_cancelled_worker_job_is_replaced(slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_SLEEP", "1")  # reaches the jobs through srun --export=ALL
    config_file = _config_file(tmp_path, "run", type="slurm")
    cancelled: list[str] = []

    def cancel_one() -> None:
        running = _wait_running(_job_name(tmp_path / "run"), 2)
        time.sleep(3)  # mid-stage: a few blocks done, one in flight
        subprocess.run(["scancel", running[0]], check=True, timeout=30)
        cancelled.append(running[0])

    killer = threading.Thread(target=cancel_one, daemon=True)
    killer.start()
    summary = _run_stage(config_file)
    killer.join(timeout=5)
    assert cancelled, "the stage ended before a job could be cancelled"
    assert summary.ok and summary.blocks_done == 16
    assert summary.worker_failures >= 1 and summary.worker_restarts >= 1
    assert f"slurm job {cancelled[0]}" in summary.first_error
    assert "log: " in summary.first_error and "worker_" in summary.first_error
    assert np.array_equal(_output(tmp_path / "run"), _raw())


@pytest.mark.slurm
@pytest.mark.parametrize(
    "sig, target",
    [(signal.SIGINT, "process group"), (signal.SIGTERM, "process")],
    ids=["ctrl-c", "sigterm"],
)
def test_interrupt_leaves_no_job(slurm, tmp_path, sig, target):
    proc = _cli(_config_file(tmp_path, "run", type="slurm"), TOY_SLEEP="2")
    try:
        name = _job_name(tmp_path / "run")
        _wait_running(name, 2)
        time.sleep(2)
        t0 = time.monotonic()
        if target == "process group":
            os.killpg(proc.pid, sig)  # what Ctrl-C in a terminal does
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"{signal.Signals(sig).name} to the {target}: exited after {took:.1f} s")
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].endswith("interrupted; re-run the same command to resume")
    assert _jobs(name) == []


@pytest.mark.slurm
def test_bad_partition_is_one_line_error(slurm, tmp_path):
    t0 = time.monotonic()
    proc = _cli(_config_file(tmp_path, "run", type="slurm", partition="nosuch"))
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - t0
    print(f"bad partition reported after {took:.1f} s")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, err[-2000:]
    assert errors == ["error: toy.workers: srun failed: invalid partition specified: nosuch"]
    assert err.strip().splitlines()[-1] == errors[0]
    assert took < 60
    assert _jobs(_job_name(tmp_path / "run")) == []


@pytest.mark.slurm
def test_queued_job_is_cancelled_when_no_block_is_left(slurm, tmp_path):
    cpus = int(subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout)
    if cpus < 2:
        pytest.skip("needs a node with 2 CPUs: one for a blocker job, one for a worker")
    blocker = subprocess.run(
        ["sbatch", "--parsable", f"--cpus-per-task={cpus - 1}", "--job-name=marlseg-test-blocker"]
        + ["--output=/dev/null", "--wrap=sleep 600"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        _wait_running("marlseg-test-blocker", 1)
        t0 = time.monotonic()
        summary = _run_stage(_config_file(tmp_path, "run", type="slurm"))
        took = time.monotonic() - t0
    finally:
        subprocess.run(["scancel", blocker], timeout=30)
    print(f"one worker ran, one waited in the queue: stage took {took:.1f} s")
    assert summary.ok and summary.blocks_done == 16 and summary.worker_failures == 0
    logs = [p.read_text() for p in (tmp_path / "run" / "logs" / "toy").glob("worker_*.log")]
    assert sum("cancelled while queued" in text for text in logs) == 1
    assert _jobs(_job_name(tmp_path / "run")) == []


def test_killed_scheduler_leaves_no_local_worker(tmp_path):
    """SIGKILL of the scheduler: no handler runs; each worker slot sees its parent gone and
    stops its worker (the same watch cancels a slot's cluster job)."""
    config_file = _config_file(tmp_path, "run", type="local")
    proc = _cli(config_file, TOY_SLEEP="2")
    worker_config = str(tmp_path / "run" / "tracking" / "toy" / "worker_config.json")

    def workers() -> list[int]:
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    cmd = (d / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if worker_config.encode() in cmd:
                    pids.append(int(d.name))
        return pids

    try:
        deadline = time.monotonic() + 60
        while len(workers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(workers()) == 2
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while workers() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert workers() == []
    finally:
        for pid in workers():
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slurm
def test_killed_scheduler_leaves_no_job(slurm, tmp_path):
    """SIGKILL: no handler, no ``finally`` runs; each orphaned worker slot cancels its job."""
    proc = _cli(_config_file(tmp_path, "run", type="slurm"), TOY_SLEEP="2")
    name = _job_name(tmp_path / "run")
    try:
        _wait_running(name, 2)
    finally:
        proc.kill()
        proc.communicate()
    t0 = time.monotonic()
    while _jobs(name) and time.monotonic() - t0 < 30:
        time.sleep(0.3)
    print(f"SIGKILL to the scheduler: its jobs were gone after {time.monotonic() - t0:.1f} s")
    assert _jobs(name) == []
