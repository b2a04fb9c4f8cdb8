"""Worker launchers: how one daisy worker process comes to life.

daisy 2 calls a 0-argument launcher once per worker slot, inside a process whose environment
carries ``DAISY_CONTEXT``; the launcher must block for the worker's whole life so that daisy
sees a dead worker as a dead worker and starts another. Every launcher here runs the same
command, ``python -m marlseg.worker STAGE CONFIG``, which connects back with ``daisy.Client()``;
they differ only in *where* it runs (this machine, a Slurm job, an LSF job).

Launchers are small picklable objects: daisy ships them to its worker-slot processes.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from marlseg.config import WorkersConfig


def worker_command(stage: str, config_path: Path) -> list[str]:
    """The one command every launcher runs."""
    return [sys.executable, "-m", "marlseg.worker", stage, str(config_path)]


class WorkerFailed(RuntimeError):
    """A worker exited with a non-zero code; the message names its log."""


def _next_log(log_dir: Path, prefix: str = "worker") -> Path:
    """A fresh log path: worker_0.log, worker_1.log, ... (one per worker start)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for i in itertools.count():
        path = log_dir / f"{prefix}_{i}.log"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise AssertionError("unreachable")


@dataclass
class LocalLauncher:
    """Runs the worker as a child process of daisy's worker slot, on this machine."""

    stage: str
    config_path: Path
    log_dir: Path
    workers: WorkersConfig = field(default_factory=WorkersConfig)

    def __call__(self) -> None:
        log = _next_log(self.log_dir)
        env = os.environ.copy()
        env["MARLSEG_WORKER_LOG"] = str(log)
        env.setdefault("OMP_NUM_THREADS", str(self.workers.cpus))
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                worker_command(self.stage, self.config_path),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
            try:
                code = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        if code != 0:
            raise WorkerFailed(f"{self.stage} worker exited with code {code}; log: {log}")


def make_launcher(
    stage: str, workers: WorkersConfig, config_path: Path, log_dir: Path
) -> LocalLauncher:
    """The launcher for ``workers.type``."""
    if workers.type == "local":
        return LocalLauncher(stage, config_path, log_dir, workers)
    from marlseg.errors import NotBuiltYet

    raise NotBuiltYet(
        f"{stage}.workers.type", f"{workers.type!r} workers arrive with the cluster issue"
    )
