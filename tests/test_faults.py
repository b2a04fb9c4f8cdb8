"""Fault injection on the fib_train boundary-map chain (02-06), issue 11.

Every fault ends either in the same final state as a clean run (segmentation zarr
bit-identical, ``scores.json`` equal, RAG node and edge rows equal with no duplicates) or in a
clear one-line ``error: ...`` (no traceback) after which the re-run completes:

* a random ``marlseg.worker`` SIGKILLed after a random delay, once in every blockwise stage
  (seeded; a psutil thread watches the chain's process tree);
* the MongoDB server (the embedded ``secantusd-py``, pid in ``run.dir/db/server.json``)
  SIGKILLed during agglomerate; the re-run restarts it and no acknowledged write is lost;
* the scheduler (``workflows/run.py`` and its process group) SIGKILLed during extract, then
  re-run;
* the output container on a full file system (a tiny tmpfs; root only), then enlarged;
* a corrupted input chunk: the stage reports its failed blocks in one line naming the stage
  and pointing at the logs;
* a stage's parameters changed: refused with a clear message; ``--restart`` recomputes.

What was injected and survived is written to ``test-artifacts/faults.json`` and printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.test_postprocess_helpers import (
    ROOT,
    SCRIPTS,
    cli,
    config_file,
    done_blocks,
    make_config,
    rag_rows,
    read_zarr,
)

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("MARLSEG_FAULT_SEED", "11"))
BLOCKWISE = ["fragments", "agglomerate", "extract", "evaluate"]  # segments: one process
# 8 blocks per stage (fib_train is 500 x 1000 x 2000 nm)
SMALL_BLOCKS = "fragments.block_shape=[250, 500, 1000]"
ARTIFACTS = ROOT / "test-artifacts"
LEDGER: dict[str, dict] = {}


def record(fault: str, injected: int, survived: bool, **info) -> None:
    """Add a fault to ``test-artifacts/faults.json`` (merged with what other tests wrote)."""
    LEDGER[fault] = {"injected": injected, "survived": survived, **info}
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "faults.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data.update(LEDGER)
    data["_total"] = {
        "injected": sum(v["injected"] for k, v in data.items() if not k.startswith("_")),
        "survived": sum(
            v["injected"] for k, v in data.items() if not k.startswith("_") and v["survived"]
        ),
        "seed": SEED,
    }
    path.write_text(json.dumps(data, indent=2))
    t = data["_total"]
    print(
        f"\nfaults: {fault}: {injected} injected, survived={survived}; "
        f"so far {t['survived']}/{t['injected']} survived ({path.relative_to(ROOT)})"
    )


@pytest.fixture(scope="module", autouse=True)
def _fresh_ledger():
    """Start this module's run with an empty ``faults.json``."""
    (ARTIFACTS / "faults.json").unlink(missing_ok=True)
    LEDGER.clear()


def _config(run_dir: Path, uri: str | None, name: str, *sets: str):
    return make_config(run_dir, uri, name, SMALL_BLOCKS, *sets)


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "MARLSEG_MONGODB_URI"}


def _one_line_error(stderr: str, *words: str, clean: bool = True) -> str:
    """The run's user-facing error: the last line of stderr, ``error: ...``, naming ``words``;
    ``clean``: and no traceback folded into it. (daisy's own WARN log lines above it may
    carry tracebacks: they are the log, not the error.)"""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), stderr[-3000:]
    for w in words:
        assert w in lines[-1], lines[-1]
    if clean:
        assert "Traceback" not in lines[-1], lines[-1]
    return lines[-1]


def _final_state(config, uri: str) -> dict:
    seg = config.segmentation_ds()
    nodes, edges = rag_rows(
        config.model_copy(update={"db": config.db.model_copy(update={"uri": uri})})
    )
    return {
        "segmentation": read_zarr(Path(seg.path), seg.dataset),
        "fragments": read_zarr(Path(config.fragments_ds.path), config.fragments_ds.dataset),
        "scores": json.loads((Path(config.run.dir) / "scores.json").read_text()),
        "nodes": nodes,
        "edges": edges,
    }


