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
"""

from __future__ import annotations

import contextlib
import getpass
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import socket
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
from marlseg.errors import MarlsegError
from marlseg.worker import DRAINED_ENV, MEMORY_ENV


def worker_command(stage: str, config_path: Path) -> list[str]:
    """The one command every launcher runs."""
    return [sys.executable, "-m", "marlseg.worker", stage, str(config_path)]


class WorkerFailed(RuntimeError):
    """A worker exited with a non-zero code; the message names its log."""


class SubmitFailed(MarlsegError):
    """Worker jobs could not be submitted (no scheduler command, bad partition, ...)."""


class _Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP in a worker slot: handled like Ctrl-C (cancel the job, re-raise)."""


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


def _worker_env(stage_ref: str, log: Path, cpus: int) -> dict[str, str]:
    env = os.environ.copy()
    env["MARLSEG_WORKER_LOG"] = str(log)
    env.setdefault("OMP_NUM_THREADS", str(cpus))
    root = _module_root(stage_ref)
    if root is not None:
        parts = env.get("PYTHONPATH", "").split(os.pathsep) if env.get("PYTHONPATH") else []
        if root not in parts:
            env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    return env


@contextlib.contextmanager
def _slot_signals() -> Iterator[None]:
    """In a worker slot: SIGTERM and SIGHUP raise like Ctrl-C, so the job gets cancelled."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupted(signum: int, frame: object) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, raise_interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@dataclass
class Launcher:
    """What every launcher offers; see the module docstring for the two sides."""

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


def _wait(proc: subprocess.Popen, poll_s: float = 0.5, stop=None) -> int | None:
    """Wait for ``proc``; ``None`` when ``stop()`` became true first. Raises ``_Interrupted``
    when the process that started this slot (the scheduler) has died: nobody will ever
    collect this worker, so it must not keep a job."""
    parent = os.getppid()
    while True:
        try:
            return proc.wait(timeout=poll_s)
        except subprocess.TimeoutExpired:
            pass
        if os.getppid() != parent:
            raise _Interrupted("the scheduler process died")
        if stop is not None and stop():
            return None


@dataclass
class LocalLauncher(Launcher):
    """Runs the worker as a child process of daisy's worker slot, on this machine."""

    def launch(self) -> None:
        log = _next_log(self.log_dir)
        env = _worker_env(self.stage, log, self.workers.cpus)
        if self.workers.mem_mb is not None:
            env[MEMORY_ENV] = str(self.workers.mem_mb)
        with open(log, "ab") as out, _slot_signals():
            proc = subprocess.Popen(
                worker_command(self.stage, self.config_path),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
            try:
                code = _wait(proc)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        if code != 0:
            raise WorkerFailed(f"{self.name} worker exited with code {code}; log: {log}")


_ERROR_PREFIX = re.compile(r"^\s*(?:\S+:\s+)?(?:error|fatal):\s*", re.IGNORECASE)


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
        env = _worker_env(self.stage, log, self.workers.cpus)
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
        with _sigterm_aborts_run(self.cleanup):
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
        log = _next_log(self.log_dir)
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

        with _slot_signals():
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
                code = _wait(proc, stop=drained)
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


_BATCH: dict[str, type[BatchLauncher]] = {"slurm": SlurmLauncher, "lsf": LsfLauncher}


def check_workers(name: str, workers: WorkersConfig) -> None:
    """What can be checked before anything runs: the scheduler's submit command exists."""
    cls = _BATCH.get(workers.type)
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


@contextlib.contextmanager
def _sigterm_aborts_run(cancel) -> Iterator[None]:
    """Scheduler side: make SIGTERM (and SIGHUP) end the run like Ctrl-C, and cancel the jobs
    at once.

    While ``daisy.run_blockwise`` runs, Python signal handlers do not run (the main thread is
    inside daisy's Rust loop, which watches SIGINT only), so a SIGTERM would otherwise kill the
    scheduler outright or, with a handler, be ignored until the run ends. Python's C-level
    handler still writes the signal number to the wakeup fd: a thread reading it sends SIGINT
    to this process (daisy aborts the loop; no new workers are started) and cancels the jobs
    (the slots waiting on them return, so daisy can return)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    watched = (signal.SIGTERM, signal.SIGHUP)
    old_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    old = {s: signal.signal(s, lambda signum, frame: None) for s in watched}

    def watch() -> None:
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            if any(b in data for b in watched):
                os.kill(os.getpid(), signal.SIGINT)
                cancel()

    thread = threading.Thread(target=watch, name="marlseg-sigterm", daemon=True)
    thread.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        for s, handler in old.items():
            signal.signal(s, handler)
        writer.close()
        with contextlib.suppress(OSError):
            reader.shutdown(socket.SHUT_RDWR)
        thread.join(timeout=5)
        reader.close()


def make_launcher(
    stage: str,
    workers: WorkersConfig,
    config_path: Path,
    log_dir: Path,
    name: str | None = None,
) -> Launcher:
    """The launcher for ``workers.type``, prepared (job script written, submit command
    checked). ``name``: the stage's name (default: ``log_dir``'s name)."""
    cls = _BATCH.get(workers.type, LocalLauncher)
    launcher = cls(stage, Path(config_path), Path(log_dir), workers, name or Path(log_dir).name)
    launcher.prepare()
    return launcher
