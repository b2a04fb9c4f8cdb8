"""A fake LSF for tests: ``bsub``, ``bjobs`` and ``bkill`` with the semantics marlseg relies on.

Not a mock of marlseg's code: real processes that the launcher runs as it runs LSF's, on this
machine. State lives in ``$FAKE_LSF_DIR`` (one JSON file per job, a lock file):

* ``bsub -K -J NAME -o LOG [-e LOG] [-q QUEUE] ... COMMAND``: an unknown queue (not in
  ``$FAKE_LSF_QUEUES``, default ``normal``) is refused before submission, exit 255. Otherwise
  prints ``Job <ID> is submitted to queue <Q>.`` and ``<<Waiting for dispatch ...>>``, waits
  (pending) until one of ``$FAKE_LSF_SLOTS`` job slots is free, prints ``<<Starting on
  HOST>>``, runs COMMAND with ``LSB_JOBID`` set and its output appended to LOG, and blocks until
  it ends (``-K``): exit 0 and ``<<Job is finished>>``, or the job's exit code and
  ``Exited with exit code N.``. A job killed while pending never starts (exit 255). SIGINT or
  SIGTERM to ``bsub`` kills its job, as LSF's ``bsub -K`` does.
* ``bkill ID`` / ``bkill -J NAME 0``: kills unfinished jobs (SIGTERM to a running job's process
  group, then SIGKILL); ``No unfinished job found`` and exit 255 if none matched.
* ``bjobs -J NAME -noheader -o jobid``: the ids of NAME's pending or running jobs.

Every job keeps its record (``state``: PEND, RUN, DONE, EXIT; ``ran``; ``killed``), which is
what the tests read afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("FAKE_LSF_DIR", "/tmp/fake-lsf"))
VALUED = {"-J", "-o", "-e", "-q", "-n", "-M", "-R", "-gpu", "-W", "-P", "-env"}


@contextlib.contextmanager
def locked():
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def jobs() -> list[dict]:
    out = []
    for p in sorted(STATE.glob("job_*.json"), key=lambda p: int(p.stem[4:])):
        with contextlib.suppress(OSError, ValueError):
            out.append(json.loads(p.read_text()))
    return out


def save(job: dict) -> None:
    path = STATE / f"job_{job['id']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job))
    os.replace(tmp, path)


def load(job_id: int) -> dict:
    return json.loads((STATE / f"job_{job_id}.json").read_text())


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def say(text: str) -> None:
    print(text, flush=True)


def bsub(argv: list[str]) -> int:
    opts: dict[str, str] = {}
    flags: set[str] = set()
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] in VALUED:
            opts[argv[i]] = argv[i + 1]
            i += 2
        else:
            flags.add(argv[i])
            i += 1
    command = argv[i:]
    queue = opts.get("-q", "normal")
    if queue not in os.environ.get("FAKE_LSF_QUEUES", "normal").split(","):
        say(f"{queue}: No such queue. Job not submitted.")
        return 255
    if "-K" not in flags or not command:
        say("fake bsub: only 'bsub -K ... COMMAND' is implemented. Job not submitted.")
        return 255
    with locked():
        job_id = max((j["id"] for j in jobs()), default=100) + 1
        job = {"id": job_id, "name": opts.get("-J", ""), "state": "PEND", "pid": None}
        job.update({"ran": False, "killed": False, "bsub_pid": os.getpid(), "queue": queue})
        save(job)
    say(f"Job <{job_id}> is submitted to queue <{queue}>.")
    say("<<Waiting for dispatch ...>>")

    proc: subprocess.Popen | None = None

    def interrupted(signum, frame):  # bsub -K killed: the job goes with it
        with locked():
            job = load(job_id)
            job.update(state="EXIT", killed=True)
            save(job)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        say(f"Job <{job_id}> is killed: bsub got signal {signum}")
        os._exit(130)

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    slots = int(os.environ.get("FAKE_LSF_SLOTS", "64"))
    while True:
        with locked():
            job = load(job_id)
            if job["killed"]:
                job["state"] = "EXIT"
                save(job)
                say(f"Job <{job_id}> was killed before it was dispatched.")
                return 255
            running = [j for j in jobs() if j["state"] == "RUN" and alive(j["pid"])]
            if len(running) < slots:
                log = open(opts.get("-o", os.devnull), "a")
                env = {**os.environ, "LSB_JOBID": str(job_id)}
                proc = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
                job.update(state="RUN", ran=True, pid=proc.pid, host=socket.gethostname())
                save(job)
                break
        time.sleep(0.2)
    say(f"<<Starting on {socket.gethostname()}>>")
    code = proc.wait()
    code = code if code >= 0 else 128 - code
    with locked():
        job = load(job_id)
        job.update(state="DONE" if code == 0 else "EXIT", exit_code=code)
        save(job)
    if code == 0:
        say("<<Job is finished>>")
    else:
        say(f"Exited with exit code {code}.")
    return code


def bkill(argv: list[str]) -> int:
    if argv[:1] == ["-J"]:
        name, which = argv[1], argv[2:]
        match = lambda j: j["name"] == name and (which in ([], ["0"]))  # noqa: E731
    else:
        ids = {int(a) for a in argv}
        match = lambda j: j["id"] in ids  # noqa: E731
    victims = []
    with locked():
        for job in jobs():
            if match(job) and job["state"] in ("PEND", "RUN"):
                job["killed"] = True
                save(job)
                victims.append(job)
    if not victims:
        say("No unfinished job found")
        return 255
    for job in victims:
        if job["state"] == "RUN" and alive(job["pid"]):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job["pid"], signal.SIGTERM)
        say(f"Job <{job['id']}> is being terminated")
    deadline = time.monotonic() + 5
    for job in victims:
        while job["state"] == "RUN" and alive(job["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        if job["state"] == "RUN" and alive(job["pid"]):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job["pid"], signal.SIGKILL)
    return 0


def bjobs(argv: list[str]) -> int:
    name = argv[argv.index("-J") + 1] if "-J" in argv else None
    for job in jobs():
        if (name is None or job["name"] == name) and job["state"] in ("PEND", "RUN"):
            if job["state"] == "RUN" and not alive(job["pid"]):
                continue
            say(str(job["id"]))
    return 0


if __name__ == "__main__":
    tool, args = sys.argv[1], sys.argv[2:]
    sys.exit({"bsub": bsub, "bkill": bkill, "bjobs": bjobs}[tool](args))
