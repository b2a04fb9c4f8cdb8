"""Connecting: URI resolution, password masking everywhere, one-line errors that name the host."""

from __future__ import annotations

import logging
import socket
from urllib.parse import unquote

import pymongo
import pytest

from marlseg.db import ENV_URI, DbError, MongoDbGraphDatabase, connect, mask_uri, resolve_uri
from marlseg.db.connection import redact
from marlseg.db.server import EmbeddedServer

SECRET = "Xyzzy-s3cr%40t"  # percent-encoded '@': the decoded spelling must not leak either


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("mongodb://alice:pw@db.example.org:27017", "mongodb://alice:***@db.example.org:27017"),
        ("mongodb://alice:pw@h1:1,h2:2/rag?authSource=admin", "mongodb://alice:***@h1:1,h2:2/rag?authSource=admin"),
        ("mongodb+srv://bob:p%40ss@cluster.example.org/", "mongodb+srv://bob:***@cluster.example.org/"),
        ("mongodb://carol:p@ss/w?rd@host:27017/", "mongodb://carol:***@host:27017/"),  # unescaped
        ("mongodb://host:27017/?tlsCertificateKeyFilePassword=kp", "mongodb://host:27017/?tlsCertificateKeyFilePassword=***"),
        ("mongodb://dave@host", "mongodb://dave@host"),  # no password: nothing to hide
        ("mongodb://127.0.0.1:27017/?directConnection=true", "mongodb://127.0.0.1:27017/?directConnection=true"),
    ],
)  # fmt: skip
def test_mask_uri(uri: str, masked: str) -> None:
    assert mask_uri(uri) == masked


def test_redact_removes_raw_and_decoded_password() -> None:
    uri = f"mongodb://alice:{SECRET}@host:1"
    text = f"failed for {uri}\nwith password Xyzzy-s3cr@t and {SECRET}"
    out = redact(text, uri)
    assert "Xyzzy" not in out and "\n" not in out and "alice:***@host:1" in out


def test_resolve_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_URI, raising=False)
    assert resolve_uri(None) is None  # -> embedded server
    monkeypatch.setenv(ENV_URI, "mongodb://from-env:1")
    assert resolve_uri(None) == "mongodb://from-env:1"
    assert resolve_uri("mongodb://from-config:2") == "mongodb://from-config:2"


def test_unreachable_server_error_is_one_masked_line(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    uri = f"mongodb://alice:{SECRET}@127.0.0.1:{port}/?authSource=admin"
    caplog.set_level(logging.DEBUG)
    for attempt in (
        lambda: connect(uri, timeout_ms=300),
        lambda: MongoDbGraphDatabase(uri, "rag", timeout_ms=300),
    ):
        with pytest.raises(DbError) as info:
            attempt()
        msg = str(info.value)
        assert msg.startswith(f"cannot reach MongoDB at mongodb://alice:***@127.0.0.1:{port}")
        assert "timed out after 0.3 s" in msg and ENV_URI in msg and "db.uri" in msg
        assert "\n" not in msg and "Xyzzy" not in msg and "s3cr@t" not in msg
        assert info.value.__suppress_context__  # no driver traceback chained to it
    assert "Xyzzy" not in caplog.text


@pytest.mark.parametrize(
    "uri",
    [
        f"mongodb://alice:{SECRET}@db.example.org:notaport",
        f"mongodb://alice:{SECRET}@db.example.org:27017/?tls=maybe",
        "postgres://db.example.org:5432",
    ],
)
@pytest.mark.filterwarnings("ignore:The value of tls")
def test_bad_uri_is_one_line_naming_host(uri: str) -> None:
    with pytest.raises(DbError) as info:
        connect(uri, timeout_ms=300)
    msg = str(info.value)
    assert "\n" not in msg and "Xyzzy" not in msg and "db.example.org" in msg
    assert ENV_URI in msg


@pytest.mark.slow
def test_failed_authentication(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    """A server with --auth: a wrong password is one masked line; the right one works."""
    caplog.set_level(logging.DEBUG)
    with EmbeddedServer(tmp_path / "setup") as server:
        client = pymongo.MongoClient(server.uri)
        client.admin.command("createUser", "alice", pwd=unquote(SECRET), roles=["root"])
        client.close()
        storage = server.storage_dir
    with EmbeddedServer(storage, extra_args=("--auth",)) as server:
        host = server.uri.split("//")[1]
        with pytest.raises(DbError) as info:
            MongoDbGraphDatabase(f"mongodb://alice:wrong-{SECRET}@{host}", "rag")
        msg = str(info.value)
        assert msg.startswith(f"authentication failed for MongoDB at mongodb://alice:***@{host}")
        assert "\n" not in msg and "Xyzzy" not in msg
        db = MongoDbGraphDatabase(f"mongodb://alice:{SECRET}@{host}", "rag")
        db.write_nodes([1], [[0, 0, 0]], [1])
        assert db.count_nodes() == 1
        db.close()
    assert "Xyzzy" not in caplog.text
