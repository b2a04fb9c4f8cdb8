"""The generic cluster launcher: one job per worker, submitted by a command that blocks for
the job's life (``srun``, ``bsub -K``); its job script, its files in the log directory, the
cancelling of leftover jobs, and the check that the scheduler's commands exist.

Each scheduler (:mod:`marlseg.launchers.slurm`, :mod:`marlseg.launchers.lsf`) subclasses
:class:`BatchLauncher` with its command lines and the parsing of its submit command's output.
May import :mod:`marlseg.launchers.base` and :mod:`marlseg.launchers.signals`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from marlseg.config import WorkersConfig
from marlseg.launchers.base import (
    Launcher,
    SubmitFailed,
    WorkerFailed,
    next_log,
    worker_command,
    worker_env,
)
from marlseg.launchers.signals import sigterm_aborts_run, slot_signals, wait_worker
from marlseg.worker import DRAINED_ENV

_ERROR_PREFIX = re.compile(r"^\s*(?:\S+:\s+)?(?:error|fatal):\s*", re.IGNORECASE)

BATCH: dict[str, type[BatchLauncher]] = {}
"""The batch launchers by ``workers.type``; each subclass registers itself by its
``scheduler``."""


@dataclass
class BatchLauncher(Launcher):
    """One cluster job per worker, submitted by a command that blocks for the job's life.

    All jobs of one run share the job name ``marlseg-<stage>-<tag>`` (``tag``: random, per
    run), which is what :meth:`cleanup` cancels by. Each job runs ``<log dir>/worker.sh``
    (written by :meth:`prepare`), and writes its output to a fresh ``worker_<n>.log``."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    scheduler: ClassVar[str] = ""
    """``slurm`` / ``lsf``, for messages."""
    submit_tool: ClassVar[str] = ""
    """The blocking submit command: ``srun`` / ``bsub``."""
    cancel_tool: ClassVar[str] = ""
    job_id_env: ClassVar[str] = ""
    """The variable that holds the job id inside a job."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.scheduler:
            BATCH[cls.scheduler] = cls

    # --- what is submitted ---------------------------------------------
    @property
    def job_name(self) -> str:
        return f"marlseg-{self.name}-{self.tag}"

    @property
    def script_path(self) -> Path:
        return self.log_dir / "worker.sh"

    @property
    def gpus(self) -> int:
        return self.workers.gpus_for(self.name)

    def script(self) -> str:
        """The job script: a header line in the log, then the worker command."""
        command = shlex.join(worker_command(self.stage, self.config_path))
        return (
            "#!/bin/sh\n"
            f"# marlseg worker job for stage {self.name} (job name {self.job_name}); "
            "written by marlseg.launchers\n"
            f'echo "marlseg: {self.name} worker, {self.scheduler} job ${{{self.job_id_env}}} '
            'on $(hostname), started $(date +%Y-%m-%dT%H:%M:%S)"\n'
            f"cd {shlex.quote(os.getcwd())} || exit 1\n"
            f"exec {command}\n"
        )

    def submit_command(self, log: Path) -> list[str]:
        raise NotImplementedError

    def cancel_command(self, job_id: str) -> list[str]:
        raise NotImplementedError

    def cancel_all_command(self) -> list[str]:
        raise NotImplementedError

    def active_jobs_command(self) -> list[str] | None:
        """Lists this run's queued or running job ids (one per line), or ``None``."""
        return None

    def job_env(self, log: Path) -> dict[str, str]:
        env = worker_env(self.stage, log, self.workers.cpus)
        # the worker marks the run drained itself, while its job still holds its resources:
        # marked by this slot only after the job ended, a waiting job could be given the
        # freed resources before the other slots see the mark and cancel it
        env[DRAINED_ENV] = str(self._drained_file)
        return env

    # --- reading the submit command's output ----------------------------
    def parse_job_id(self, line: str) -> str | None:
        raise NotImplementedError

    def is_pending(self, lines: list[str]) -> bool:
        """Whether the submit command's output says the job waits for resources still."""
        return False

    def submit_failure(self, lines: list[str], log: Path) -> str | None:
        """The scheduler's message if the job never started, else ``None``."""
        raise NotImplementedError

    @staticmethod
    def _first_error(lines: list[str]) -> str | None:
        for line in lines:
            if _ERROR_PREFIX.match(line):
                return _ERROR_PREFIX.sub("", line).strip()
        for line in lines:
            if line.strip():
                return line.strip()
        return None

    # --- files in the log directory ------------------------------------
    @property
    def _submit_error_file(self) -> Path:
        return self.log_dir / "submit_error.json"

    @property
    def _started_file(self) -> Path:
        return self.log_dir / f".{self.tag}.started"

    @property
    def _drained_file(self) -> Path:
        return self.log_dir / f".{self.tag}.drained"

    def _touch(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.touch()

    # --- scheduler side -------------------------------------------------
    def prepare(self) -> None:
        check_workers(self.name, self.workers)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._submit_error_file.unlink(missing_ok=True)
        self.script_path.write_text(self.script())
        self.script_path.chmod(0o755)
        (self.log_dir / "run.json").write_text(
            json.dumps(
                {
                    "type": self.workers.type,
                    "job_name": self.job_name,
                    "script": str(self.script_path),
                    "submit": self.submit_command(self.log_dir / "worker_N.log"),
                },
                indent=2,
            )
        )

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        with sigterm_aborts_run(self.cleanup):
            try:
                yield
            finally:
                self.cleanup()

    def cleanup(self, wait_s: float = 15.0) -> None:
        """Cancel every job named after this run; wait (up to ``wait_s``) until the scheduler
        lists none. Never raises: it runs while another error may be on its way out."""
        try:
            subprocess.run(
                self.cancel_all_command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
            )
            listing = self.active_jobs_command()
            deadline = time.monotonic() + wait_s
            while listing is not None and time.monotonic() < deadline:
                out = subprocess.run(
                    listing, capture_output=True, text=True, timeout=30
                ).stdout.strip()
                if not out:
                    break
                time.sleep(0.5)
        except (OSError, subprocess.SubprocessError) as e:
            print(
                f"warning: {self.name}: could not cancel leftover {self.scheduler} jobs named "
                f"{self.job_name}: {e}",
                file=sys.stderr,
            )
        for path in (self._started_file, self._drained_file):
            with contextlib.suppress(OSError):
                path.unlink()

    def submit_error(self) -> SubmitFailed | None:
        """A submission failure recorded in this run, if no job of the run ever started."""
        try:
            record = json.loads(self._submit_error_file.read_text())
        except (OSError, ValueError):
            return None
        if record.get("tag") != self.tag or self._started_file.exists():
            return None
        return SubmitFailed(f"{self.name}.workers", record["message"])

    # --- slot side ------------------------------------------------------
    def _record_submit_error(self, message: str) -> None:
        tmp = self._submit_error_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"tag": self.tag, "message": message}))
        os.replace(tmp, self._submit_error_file)

    def launch(self) -> None:
        log = next_log(self.log_dir)
        command = self.submit_command(log)
        with open(log, "a") as f:
            f.write(f"marlseg: submitting {shlex.join(command)}\n")
        state: dict[str, object] = {"lines": [], "job_id": None}

        def read(stream) -> None:
            # the submit command's own messages (job id, "queued", errors) go to the log too
            with open(log, "a") as out:
                for line in stream:
                    state["lines"].append(line.rstrip("\n"))  # type: ignore[attr-defined]
                    if state["job_id"] is None:
                        state["job_id"] = self.parse_job_id(line)
                    out.write(line)
                    out.flush()

        submitted = time.time()

        def drained() -> bool:
            # Another worker of this run found no block left after this job was submitted: a
            # job still waiting for resources would only start to find nothing to do, and
            # daisy waits for every launcher to return, so the stage would wait for it.
            try:
                drained_at = self._drained_file.stat().st_mtime
            except OSError:
                return False
            return drained_at >= submitted and self.is_pending(state["lines"])  # type: ignore[arg-type]

        with slot_signals():
            try:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=self.job_env(log),
                    text=True,
                    start_new_session=True,  # Ctrl-C reaches us, and we cancel the job
                )
            except OSError as e:
                message = f"{self.submit_tool} failed: {e.strerror or e}"
                self._record_submit_error(message)
                raise WorkerFailed(f"{self.name}.workers: {message}; log: {log}") from None
            reader = threading.Thread(target=read, args=(proc.stdout,), daemon=True)
            reader.start()
            try:
                code = wait_worker(proc, stop=drained)
            except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP, or the scheduler died
                job = state["job_id"] or self._job_id_from_log(log)
                self._cancel(proc, job)  # type: ignore[arg-type]
                # one line instead of a traceback per worker on every Ctrl-C
                print(
                    f"marlseg: {e or 'SIGINT'}: cancelled {self.scheduler} job {job or '?'}",
                    file=sys.stderr,
                )
                raise SystemExit(130) from None
            except BaseException:
                self._cancel(proc, state["job_id"] or self._job_id_from_log(log))  # type: ignore[arg-type]
                raise
            if code is None:  # drained while pending
                self._cancel(proc, state["job_id"])  # type: ignore[arg-type]
                reader.join(timeout=5)
                with open(log, "a") as f:
                    f.write("marlseg: cancelled while queued: no blocks were left for it\n")
                return
            reader.join(timeout=5)
        lines: list[str] = state["lines"]  # type: ignore[assignment]
        job_id = state["job_id"] or self._job_id_from_log(log)
        if code == 0:
            self._touch(self._started_file)
            self._touch(self._drained_file)
            return
        failure = self.submit_failure(lines, log)
        if failure is not None:
            message = f"{self.submit_tool} failed: {failure}"
            self._record_submit_error(message)
            raise WorkerFailed(f"{self.name}.workers: {message}; log: {log}")
        self._touch(self._started_file)
        last = self._first_error(lines[-5:]) or ""
        raise WorkerFailed(
            f"{self.name} worker ({self.scheduler} job {job_id or '?'}) exited with code {code}"
            + (f" ({last})" if last else "")
            + f"; log: {log}"
        )

    def _job_id_from_log(self, log: Path) -> str | None:
        try:
            text = log.read_text(errors="replace")
        except OSError:
            return None
        m = re.search(rf"{self.scheduler} job (\d+)", text)
        return m.group(1) if m else None

    def _started(self, log: Path) -> bool:
        """Whether the job script ran (its header line is in the log)."""
        try:
            text = log.read_text(errors="replace")
        except OSError:
            return False
        return f"marlseg: {self.name} worker, {self.scheduler} job" in text

    def _cancel(self, proc: subprocess.Popen, job_id: str | None) -> None:
        """Cancel this slot's job: by id when known, else by signalling the submit command."""
        if job_id is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    self.cancel_command(job_id),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=30,
                )
        with contextlib.suppress(OSError):
            proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def check_workers(name: str, workers: WorkersConfig) -> None:
    """What can be checked before anything runs: the scheduler's submit command exists."""
    cls = BATCH.get(workers.type)
    if cls is None:
        return
    for tool in (cls.submit_tool, cls.cancel_tool):
        if shutil.which(tool) is None:
            raise SubmitFailed(
                f"{name}.workers",
                f"{cls.submit_tool} failed: {tool} not found on PATH ({workers.type} workers "
                f"need the {workers.type} client commands on this machine; or use "
                '"type": "local")',
            )
