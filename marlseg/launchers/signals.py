"""How interruptions reach launchers: SIGTERM and SIGHUP in a worker slot (cancel the job
like Ctrl-C), the death of the scheduler process that started a slot, and SIGTERM in the
scheduler while ``daisy.run_blockwise`` runs.

Imports only the standard library.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP in a worker slot: handled like Ctrl-C (cancel the job, re-raise)."""


@contextlib.contextmanager
def slot_signals() -> Iterator[None]:
    """In a worker slot: SIGTERM and SIGHUP raise like Ctrl-C, so the job gets cancelled."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupted(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, raise_interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def wait_worker(proc: subprocess.Popen, poll_s: float = 0.5, stop=None) -> int | None:
    """Wait for ``proc``; ``None`` when ``stop()`` became true first. Raises ``Interrupted``
    when the process that started this slot (the scheduler) has died: nobody will ever
    collect this worker, so it must not keep a job."""
    parent = os.getppid()
    while True:
        try:
            return proc.wait(timeout=poll_s)
        except subprocess.TimeoutExpired:
            pass
        if os.getppid() != parent:
            raise Interrupted("the scheduler process died")
        if stop is not None and stop():
            return None


@contextlib.contextmanager
def sigterm_aborts_run(cancel) -> Iterator[None]:
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
