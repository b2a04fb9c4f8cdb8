"""The base :class:`Launcher` (both halves, see :mod:`marlseg.launchers`), the command and
environment every worker runs with, and the errors a worker slot reports.

Imports nothing from the other launcher modules; they all build on this one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from marlseg.config import WorkersConfig
from marlseg.errors import MarlsegError


def worker_command(stage: str, config_path: Path) -> list[str]:
    """The one command every launcher runs."""
    return [sys.executable, "-m", "marlseg.worker", stage, str(config_path)]


class WorkerFailed(RuntimeError):
    """A worker exited with a non-zero code; the message names its log."""


class SubmitFailed(MarlsegError):
    """Worker jobs could not be submitted (no scheduler command, bad partition, ...)."""


def next_log(log_dir: Path, prefix: str = "worker") -> Path:
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


def _module_root(stage_ref: str) -> str | None:
    """For a ``package.module:Class`` stage, the directory its top package was imported from,
    so that a worker started elsewhere imports the same module (plugins, tests)."""
    if ":" not in stage_ref:
        return None
    module = sys.modules.get(stage_ref.split(":")[0])
    path = getattr(module, "__file__", None)
    if path is None:
        return None
    # a.b -> <root>/a/b.py or <root>/a/b/__init__.py
    levels = stage_ref.split(":")[0].count(".") + 1 + (Path(path).name == "__init__.py")
    return str(Path(path).resolve().parents[levels - 1])


def worker_env(stage_ref: str, log: Path, cpus: int) -> dict[str, str]:
    env = os.environ.copy()
    env["MARLSEG_WORKER_LOG"] = str(log)
    env.setdefault("OMP_NUM_THREADS", str(cpus))
    root = _module_root(stage_ref)
    if root is not None:
        parts = env.get("PYTHONPATH", "").split(os.pathsep) if env.get("PYTHONPATH") else []
        if root not in parts:
            env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    return env


@dataclass
class Launcher:
    """What every launcher offers; see :mod:`marlseg.launchers` for the two sides."""

    stage: str
    """What the worker command names: a registry key or ``module:Class``."""
    config_path: Path
    log_dir: Path
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    name: str = ""
    """The stage's name, for messages and job names (default: the log directory's name)."""

    def __post_init__(self) -> None:
        self.config_path = Path(self.config_path)
        self.log_dir = Path(self.log_dir)
        if not self.name:
            self.name = self.log_dir.name

    # --- scheduler side -------------------------------------------------
    def prepare(self) -> None:
        """Once, in the scheduler, before any worker starts."""

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Wrap ``daisy.run_blockwise``: whatever ends the run, no job of it stays behind."""
        try:
            yield
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        """Cancel every job this run started that is still queued or running."""

    def submit_error(self) -> SubmitFailed | None:
        """The error to report if no worker job of this run could be submitted at all."""
        return None

    def raise_submit_error(self) -> None:
        error = self.submit_error()
        if error is not None:
            raise error

    # --- slot side ------------------------------------------------------
    def __call__(self) -> None:
        """Run one worker to its end (daisy calls this once per worker slot)."""
        try:
            self.launch()
        except WorkerFailed as e:
            # one line (daisy shows the slot's stderr tail, and the run summary its last
            # line), not a traceback of this module per dead worker
            print(f"marlseg.launchers.WorkerFailed: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt as e:  # the worker was stopped with the slot
            print(f"marlseg: {self.name} worker stopped ({e or 'SIGINT'})", file=sys.stderr)
            raise SystemExit(130) from None

    def launch(self) -> None:
        """Start the worker and block until it ends; raise WorkerFailed if it failed."""
        raise NotImplementedError
