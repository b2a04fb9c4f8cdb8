"""The LSF launcher: one ``bsub -K`` per worker.

May import :mod:`marlseg.launchers.batch`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from marlseg.launchers.batch import BatchLauncher


@dataclass
class LsfLauncher(BatchLauncher):
    """``bsub -K`` per worker: blocks until the job ends; ``bkill`` cancels it."""

    scheduler: ClassVar[str] = "lsf"
    submit_tool: ClassVar[str] = "bsub"
    cancel_tool: ClassVar[str] = "bkill"
    job_id_env: ClassVar[str] = "LSB_JOBID"

    def submit_command(self, log: Path) -> list[str]:
        w = self.workers
        cmd = ["bsub", "-K", "-J", self.job_name, "-o", str(log), "-e", str(log), "-env", "all"]
        if w.queue is not None:
            cmd += ["-q", w.queue]
        cmd += ["-n", str(w.cpus)]
        resources = []
        if w.mem_mb is not None:
            cmd += ["-M", f"{w.mem_mb}MB"]
            resources.append(f"rusage[mem={w.mem_mb}MB]")
        if w.cpus > 1:
            resources.append("span[hosts=1]")
        if resources:
            cmd += ["-R", " ".join(resources)]
        if self.gpus:
            cmd += ["-gpu", f"num={self.gpus}"]
        minutes = w.time_limit_minutes()
        if minutes is not None:
            cmd += ["-W", str(minutes)]
        if w.account is not None:
            cmd += ["-P", w.account]
        return [*cmd, *w.extra_flags, "/bin/sh", str(self.script_path)]

    def cancel_command(self, job_id: str) -> list[str]:
        return ["bkill", job_id]

    def cancel_all_command(self) -> list[str]:
        # job id 0 = every job of this user that matches the other filters (here: the name)
        return ["bkill", "-J", self.job_name, "0"]

    def active_jobs_command(self) -> list[str] | None:
        return ["bjobs", "-J", self.job_name, "-noheader", "-o", "jobid"]

    def parse_job_id(self, line: str) -> str | None:
        m = re.match(r"Job <(\d+)> is submitted", line)
        return m.group(1) if m else None

    def is_pending(self, lines: list[str]) -> bool:
        waiting = any("<<Waiting for dispatch" in ln for ln in lines)
        started = any("<<Starting on" in ln for ln in lines)
        return waiting and not started

    def submit_failure(self, lines: list[str], log: Path) -> str | None:
        if any(self.parse_job_id(ln) for ln in lines):
            return None  # submitted; a failure after that is the job's
        return self._first_error(lines) or "no job was submitted"
