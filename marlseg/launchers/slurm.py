"""The Slurm launcher: one ``srun`` per worker, and Slurm's time format.

May import :mod:`marlseg.launchers.batch`.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from marlseg.launchers.batch import BatchLauncher


@dataclass
class SlurmLauncher(BatchLauncher):
    """``srun`` per worker: blocks for the job's life, cancels it when terminated."""

    scheduler: ClassVar[str] = "slurm"
    submit_tool: ClassVar[str] = "srun"
    cancel_tool: ClassVar[str] = "scancel"
    job_id_env: ClassVar[str] = "SLURM_JOB_ID"

    def submit_command(self, log: Path) -> list[str]:
        w = self.workers
        cmd = [
            "srun",
            f"--job-name={self.job_name}",
            f"--output={log}",
            "--open-mode=append",
            "--export=ALL",
            "--nodes=1",
            "--ntasks=1",
            f"--cpus-per-task={w.cpus}",
        ]
        if w.mem_mb is not None:
            cmd.append(f"--mem={w.mem_mb}M")
        if self.gpus:
            cmd.append(f"--gpus={self.gpus}")
        if w.time_limit is not None:
            cmd.append(f"--time={_slurm_time(w.time_limit)}")
        if w.partition is not None:
            cmd.append(f"--partition={w.partition}")
        if w.account is not None:
            cmd.append(f"--account={w.account}")
        return [*cmd, *w.extra_flags, "/bin/sh", str(self.script_path)]

    def job_env(self, log: Path) -> dict[str, str]:
        env = super().job_env(log)
        if "SLURM_JOB_ID" in env or "SLURM_JOBID" in env:
            # inside an allocation (the scheduler itself runs in a Slurm job) srun would start a
            # step of that job instead of a new job, and the job's SLURM_* settings would
            # override ours: submit from a clean slate
            for key in [k for k in env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
                del env[key]
        return env

    def cancel_command(self, job_id: str) -> list[str]:
        return ["scancel", job_id]

    def cancel_all_command(self) -> list[str]:
        return ["scancel", f"--name={self.job_name}", f"--user={getpass.getuser()}"]

    def active_jobs_command(self) -> list[str]:
        return ["squeue", "--noheader", f"--name={self.job_name}", "--format=%i"]

    def parse_job_id(self, line: str) -> str | None:
        m = re.match(r"srun: job (\d+) ", line)
        return m.group(1) if m else None

    def is_pending(self, lines: list[str]) -> bool:
        queued = any(re.match(r"srun: job \d+ queued", ln) for ln in lines)
        allocated = any(re.match(r"srun: job \d+ has been allocated", ln) for ln in lines)
        return queued and not allocated

    def submit_failure(self, lines: list[str], log: Path) -> str | None:
        if self._started(log):
            return None
        return self._first_error(lines) or "the job never started"


def _slurm_time(value: str) -> str:
    from marlseg.config import time_limit_seconds

    s = time_limit_seconds(value)
    days, s = divmod(s, 86400)
    hms = f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days}-{hms}" if days else hms