def _assert_same_state(ref: dict, got: dict) -> None:
    np.testing.assert_array_equal(ref["fragments"], got["fragments"])
    np.testing.assert_array_equal(ref["segmentation"], got["segmentation"])
    assert ref["scores"] == got["scores"]
    assert len(ref["nodes"]["id"]) == len(got["nodes"]["id"])
    assert len(ref["edges"]["u"]) == len(got["edges"]["u"])
    for k in ref["nodes"]:
        np.testing.assert_array_equal(ref["nodes"][k], got["nodes"][k])
    for k in ref["edges"]:
        np.testing.assert_array_equal(ref["edges"][k], got["edges"][k])
    assert len(np.unique(got["nodes"]["id"])) == len(got["nodes"]["id"])  # no duplicate node
    pairs = np.stack([got["edges"]["u"], got["edges"]["v"]], axis=1)
    assert len(np.unique(pairs, axis=0)) == len(pairs)  # no duplicate edge


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mongo_uri):
    """The clean chain, run as a user does (``workflows/run.py``)."""
    tmp = tmp_path_factory.mktemp("faults_ref")
    config = _config(tmp / "run", mongo_uri, f"faults_ref_{os.getpid()}")
    proc = cli("run.py", config_file(config, tmp / "config.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return config, _final_state(config, mongo_uri)


# ---------------------------------------------------------------------------------- chaos
class Chaos:
    """Watches a chain run's process tree; kills one random worker per blockwise stage after a
    random delay, the database server once during agglomerate, and (if asked) the scheduler's
    process group once extract has done a block."""

    def __init__(self, rng: random.Random, run_dir: Path, kill_db: bool, kill_scheduler: bool):
        self.rng = rng
        self.run_dir = run_dir
        self.kill_db = kill_db
        self.kill_scheduler = kill_scheduler
        self.worker_kills: dict[str, int] = {}
        self.db_kills = 0
        self.scheduler_kills = 0
        self.proc: subprocess.Popen | None = None
        self.db_down_at: float | None = None
        self.hangs = 0
        self._seen: dict[str, float] = {}  # stage -> when to strike
        self._db_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _workers(self) -> dict[str, list[psutil.Process]]:
        out: dict[str, list[psutil.Process]] = {}
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return out
        for p in children:
            try:
                cmd = p.cmdline()
            except psutil.Error:
                continue
            if "marlseg.worker" in cmd:
                i = cmd.index("marlseg.worker")
                if i + 1 < len(cmd):
                    out.setdefault(cmd[i + 1], []).append(p)
        return out

    def _loop(self) -> None:
        while not self._stop.is_set() and self.proc.poll() is None:
            now = time.monotonic()
            for stage, procs in self._workers().items():
                if stage not in self.worker_kills:
                    if stage not in self._seen:
                        self._seen[stage] = now + self.rng.uniform(0.5, 4.0)
                    elif now >= self._seen[stage]:
                        victim = self.rng.choice(sorted(procs, key=lambda p: p.pid))
                        with contextlib.suppress(psutil.Error):
                            victim.send_signal(signal.SIGKILL)
                            self.worker_kills[stage] = 1
                if stage == "agglomerate" and self.kill_db and not self.db_kills:
                    if self._db_at is None:
                        self._db_at = now + self.rng.uniform(1.0, 5.0)
                    elif now >= self._db_at and done_blocks_safe(self.run_dir, stage) >= 1:
                        info = json.loads((self.run_dir / "db" / "server.json").read_text())
                        os.kill(int(info["pid"]), signal.SIGKILL)
                        self.db_kills = 1
                if (
                    stage == "extract"
                    and self.kill_scheduler
                    and not self.scheduler_kills
                    and done_blocks_safe(self.run_dir, stage) >= 1
                ):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.scheduler_kills = 1
                    return
            self._stop.wait(0.1)


def done_blocks_safe(run_dir: Path, stage: str) -> int:
    try:
        return done_blocks(run_dir, stage)
    except (OSError, ValueError):
        return 0


def _run_chain(config_path: Path, chaos: Chaos, timeout: float) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "workflows" / "run.py"), str(config_path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=_env(),
    )
    chaos.db_down_at = None  # the database is killed at most once, in one run
    chaos.watch(proc)
    t0 = time.monotonic()
    db_kills = chaos.db_kills
    try:
        while True:
            try:
                _, err = proc.communicate(timeout=1)
                break
            except subprocess.TimeoutExpired:
                pass
            if chaos.db_kills > db_kills and chaos.db_down_at is None:
                chaos.db_down_at = time.monotonic()
            hung = chaos.db_down_at is not None and time.monotonic() - chaos.db_down_at > 120
            if hung or time.monotonic() - t0 > timeout:
                chaos.hangs += 1
                os.killpg(proc.pid, signal.SIGKILL)
                _, err = proc.communicate()
                err += "\n[test] the chain hung and was killed"
                break
    finally:
        chaos.stop()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # leftover workers of a killed scheduler
    return proc.returncode, err


def _stop_embedded(run_dir: Path) -> None:
    from marlseg.db import EmbeddedServer

    info = EmbeddedServer.read_info(run_dir / "db")
    if info is None:
        return
    pid = int(info["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def test_chaos_chain_ends_as_a_clean_run(tmp_path, reference):
    """Worker SIGKILLs in every stage, the database killed mid-agglomerate, the scheduler
    killed mid-extract: re-running the same command ends in the clean run's exact state."""
    ref_config, ref_state = reference
    run_dir = tmp_path / "run"
    config = _config(run_dir, None, "faults_chaos")  # embedded server under run.dir/db
    path = config_file(config, tmp_path / "config.json")
    chaos = Chaos(random.Random(SEED), run_dir, kill_db=True, kill_scheduler=True)
    runs: list[int] = []
    errors: list[str] = []
    try:
        for _attempt in range(4):
            rc, err = _run_chain(path, chaos, timeout=400)
            runs.append(rc)
            if rc == 0:
                break
            if rc > 0:  # not killed by us: the error must be one line (see BUG_GAVE_UP)
                errors.append(_one_line_error(err, clean=False)[:300])
        assert runs[-1] == 0, f"the chain never completed: exit codes {runs}\n{err[-3000:]}"
        from marlseg.db import EmbeddedServer

        server = EmbeddedServer(run_dir / "db")
        server.start()  # reuses the running one
        state = _final_state(config, server.uri)
    finally:
        _stop_embedded(run_dir)
    kills = sum(chaos.worker_kills.values())
    _assert_same_state(ref_state, state)
    assert kills >= 3, chaos.worker_kills
    assert chaos.db_kills == 1 and chaos.scheduler_kills == 1
    assert chaos.hangs == 0, "the chain hung after the database was killed"
    record(
        "worker_sigkill",
        kills,
        True,
        stages=sorted(chaos.worker_kills),
        seed=SEED,
    )
    record("mongodb_sigkill_mid_agglomerate", chaos.db_kills, True)
    record("scheduler_sigkill_mid_extract", chaos.scheduler_kills, True, exit_codes=runs)
    record("_chaos_errors", 0, True, lines=errors)


# ---------------------------------------------------------------------------------- volume full
@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None,
    reason="mounting a tmpfs needs root",
)
def test_output_volume_full(tmp_path, mongo_uri, reference):
    _, ref_state = reference
    run_dir = tmp_path / "run"
    config = _config(run_dir, mongo_uri, f"faults_full_{os.getpid()}", "workers.max_retries=0")
    path = config_file(config, tmp_path / "config.json")
    out = Path(config.fragments_ds.path)
    out.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(out)])
    if mounted.returncode != 0:
        pytest.skip("mount -t tmpfs failed (no CAP_SYS_ADMIN here)")
    try:
        full = cli(SCRIPTS["fragments"], path, env=_env())
        assert full.returncode != 0
        line = _one_line_error(full.stderr, "fragments")
        remount = subprocess.run(["mount", "-o", "remount,size=64m", str(out)])
        assert remount.returncode == 0
        again = cli(SCRIPTS["fragments"], path, env=_env())
        assert again.returncode == 0, again.stderr[-3000:]
        frags = read_zarr(out, config.fragments_ds.dataset)
        np.testing.assert_array_equal(ref_state["fragments"], frags)
        nodes, _ = rag_rows(config)
        for k in ref_state["nodes"]:
            np.testing.assert_array_equal(ref_state["nodes"][k], nodes[k])
    finally:
        subprocess.run(["umount", "-l", str(out)])
    record("output_volume_full", 1, True, error=line)


