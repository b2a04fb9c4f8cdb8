"""Issue 21, fast half: a RAG belongs to one run, no secret is printed or written, cluster
workers are not pointed at a loopback database. (The end-to-end half, with real stages, is
in ``tests/test_faults_isolation.py``.)"""

from __future__ import annotations

import json
import os
import stat
import uuid

import pytest

from marlseg.config import dump_config, load_config
from marlseg.errors import ConfigError
from marlseg.files import write_atomic
from marlseg.ownership import RUN_ID_FILE, default_db_name, run_identity

SECRET = "Sup3r-Secret-pw"


def _config(run_dir, *sets: str):
    return load_config(None, [f"run.dir={run_dir}", *sets])


# ----------------------------------------------------------------------------- db.name default
def test_default_db_name_is_one_per_run_dir(tmp_path):
    a = _config(tmp_path / "runs" / "a").db.name
    b = _config(tmp_path / "runs" / "b").db.name
    other_a = _config(tmp_path / "elsewhere" / "a").db.name
    assert len({a, b, other_a}) == 3  # same basename, other parent: still another database
    assert a == _config(tmp_path / "runs" / "a").db.name  # stable
    assert a.startswith("marlseg_a_")
    assert _config(tmp_path / "a", "db.name=mine").db.name == "mine"  # explicit wins
    odd = default_db_name(tmp_path / ("x. $/y" + "z" * 100))
    assert len(odd) <= 64 and not set(odd) & set('/\\. "$')


def test_run_identity_is_created_once(tmp_path):
    first = run_identity(tmp_path / "run")
    assert first == run_identity(tmp_path / "run")
    assert first["dir"] == str((tmp_path / "run").absolute())
    assert json.loads((tmp_path / "run" / RUN_ID_FILE).read_text()) == first
    assert run_identity(tmp_path / "other")["id"] != first["id"]
    (tmp_path / "run" / RUN_ID_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=RUN_ID_FILE):
        run_identity(tmp_path / "run")


# ----------------------------------------------------------------------------- ownership
def test_another_runs_rag_is_refused_and_untouched(tmp_path, mongo_uri):
    import numpy as np

    from marlseg.rag import open_rag

    name = f"shared_{uuid.uuid4().hex[:8]}"
    a = _config(tmp_path / "a", f"db.name={name}", f"db.uri={mongo_uri}")
    b = _config(tmp_path / "b", f"db.name={name}", f"db.uri={mongo_uri}")
    rag = open_rag(a)
    rag.write_nodes(np.array([1, 2], np.uint64), np.zeros((2, 3)), np.array([5, 6]))
    rag.close()
    with pytest.raises(ConfigError) as e:
        open_rag(b)
    line = e.value.line()
    assert line.startswith("db.name: ") and "\n" not in line
    assert name in line and str(tmp_path / "a") in line
    again = open_rag(a)  # the owner still opens it (every stage, --restart included)
    assert again.count_nodes() == 2
    again.close()
    mine = open_rag(_config(tmp_path / "b", f"db.uri={mongo_uri}"))  # default name: its own
    assert mine.db_name != name and mine.count_nodes() == 0
    mine.close()


def test_a_recreated_run_dir_takes_over_its_predecessors_rag(tmp_path, mongo_uri, capsys):
    import shutil

    from marlseg.rag import open_rag

    name = f"again_{uuid.uuid4().hex[:8]}"
    a = _config(tmp_path / "a", f"db.name={name}", f"db.uri={mongo_uri}")
    open_rag(a).close()
    shutil.rmtree(tmp_path / "a")  # the run is gone; a new one starts in the same place
    open_rag(a).close()
    assert "takes it over" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="belongs to the run in"):  # others still refused
        open_rag(_config(tmp_path / "b", f"db.name={name}", f"db.uri={mongo_uri}"))


def test_a_rag_without_owner_is_claimed_by_the_first_run(tmp_path, graph_db):
    from marlseg.rag import open_rag

    a = _config(tmp_path / "a", f"db.name={graph_db.db_name}", f"db.uri={graph_db.uri}")
    b = _config(tmp_path / "b", f"db.name={graph_db.db_name}", f"db.uri={graph_db.uri}")
    open_rag(a).close()
    with pytest.raises(ConfigError, match="belongs to the run in"):
        open_rag(b)


# ----------------------------------------------------------------------------- secrets
def test_print_config_masks_the_password(tmp_path, capsys):
    from marlseg.cli import main

    uri = f"mongodb://lab:{SECRET}@db.example:27017/?authSource=admin"
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"db": {"uri": uri}}))
    assert main("fragments", [str(path), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert json.loads(out)["db"]["uri"] == "mongodb://lab:***@db.example:27017/?authSource=admin"
    assert SECRET not in dump_config(_config(tmp_path, f"db.uri={uri}"))


def test_worker_config_leaves_a_password_uri_to_the_environment(tmp_path):
    from marlseg.db import ENV_URI
    from marlseg.stages.fragments import FragmentsStage

    stage = FragmentsStage(_config(tmp_path, f"db.uri=mongodb://lab:{SECRET}@h:1/"))
    stage._live_uri = f"mongodb://lab:{SECRET}@h:1/"
    assert stage.worker_config().db.uri is None  # workers resolve MARLSEG_MONGODB_URI
    stage._live_uri = "mongodb://127.0.0.1:5/?directConnection=true"  # embedded: no secret
    assert stage.worker_config().db.uri == stage._live_uri
    assert ENV_URI not in os.environ or SECRET not in os.environ[ENV_URI]


def test_write_atomic_private_file_is_0600(tmp_path):
    os.umask(0o022)
    path = tmp_path / "worker_config.json"
    path.write_text("old")
    path.chmod(0o644)
    write_atomic(path, "new", private=True)
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_atomic(tmp_path / "params.json", "{}")
    assert stat.S_IMODE((tmp_path / "params.json").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.json", "worker_config.json"]


# ----------------------------------------------------------------------------- cluster + embedded
@pytest.mark.parametrize("kind", ["slurm", "lsf"])
def test_cluster_workers_refused_against_a_loopback_embedded_db(tmp_path, monkeypatch, kind):
    from marlseg.rag import check_reachable

    monkeypatch.delenv("MARLSEG_MONGODB_URI", raising=False)
    config = _config(tmp_path, f"workers.type={kind}")
    with pytest.raises(ConfigError) as e:
        check_reachable(config, config.workers.type)
    assert e.value.line().startswith("db.bind: ") and "0.0.0.0" in e.value.line()
    check_reachable(_config(tmp_path, f"workers.type={kind}", "db.bind=0.0.0.0"), kind)
    check_reachable(_config(tmp_path, f"workers.type={kind}", "db.uri=mongodb://h:1/"), kind)
    check_reachable(_config(tmp_path), "local")
