"""Worker launchers: how one daisy worker process comes to life.

daisy 2 calls a 0-argument launcher once per worker slot, inside a process whose environment
carries ``DAISY_CONTEXT``; the launcher must block for the worker's whole life so that daisy
sees a dead worker as a dead worker and starts another. Every launcher here runs the same
command, ``python -m marlseg.worker STAGE CONFIG``, which connects back with ``daisy.Client()``;
they differ only in *where* it runs: this machine (:class:`LocalLauncher`), a Slurm job
(:class:`SlurmLauncher`, one ``srun`` per worker) or an LSF job (:class:`LsfLauncher`, one
``bsub -K`` per worker).

Launchers are small picklable objects: daisy ships them to its worker-slot processes. Two
halves live in each:

- the **slot side**, ``__call__``: submit one job, block until it ends, cancel it when the slot
  is interrupted (SIGINT, SIGTERM, SIGHUP) or when the scheduler process that started the slot
  dies; record a job that could not even be submitted in ``<log dir>/submit_error.json``;
- the **scheduler side**: :meth:`Launcher.session` wraps ``daisy.run_blockwise``. On SIGTERM it
  aborts the run as Ctrl-C does, and on the way out, however it ends, :meth:`Launcher.cleanup`
  cancels every job still carrying this run's job name (the backstop against leaked jobs).
  :meth:`Launcher.raise_submit_error` turns a recorded submission failure into one line,
  ``<stage>.workers: srun failed: invalid partition specified: nosuch``.

Why ``srun`` and not ``sbatch --wait``: ``sbatch --wait`` learns that its job ended by polling
the controller at 2, 8, then 32 s intervals (a 12 s job returned after 42 s here), which would
add up to half a minute to the end of every stage and to every worker replacement; ``srun``
returns the moment the job ends, cancels its job (pending or running) when it gets SIGTERM,
and its job is cancelled by the controller when ``srun`` itself is killed. Why not psij-python
(Slurm and LSF executors, docs/cluster.md): it learns job states by polling the queue (30 s
default), so blocking on its ``Job.wait()`` has the same latency, and it adds dependencies for
what is here a command line per scheduler.

The modules: :mod:`~marlseg.launchers.base` (the base class, the worker command and
environment, the errors), :mod:`~marlseg.launchers.signals` (interruptions of slots and of the
scheduler), :mod:`~marlseg.launchers.local`, :mod:`~marlseg.launchers.batch` (the generic
blocking-submit launcher), :mod:`~marlseg.launchers.slurm` and :mod:`~marlseg.launchers.lsf`;
this one picks a launcher for a ``workers`` config and re-exports the public names.
"""

from __future__ import annotations

from pathlib import Path

from marlseg.config import WorkersConfig
from marlseg.launchers.base import Launcher, SubmitFailed, WorkerFailed, worker_command
from marlseg.launchers.batch import BATCH, BatchLauncher, check_workers
from marlseg.launchers.local import LocalLauncher
from marlseg.launchers.lsf import LsfLauncher
from marlseg.launchers.slurm import SlurmLauncher

__all__ = [
    "BatchLauncher",
    "Launcher",
    "LocalLauncher",
    "LsfLauncher",
    "SlurmLauncher",
    "SubmitFailed",
    "WorkerFailed",
    "check_workers",
    "make_launcher",
    "worker_command",
]


def make_launcher(
    stage: str,
    workers: WorkersConfig,
    config_path: Path,
    log_dir: Path,
    name: str | None = None,
) -> Launcher:
    """The launcher for ``workers.type``, prepared (job script written, submit command
    checked). ``name``: the stage's name (default: ``log_dir``'s name)."""
    cls = BATCH.get(workers.type, LocalLauncher)
    launcher = cls(stage, Path(config_path), Path(log_dir), workers, name or Path(log_dir).name)
    launcher.prepare()
    return launcher