# ---------------------------------------------------------------------------------- bad input
def test_corrupted_input_chunk(tmp_path, mongo_uri):
    from benchmarks.postprocess import tile_volume

    vol = tmp_path / "input.zarr"
    tile_volume(vol, (50, 100, 200), chunk=25)  # the same voxels as fib_train, 25^3 chunks
    # a corner chunk: only the blocks whose read ROI (write ROI + context) touches it fail
    chunk = vol / "boundary" / "0.0.0"
    assert chunk.is_file()
    chunk.write_bytes(b"\x00garbage, not a blosc frame\xff" * 40)
    config = _config(
        tmp_path / "run",
        mongo_uri,
        f"faults_corrupt_{os.getpid()}",
        f'fragments.boundary={{"path": "{vol}", "dataset": "boundary"}}',
        "workers.max_retries=0",
    )
    proc = cli(SCRIPTS["fragments"], config_file(config, tmp_path / "config.json"), env=_env())
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = _one_line_error(proc.stderr, "fragments", "failed", "logs")
    summary = json.loads((tmp_path / "run" / "summaries" / "fragments.json").read_text())
    assert 1 <= summary["blocks_failed"] < summary["blocks_total"]
    record("corrupted_input_chunk", 1, True, error=line)


# ---------------------------------------------------------------------------------- parameters
def test_changed_parameters_refused_then_restart(tmp_path, mongo_uri, reference):
    ref_config, ref_state = reference
    run_dir = tmp_path / "run"
    config = _config(run_dir, mongo_uri, f"faults_params_{os.getpid()}")
    path = config_file(config, tmp_path / "config.json")
    first = cli(SCRIPTS["fragments"], path, env=_env())
    assert first.returncode == 0, first.stderr[-3000:]
    other = "fragments.min_seed_distance=4"
    refused = cli(SCRIPTS["fragments"], path, "--set", other, env=_env())
    assert refused.returncode == 2
    # the message names the changed key
    line = _one_line_error(refused.stderr, "fragments", "fragments.min_seed_distance", "--restart")
    assert done_blocks(run_dir, "fragments") == 8  # nothing was touched
    np.testing.assert_array_equal(
        ref_state["fragments"],
        read_zarr(Path(config.fragments_ds.path), config.fragments_ds.dataset),
    )
    redone = cli(SCRIPTS["fragments"], path, "--set", other, "--restart", env=_env())
    assert redone.returncode == 0, redone.stderr[-3000:]
    summary = json.loads((run_dir / "summaries" / "fragments.json").read_text())
    assert summary["blocks_done"] == summary["blocks_total"] == 8
    assert summary["blocks_skipped"] == 0
    frags = read_zarr(Path(config.fragments_ds.path), config.fragments_ds.dataset)
    assert not np.array_equal(frags, ref_state["fragments"])  # recomputed, other seeds
    nodes, _ = rag_rows(config)
    ids = np.unique(frags[frags > 0])
    np.testing.assert_array_equal(nodes["id"], ids)  # no stale node of the old fragments
    record("changed_parameters", 1, True, error=line)
