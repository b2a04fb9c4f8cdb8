"""The embedded MongoDB-compatible server used when no URI is configured.

With neither ``db.uri`` nor ``MARLSEG_MONGODB_URI`` set, marlseg runs its own server:
SecantusDB's ``secantusd-py`` (a WiredTiger-backed server speaking the MongoDB wire protocol),
with its data under ``<run.dir>/db``. Three rules make that safe to rely on:

* **Durable acknowledgements.** The server runs with ``--sync-on-commit``: every commit is
  fsynced before the write is acknowledged. Without it a ``kill -9`` loses acknowledged
  writes, and a block marked done would point at rows that are gone.
* **One server per storage directory, found again.** ``<storage_dir>/server.json`` records
  ``{pid, port, host}``. :meth:`EmbeddedServer.start` reuses a server already serving the
  directory (pid alive, ``ping`` answers, and the answering server reports that pid), so a
  later run, a second stage, or a worker finds the same graph instead of failing on
  WiredTiger's lock. A file lock serialises concurrent starts on one directory.
* **Only the starter stops it.** :meth:`EmbeddedServer.stop` is a no-op on a reused server.

For cluster use (workers on other nodes) pass ``host="0.0.0.0"`` (``db.bind``): the server
listens on all interfaces and the URI handed out names this machine's host name. URIs always
carry ``directConnection=true``, because the server advertises itself as a one-member replica
set under its *bind* address, which a remote client could not resolve.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from .errors import DbError

if TYPE_CHECKING:
    from .graph import MongoDbGraphDatabase

logger = logging.getLogger(__name__)

SERVER_SCRIPT = "secantusd-py"
INFO_FILE = "server.json"
LOG_FILE = "server.log"
LOCK_FILE = "server.lock"
CONFIG_FILE = "secantusd.toml"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def _server_command() -> list[str]:
    """How to run the server: the console script next to this interpreter (a venv's bin),
    else one on ``PATH``, else the module itself. No absolute path is assumed."""
    beside = Path(sys.executable).parent / SERVER_SCRIPT
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which(SERVER_SCRIPT)
    if found:
        return [found]
    return [sys.executable, "-m", "secantus"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _free_port(host: str) -> int:
    """A port the OS says is free on ``host`` now. There is a window before the server binds
    it; :meth:`EmbeddedServer.start` retries with a new port if the bind fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host or "0.0.0.0", 0))
        return int(s.getsockname()[1])


def _connect_host(bind: str) -> str:
    """The host name clients use: the bind address itself, or for a wildcard bind this
    machine's name so that workers on other nodes can connect."""
    if bind in WILDCARD_HOSTS:
        return socket.gethostname()
    return bind


def _uri(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"mongodb://{shown}:{port}/?directConnection=true"


def _serving_pid(host: str, port: int, timeout_ms: int = 1000) -> int | None:
    """The pid reported by the server answering at ``host:port`` (``None``: nobody answers).
    ``-1`` when something answers but reports no pid."""
    client: MongoClient = MongoClient(
        _uri(host, port),
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms, 5000),
    )
    try:
        client.admin.command("ping")
        try:
            return int(client.admin.command("serverStatus").get("pid", -1))
        except PyMongoError:
            return -1
    except PyMongoError:
        return None
    finally:
        client.close()


