"""The embedded server: start, reuse, stop only by the starter, startup failures, kill -9."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from marlseg.db import ENV_URI, DbError, EmbeddedServer, MongoDbGraphDatabase, open_graph_db
from marlseg.db.server import _uri


def test_embedded_server_lifecycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No URI configured: a server under run_dir/db; reused while it runs; stopped only by
    its starter; a later run on the same run dir finds its graph again."""
    monkeypatch.delenv(ENV_URI, raising=False)
    run_dir = tmp_path / "run"
    db, server = open_graph_db(None, "demo", run_dir)
    assert server is not None and server.started
    info = json.loads((run_dir / "db" / "server.json").read_text())
    assert info["pid"] == server.pid and info["port"] == server.port
    assert info["host"] == "127.0.0.1" and "directConnection=true" in server.uri
    db.write_nodes([1, 2, 3], np.zeros((3, 3)), [1, 1, 1])
    db.close()

    other = EmbeddedServer(run_dir / "db")
    assert other.start() is False  # reused, not a second server on the same files
    assert other.uri == server.uri and not other.started
    other.stop()  # not its server: a no-op
    assert server.is_running()

    server.stop()
    assert not server.is_running() and not (run_dir / "db" / "server.json").exists()

    db, again = open_graph_db(None, "demo", run_dir)  # a later run
    assert again is not None and again.started
    assert db.count_nodes() == 3
    db.close()
    again.stop()
    assert "server.log" in os.listdir(run_dir / "db")


def test_open_graph_db_with_a_configured_uri(
    mongo_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, server = open_graph_db(mongo_uri, "configured", tmp_path)
    assert server is None
    db.close()
    monkeypatch.setenv(ENV_URI, mongo_uri)
    db, server = open_graph_db(None, "from_env", tmp_path)
    assert server is None and not (tmp_path / "db").exists()
    db.close()


def test_startup_failure_names_the_log(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path, extra_args=("--cache-size", "nonsense"))
    with pytest.raises(DbError) as info:
        server.start()
    msg = str(info.value)
    assert "\n" not in msg and "exited with code" in msg and str(tmp_path / "server.log") in msg
    assert not server.started


def test_wildcard_bind_hands_out_the_host_name(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path, host="0.0.0.0")
    assert server.host == socket.gethostname() and server.bind == "0.0.0.0"
    assert _uri("::1", 5) == "mongodb://[::1]:5/?directConnection=true"


# ------------------------------------------------------------------------ kill -9


def _writer(uri: str, ack_path: str, batch: int) -> None:
    """Writes batch after batch of nodes; after each acknowledged write, records its number
    (fsynced) in ack_path. Stops when the server goes away."""
    db = MongoDbGraphDatabase(uri, "durable", timeout_ms=2000)
    with open(ack_path, "a") as ack:
        for k in range(100_000):
            ids = np.arange(k * batch, (k + 1) * batch) + 1
            try:
                db.write_nodes(ids, np.zeros((batch, 3)), np.full(batch, k))
            except DbError:
                return
            ack.write(f"{k}\n")
            ack.flush()
            os.fsync(ack.fileno())


@pytest.mark.slow
def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    storage = tmp_path / "db"
    server = EmbeddedServer(storage)
    server.start()
    db = MongoDbGraphDatabase(server.uri, "durable")  # created (and indexed) up front
    db.close()
    ack_path = tmp_path / "acks"
    ack_path.touch()
    batch = 200
    proc = mp.get_context("spawn").Process(target=_writer, args=(server.uri, str(ack_path), batch))
    proc.start()
    deadline = time.monotonic() + 60
    while len(ack_path.read_text().split()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)  # mid-write: the writer is in its next batch
    proc.join(60)
    assert proc.exitcode == 0
    acked = [int(k) for k in ack_path.read_text().split()]
    assert len(acked) >= 3 and acked == list(range(len(acked)))

    # stale server.json (dead pid): a new server on the same files, not a reuse
    again = EmbeddedServer(storage)
    assert again.start() is True and again.pid != server.pid
    try:
        db = MongoDbGraphDatabase(again.uri, "durable")
        nodes = db.read_nodes_in_roi(None, attrs=["size"])
        ids = nodes["id"].astype(np.int64)
        assert len(np.unique(ids)) == len(ids)  # nothing twice
        want = np.arange(1, (acked[-1] + 1) * batch + 1)
        assert np.isin(want, ids).all()  # every acknowledged row survived
        assert ids.max() <= (acked[-1] + 2) * batch  # at most the batch in flight on top
        db.close()
    finally:
        again.stop()
