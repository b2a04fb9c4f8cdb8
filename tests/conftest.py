"""Shared pytest fixtures. Each section belongs to one part of the package; add yours below."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

# ==================================================================================
# MongoDB (marlseg.db) -- fixtures for the RAG store
#
# `mongo_uri` (session): a REAL MongoDB-compatible server (SecantusDB's secantusd-py, as
#   marlseg embeds it, with --sync-on-commit) started once per test session in a temporary
#   directory and stopped at the end. Set MARLSEG_TEST_MONGODB_URI to test against another
#   server (e.g. a real mongod) instead. Never mongomock: idempotency, unique indexes and
#   durability are properties of the server.
# `graph_db` (function): a MongoDbGraphDatabase on a fresh database name, so tests never see
#   each other's rows. The databases die with the session server's temporary directory
#   (dropping them is slow on SecantusDB: ~20 ms per row); on an external server they are
#   dropped after the test.
# ==================================================================================


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("MARLSEG_TEST_MONGODB_URI")
    if external:
        yield external
        return
    from marlseg.db.server import EmbeddedServer

    server = EmbeddedServer(tmp_path_factory.mktemp("mongodb"))
    server.start()
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture
def graph_db(mongo_uri: str) -> Iterator:
    from marlseg.db.graph import MongoDbGraphDatabase

    name = f"test_{uuid.uuid4().hex[:12]}"
    db = MongoDbGraphDatabase(mongo_uri, name, mode="w")
    try:
        yield db
    finally:
        if os.environ.get("MARLSEG_TEST_MONGODB_URI"):
            db.client.drop_database(name)
        db.close()


# ================================================================================== end MongoDB
