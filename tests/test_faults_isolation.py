"""Fault suite, issue 21: runs that share a MongoDB server, and a password-protected one.

* **shared database**: run A does 02 into ``db.name: shared``; run B (another run dir, other
  fragment parameters, the same name) is refused in one line naming the database and A's run
  dir, and A's nodes are untouched; A's later stages and ``--restart`` still work.
* **secret scan**: the whole chain (02-06) against a server that enforces authentication
  (``secantusd-py --auth``), the password in ``db.uri``: no file under ``run.dir``, nothing
  printed, and no ``--print-config`` holds the password; worker configs are ``0600``.

Both are recorded in ``test-artifacts/faults.json`` with the other faults.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from tests import test_postprocess_helpers as helpers
from tests.test_faults import SMALL_BLOCKS, _env, _one_line_error, record

SCRIPTS, cli, config_file = helpers.SCRIPTS, helpers.cli, helpers.config_file
done_blocks, make_config, rag_rows = helpers.done_blocks, helpers.make_config, helpers.rag_rows

pytestmark = pytest.mark.slow

PASSWORD = "Lab-Pw-7f3c9e1a"


def test_shared_database_collision_refused(tmp_path, mongo_uri):
    name = f"shared_{os.getpid()}"
    a = make_config(tmp_path / "a", mongo_uri, name, SMALL_BLOCKS)
    path_a = config_file(a, tmp_path / "a.json")
    first = cli(SCRIPTS["fragments"], path_a, env=_env())
    assert first.returncode == 0, first.stderr[-3000:]
    nodes_a, _ = rag_rows(a)
    assert len(nodes_a["id"]) > 0

    b = make_config(tmp_path / "b", mongo_uri, name, SMALL_BLOCKS, "fragments.min_seed_distance=4")
    refused = cli(SCRIPTS["fragments"], config_file(b, tmp_path / "b.json"), env=_env())
    assert refused.returncode == 2, refused.stderr[-3000:]
    line = _one_line_error(refused.stderr, "db.name", name, str(tmp_path / "a"))
    nodes_after, _ = rag_rows(a)
    for k in nodes_a:  # nothing cleared, nothing written
        np.testing.assert_array_equal(nodes_a[k], nodes_after[k])
    assert not (tmp_path / "b" / "fragments.zarr").exists()

    # the owner goes on: its next stage, and a restart of 02
    agglomerate = cli(SCRIPTS["agglomerate"], path_a, env=_env())
    assert agglomerate.returncode == 0, agglomerate.stderr[-3000:]
    restart = cli(SCRIPTS["fragments"], path_a, "--restart", env=_env())
    assert restart.returncode == 0, restart.stderr[-3000:]
    assert done_blocks(tmp_path / "a", "fragments") == 8

    # B without an explicit db.name gets a database of its own and runs
    data = b.model_dump(mode="json")
    del data["db"]["name"]
    path_b = tmp_path / "b_own.json"
    path_b.write_text(json.dumps(data))
    own = cli(SCRIPTS["fragments"], path_b, env=_env())
    assert own.returncode == 0, own.stderr[-3000:]
    record("shared_database_collision", 1, True, error=line)


@pytest.fixture
def auth_server(tmp_path):
    """A server that enforces SCRAM authentication, with one user ``lab``."""
    import pymongo

    from marlseg.db import EmbeddedServer

    storage = tmp_path / "authdb"
    setup = EmbeddedServer(storage)
    setup.start()
    client = pymongo.MongoClient(setup.uri)
    client.admin.command("createUser", "lab", pwd=PASSWORD, roles=["root"])
    client.close()
    setup.stop()
    server = EmbeddedServer(storage, extra_args=("--auth",))
    server.start()
    host = server.uri.split("//", 1)[1].split("/", 1)[0]
    try:
        with pytest.raises(pymongo.errors.OperationFailure):  # it does enforce the password
            pymongo.MongoClient(server.uri).x.y.insert_one({})
        yield f"mongodb://lab:{PASSWORD}@{host}/?authSource=admin&directConnection=true"
    finally:
        server.stop()


def _hits(root: Path, secret: bytes) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                if secret in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                pass
    return hits


def test_no_secret_on_disk_or_in_output(tmp_path, auth_server):
    run_dir = tmp_path / "run"
    config = make_config(run_dir, auth_server, "secret_scan", SMALL_BLOCKS)
    path = config_file(config, tmp_path / "config.json")  # the user's own file, outside run.dir
    printed = cli("run.py", path, "--print-config", env=_env())
    assert printed.returncode == 0, printed.stderr[-2000:]
    chain = cli("run.py", path, env=_env())
    assert chain.returncode == 0, chain.stderr[-3000:]
    assert (run_dir / "scores.json").is_file()
    secret = PASSWORD.encode()
    output = printed.stdout + printed.stderr + chain.stdout + chain.stderr
    files = _hits(run_dir, secret)
    assert PASSWORD not in output
    assert files == []
    configs = sorted(run_dir.glob("tracking/*/worker_config.json"))
    assert len(configs) == 4  # fragments, agglomerate, extract, evaluate
    for c in configs:
        assert stat.S_IMODE(c.stat().st_mode) == 0o600, c
    scanned = sum(1 for p in run_dir.rglob("*") if p.is_file())
    record("secret_scan_password_uri", 1, True, files_scanned=scanned, hits=0)


def test_block_shape_change_refused_with_a_hint_that_works(tmp_path, mongo_uri):
    import re
    import shutil

    config = make_config(tmp_path / "run", mongo_uri, f"blocks_{os.getpid()}", SMALL_BLOCKS)
    assert helpers.run_stage(config, "fragments").blocks_done == 8
    other = "fragments.block_shape=[250, 1000, 1000]"
    path = config_file(config, tmp_path / "config.json")
    refused = cli(SCRIPTS["fragments"], path, "--set", other, env=_env())
    assert refused.returncode == 2, refused.stderr[-3000:]
    line = _one_line_error(refused.stderr, "fragments.fragments", "--restart")
    # follow the hint to the letter: delete what it names, re-run with --restart
    doomed = Path(re.search(r"delete (\S+) and re-run with --restart", line).group(1))
    assert doomed.is_dir() and doomed.is_relative_to(tmp_path / "run")
    shutil.rmtree(doomed)
    again = cli(SCRIPTS["fragments"], path, "--set", other, "--restart", env=_env())
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summaries" / "fragments.json").read_text())
    assert summary["blocks_done"] == summary["blocks_total"] == 4
    record("block_shape_changed", 1, True, error=line)