@contextlib.contextmanager
def _dir_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (held while checking for / starting a server)."""
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class EmbeddedServer:
    """A ``secantusd-py`` server over ``storage_dir``: started, or found already serving it.

    ``host`` is the address to listen on (``db.bind``; ``127.0.0.1`` keeps it private to this
    machine, ``0.0.0.0`` lets cluster workers connect). ``port=None`` picks a free one.

    Usage::

        with EmbeddedServer(run_dir / "db") as server:
            db = MongoDbGraphDatabase(server.uri, "demo")
    """

    def __init__(
        self,
        storage_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        startup_timeout_s: float = 60.0,
        sync_on_commit: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.storage_dir = Path(storage_dir)
        self.bind = host
        self.requested_port = port
        self.startup_timeout_s = startup_timeout_s
        self.sync_on_commit = sync_on_commit
        self.extra_args = tuple(extra_args)
        self.host = _connect_host(host)
        self.port: int | None = None
        self.pid: int | None = None
        self.started = False  # True only if THIS object launched the process
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ paths and URI
    @property
    def info_path(self) -> Path:
        return self.storage_dir / INFO_FILE

    @property
    def log_path(self) -> Path:
        return self.storage_dir / LOG_FILE

    @property
    def uri(self) -> str:
        """The URI clients connect with (valid after :meth:`start`)."""
        if self.port is None:
            raise DbError(f"embedded MongoDB server for {self.storage_dir} is not started")
        return _uri(self.host, self.port)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> bool:
        """Make sure a server serves ``storage_dir``; returns ``True`` if this call launched
        one, ``False`` if one was already serving it (then :meth:`stop` leaves it alone).

        Raises :class:`DbError` if the server does not come up (the message names the log)."""
        if self.port is not None and self.is_running():
            return False
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        with _dir_lock(self.storage_dir / LOCK_FILE):
            if self._reuse():
                return False
            last_error: DbError | None = None
            for _attempt in range(3):
                try:
                    self._launch()
                    return True
                except _PortTaken as e:  # lost the race for the free port: pick another
                    last_error = e.error
            assert last_error is not None
            raise last_error

    def _reuse(self) -> bool:
        info = self.read_info(self.storage_dir)
        if info is None:
            return False
        pid, port, host = int(info["pid"]), int(info["port"]), str(info["host"])
        if not _pid_alive(pid):
            return False
        answer = _serving_pid(host, port)
        if answer is None or (answer != -1 and answer != pid):
            return False
        running_bind = str(info.get("bind", host))
        if running_bind != self.bind and running_bind not in WILDCARD_HOSTS:
            raise DbError(
                f"an embedded MongoDB server already serves {self.storage_dir} on "
                f"{running_bind}:{port} (pid {pid}) but {self.bind} was asked for: "
                f"stop it (kill {pid}) or set db.bind to {running_bind}"
            )
        self.host, self.port, self.pid = host, port, pid
        self.started = False
        logger.info(
            "reusing embedded MongoDB server pid %d at %s (data %s)",
            pid,
            self.uri,
            self.storage_dir,
        )
        return True

    def _launch(self) -> None:
        port = self.requested_port or _free_port(self.bind)
        config = self.storage_dir / CONFIG_FILE
        if not config.exists():
            # an explicit (empty) config disables the server's auto-discovery of a stray
            # ./secantusd.toml or ~/.secantus/secantusd.toml that could change its behaviour
            config.write_text("# marlseg embedded server: all settings are on the command line\n")
        cmd = [
            *_server_command(),
            "--config", str(config),
            "--host", self.bind,
            "--port", str(port),
            "--storage-path", str(self.storage_dir / "data"),
            *(["--sync-on-commit"] if self.sync_on_commit else []),
            *self.extra_args,
        ]  # fmt: skip
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            log.write(
                f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode()
            )
            log.flush()
            # own session: a Ctrl-C meant for the pipeline must not kill the server under a
            # block that is still writing; stop() ends it
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._proc = proc
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            code = proc.poll()
            if code is not None:
                tail = self._log_tail(log_offset)
                err = DbError(
                    f"embedded MongoDB server ({SERVER_SCRIPT}) for {self.storage_dir} exited "
                    f"with code {code} at startup: {tail or 'no output'}; see {self.log_path}"
                )
                self._proc = None
                if "address already in use" in tail.lower() and self.requested_port is None:
                    raise _PortTaken(err)
                raise err
            if _serving_pid(self.host, port, timeout_ms=300) in (proc.pid, -1):
                break  # ours answers (another server on a raced port would report its pid)
            if time.monotonic() > deadline:
                self._terminate(proc)
                self._proc = None
                raise DbError(
                    f"embedded MongoDB server ({SERVER_SCRIPT}) for {self.storage_dir} did not "
                    f"answer on {self.host}:{port} within {self.startup_timeout_s:g} s; "
                    f"see {self.log_path}"
                )
            time.sleep(0.1)
        self.port, self.pid, self.started = port, proc.pid, True
        info = {
            "pid": proc.pid,
            "port": port,
            "host": self.host,
            "bind": self.bind,
            "storage_path": str(self.storage_dir / "data"),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        tmp = self.info_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info, indent=1) + "\n")
        os.replace(tmp, self.info_path)  # readers never see half a file
        logger.info(
            "started embedded MongoDB server pid %d at %s (data %s, log %s)",
            proc.pid, self.uri, self.storage_dir, self.log_path,
        )  # fmt: skip

    def _log_tail(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                lines = [ln for ln in fh.read().decode(errors="replace").splitlines() if ln]
        except OSError:
            return ""
        lines = [ln for ln in lines if not ln.startswith("--- ")]
        return " ".join(lines[-1].split())[:300] if lines else ""

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # the server checkpoints and closes cleanly
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()  # safe: --sync-on-commit made every acknowledged write durable
            proc.wait()

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the server if this object started it; otherwise do nothing (someone else's
        run may be using it)."""
        if not self.started or self._proc is None:
            return
        self._terminate(self._proc, timeout_s)
        logger.info("stopped embedded MongoDB server pid %d", self._proc.pid)
        with contextlib.suppress(OSError, ValueError, KeyError):
            info = self.read_info(self.storage_dir)
            if info is not None and int(info["pid"]) == self._proc.pid:
                self.info_path.unlink()
        self._proc = None
        self.started = False
        self.port = None
        self.pid = None

    def is_running(self) -> bool:
        """Whether a server answers at this object's host and port."""
        return self.port is not None and _serving_pid(self.host, self.port) is not None

    @staticmethod
    def read_info(storage_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
        """The ``server.json`` of ``storage_dir`` (``None`` if absent or unreadable)."""
        path = Path(storage_dir) / INFO_FILE
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or not {"pid", "port", "host"} <= info.keys():
            return None
        return info

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port else "not started"
        return f"EmbeddedServer({str(self.storage_dir)!r}, {where}, started={self.started})"


class _PortTaken(Exception):
    def __init__(self, error: DbError) -> None:
        super().__init__(str(error))
        self.error = error


def open_graph_db(
    uri: str | None,
    name: str,
    run_dir: str | os.PathLike[str],
    *,
    bind: str = "127.0.0.1",
    timeout_ms: int | None = None,
    **graph_kwargs: Any,
) -> tuple[MongoDbGraphDatabase, EmbeddedServer | None]:
    """The RAG database ``name``, and the embedded server it lives on (``None`` if a URI was
    configured).

    ``uri``: the config's ``db.uri``; ``None`` falls back to ``$MARLSEG_MONGODB_URI``, then to
    an embedded server over ``<run_dir>/db`` (started, or reused if already serving). The
    caller stops the returned server when done (a no-op if it was reused). Extra keyword
    arguments go to :class:`~marlseg.db.graph.MongoDbGraphDatabase`.
    """
    from .connection import DEFAULT_TIMEOUT_MS, resolve_uri
    from .graph import MongoDbGraphDatabase

    resolved = resolve_uri(uri)
    server: EmbeddedServer | None = None
    if resolved is None:
        server = EmbeddedServer(Path(run_dir) / "db", host=bind)
        server.start()
        resolved = server.uri
    try:
        db = MongoDbGraphDatabase(
            resolved, name, timeout_ms=timeout_ms or DEFAULT_TIMEOUT_MS, **graph_kwargs
        )
    except BaseException:
        if server is not None:
            server.stop()
        raise
    return db, server
