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


# ==================================================================================
# CI (issue 21): with CI=true a skipped test fails the run. Slurm, tmpfs, Chromium and data
#   tests skip on a laptop without them and say why; on CI a skip would be a green run that
#   did not test, so every skip is listed (which and why) and the session exits 1.
# `fafb_zarr` (session): a FAFB-style zarr container made here with zarr itself (not with
#   marlseg's writer): `volumes/raw`, uint8, 64^3 chunks, `resolution` 10 nm, offset 0.
# ==================================================================================
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
_ci_skips: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _ci_skips.append((report.nodeid, str(reason).removeprefix("Skipped: ")))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if CI and _ci_skips:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if CI and _ci_skips:
        terminalreporter.section("CI=true: skipped tests fail the run", sep="=", red=True)
        for nodeid, reason in _ci_skips:
            terminalreporter.line(f"SKIPPED (fails on CI) {nodeid}: {reason}", red=True)


@pytest.fixture(scope="session")
def fafb_zarr(tmp_path_factory: pytest.TempPathFactory):
    import h5py
    import numpy as np
    import zarr

    from marlseg.config import DatasetRef

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with h5py.File(os.path.join(repo, "data", "fib_train.h5"), "r") as f:
        raw = f["volumes/raw"][:]
    data = np.concatenate([raw, raw[::-1]], axis=0)[:, :96, :160]  # 100 x 96 x 160
    path = tmp_path_factory.mktemp("fafb") / "raw.zarr"
    ds = zarr.open_group(str(path), mode="w").create_dataset(
        "volumes/raw", data=data, chunks=(64, 64, 64)
    )
    ds.attrs.update({"resolution": [10, 10, 10], "offset": [0, 0, 0]})
    return DatasetRef(path=path, dataset="volumes/raw")


# ================================================================================== end CI
