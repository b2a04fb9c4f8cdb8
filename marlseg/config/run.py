"""Where a run lives and how its workers run: the ``run``, ``db`` and ``workers`` sections,
the GPU stages and the worker time-limit format. Imports only :mod:`marlseg.config.base`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator

from marlseg.config.base import NonNegInt, PosInt, Section


class RunConfig(Section):
    dir: Path = Path("runs/default")
    """Everything a run writes goes under here: outputs (unless a section names its own), block
    tracking, logs, the embedded database, run summaries, scores."""


class DbConfig(Section):
    uri: str | None = None
    """MongoDB URI (``mongodb://user:pass@host:27017``). ``null``: the environment variable
    ``MARLSEG_MONGODB_URI`` if set, else an embedded server with its data under ``run.dir/db``."""
    name: str | None = None
    """Database name; one RAG per database, owned by the run that created it (another run
    is refused). ``null``: ``marlseg_<run.dir name>_<8 hex of its absolute path>``, one
    database per run dir."""
    bind: str = "127.0.0.1"
    """Address the embedded server listens on. Use ``0.0.0.0`` when cluster workers on other
    nodes must reach it."""


GPU_STAGES = ("predict", "train", "pretrain")
"""Stages whose cluster workers get one GPU each unless ``workers.gpus`` says otherwise."""

_TIME_LIMIT = re.compile(r"^(?:(\d+)-)?(\d+):(\d\d):(\d\d)$")


def time_limit_seconds(value: str) -> int:
    """Seconds in a ``workers.time_limit``: minutes (``"90"``), ``HH:MM:SS`` or
    ``D-HH:MM:SS``. Raises ValueError otherwise."""
    if value.isdigit():
        return int(value) * 60
    m = _TIME_LIMIT.match(value)
    if m is None or int(m.group(3)) > 59 or int(m.group(4)) > 59:
        raise ValueError(f"expected minutes, HH:MM:SS or D-HH:MM:SS, got {value!r}")
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


class WorkersConfig(Section):
    """How a stage's workers run. The global ``workers`` section is the default; a stage's own
    ``workers`` object overrides any of these keys for that stage alone. The scheduler keys
    (``partition`` ... ``extra_flags``) apply to ``slurm``/``lsf`` workers; ``local`` workers
    ignore them except ``cpus`` (their ``OMP_NUM_THREADS``)."""

    type: Literal["local", "slurm", "lsf"] = "local"
    """``local``: worker processes on this machine; ``slurm``: one ``srun`` job per worker;
    ``lsf``: one ``bsub -K`` job per worker. Each runs ``python -m marlseg.worker STAGE
    CONFIG`` and connects back to the scheduler (docs/cluster.md)."""
    num_workers: PosInt = 2
    """Workers running at once."""
    partition: str | None = None
    """Slurm partition (``--partition``); ``null``: the cluster's default."""
    queue: str | None = None
    """LSF queue (``bsub -q``); ``null``: the cluster's default."""
    time_limit: str | None = None
    """Wall-time limit per worker job: minutes (``"90"``), ``HH:MM:SS`` or ``D-HH:MM:SS``
    (Slurm ``--time``; LSF ``-W`` in whole minutes, rounded up). ``null``: the queue's
    default."""
    cpus: PosInt = 1
    """CPUs per worker (Slurm ``--cpus-per-task``; LSF ``-n`` on one host); also the worker's
    ``OMP_NUM_THREADS`` unless that is set already."""
    mem_mb: PosInt | None = None
    """Memory per worker in MB (Slurm ``--mem``; LSF ``-M`` and ``rusage[mem=]``); ``null``:
    the queue's default. Local workers cap their own address space at it (``ulimit -v``):
    an allocation beyond it fails that block (retried, then reported) instead of starving
    the machine. The address space includes mapped libraries (about 0.9 GB for a worker with
    torch loaded), so give local workers at least ~1500."""
    gpus: NonNegInt | None = None
    """GPUs per worker (Slurm ``--gpus``; LSF ``-gpu num=N``). ``null``: 1 for the GPU stages
    (``predict``, ``train``, ``pretrain``) on ``slurm``/``lsf``, else 0. Local workers ignore
    it (they use the machine's GPUs as they find them)."""
    account: str | None = None
    """Account/project to charge (Slurm ``--account``; LSF ``-P``)."""
    extra_flags: list[str] = []
    """Extra scheduler flags, passed verbatim before the worker command, e.g.
    ``["--qos=high", "--constraint=a100"]`` or ``["-R", "select[gpu_model==A100]"]``."""
    host: str | None = None
    """Address workers use to reach the scheduler; ``null`` detects one (``127.0.0.1`` for local
    workers). Set it when compute nodes reach this machine by another name or network."""
    max_retries: NonNegInt = 2
    """Retries of a failed block before the stage reports it failed."""
    max_worker_restarts: NonNegInt = 4
    """Worker deaths tolerated before the stage gives up (no endless respawning); a job that
    cannot even be submitted counts as a death, so a bad partition fails within seconds."""
    block_timeout: float | None = None
    """Seconds after which a stuck block's worker is killed and the block retried elsewhere."""

    @field_validator("time_limit", mode="before")
    @classmethod
    def _time_limit(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if isinstance(v, str):
            v = v.strip()
            time_limit_seconds(v)
        return v

    def gpus_for(self, stage: str) -> int:
        """GPUs each worker of ``stage`` requests: ``gpus``, or the default described there."""
        if self.gpus is not None:
            return self.gpus
        return 1 if self.type != "local" and stage in GPU_STAGES else 0

    def time_limit_minutes(self) -> int | None:
        """``time_limit`` in whole minutes, rounded up (LSF ``-W``)."""
        if self.time_limit is None:
            return None
        return -(-time_limit_seconds(self.time_limit) // 60)
