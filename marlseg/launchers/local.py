"""The local launcher: each worker is a child process of daisy's worker slot, on this machine.

May import :mod:`marlseg.launchers.base` and :mod:`marlseg.launchers.signals`.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from marlseg.launchers.base import Launcher, WorkerFailed, next_log, worker_command, worker_env
from marlseg.launchers.signals import slot_signals, wait_worker
from marlseg.worker import MEMORY_ENV


@dataclass
class LocalLauncher(Launcher):
    """Runs the worker as a child process of daisy's worker slot, on this machine."""

    def launch(self) -> None:
        log = next_log(self.log_dir)
        env = worker_env(self.stage, log, self.workers.cpus)
        if self.workers.mem_mb is not None:
            env[MEMORY_ENV] = str(self.workers.mem_mb)
        with open(log, "ab") as out, slot_signals():
            proc = subprocess.Popen(
                worker_command(self.stage, self.config_path),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
            try:
                code = wait_worker(proc)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        if code != 0:
            raise WorkerFailed(f"{self.name} worker exited with code {code}; log: {log}")
