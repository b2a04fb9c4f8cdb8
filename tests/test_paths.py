"""Paths in configs: relative to the config file (every path field), shipped configs work from
any directory and stay inside the repo, and the shipped checkpoint survives a real install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from marlseg.config import Config, load_config
from marlseg.paths import path_fields

ROOT = Path(__file__).resolve().parents[1]
GENERATED: set = set()  # every input a shipped config reads is in the repo
"""Inputs a documented command makes (``scripts/fafb_zarr.py``), not shipped."""


def _values(data, names):
    """The values of dotted ``names`` (``[]``: every list item) present in ``data``."""
    out = []
    for name in names:
        nodes = [data]
        for part in name.split("."):
            nxt = []
            for node in nodes:
                if not isinstance(node, dict) or node.get(part.removesuffix("[]")) is None:
                    continue
                v = node[part.removesuffix("[]")]
                nxt.extend(v if part.endswith("[]") else [v])
            nodes = nxt
        out.extend((name, Path(v)) for v in nodes)
    return out


def test_every_path_field_is_found():
    names = set(path_fields(Config))
    for expected in ("run.dir", "raw.path", "train.raw[].path", "train.export", "weak_labels.tags",
                     "predict.checkpoint", "train.init_encoder", "weak_labels.detector.checkpoint"):  # fmt: skip
        assert expected in names


def test_relative_paths_follow_the_config_file_set_values_the_cwd(tmp_path, monkeypatch):
    conf = tmp_path / "cfgs" / "run.json"
    conf.parent.mkdir()
    conf.write_text(
        json.dumps(
            {
                "run": {"dir": "out"},
                "raw": {"path": "../vol.h5", "dataset": "raw"},
                "train": {
                    "raw": [{"path": "a.h5", "dataset": "r"}],
                    "labels": [{"path": "a.h5", "dataset": "l"}],
                    "export": "m.pt",
                },
                "weak_labels": {"tags": "tags.csv"},
                "pretrain": {"raw": [{"path": "/abs/x.zarr", "dataset": "r"}]},
            }
        )
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    c = load_config(conf, ["gt.path=g.h5", "gt.dataset=l"])
    assert c.run.dir == conf.parent / "out"
    assert c.raw.path == tmp_path / "vol.h5"
    assert c.train.raw[0].path == conf.parent / "a.h5"
    assert c.train.export == conf.parent / "m.pt"
    assert c.weak_labels.tags == conf.parent / "tags.csv"
    assert c.pretrain.raw[0].path == Path("/abs/x.zarr")
    assert c.gt.path == Path("g.h5")  # --set: the working directory, made absolute for workers
    assert c.resolved().gt.path == elsewhere / "g.h5"
    assert c.resolved().train.export == conf.parent / "m.pt"


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.json")), ids=lambda p: p.stem)
def test_shipped_config_works_from_any_directory(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = load_config(config)
    data = c.model_dump(mode="json")
    for name, path in _values(data, path_fields(Config)):
        assert path.is_absolute(), (name, path)
        assert path.resolve().is_relative_to(ROOT), (
            f"{config.name}: {name} = {path} leaves the repo"
        )
        is_output = (
            name == "run.dir" or name == "train.export" or path.is_relative_to(ROOT / "runs")
        )
        if not is_output and path not in GENERATED:
            assert path.exists(), f"{config.name}: {name} = {path} is missing"


def test_pretrain_medulla_input_is_shipped_in_the_repo():
    c = load_config(ROOT / "configs" / "pretrain_medulla.json")
    assert [r.path for r in c.pretrain.raw] == [ROOT / "data" / "medulla_raw_crop.zarr"]
    from marlseg.volumes import open_volume

    a = open_volume(c.pretrain.raw[0])
    assert tuple(a.roi.shape / a.voxel_size) == (128, 250, 250)


@pytest.mark.slow
def test_non_editable_install_finds_the_shipped_checkpoint(tmp_path):
    import shutil

    src = tmp_path / "src"  # a copy, so that the build leaves nothing in the repo
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("marlseg", "networks", "gp_pipelines", "db", "checkpoints"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    built = subprocess.run(
        [*pip, "--target", str(target), str(src)], capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr[-2000:]
    probe = (
        "from marlseg.inference import SHIPPED_CHECKPOINT as c, checkpoint_path; "
        "print(c); assert checkpoint_path(None).is_file()"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert Path(run.stdout.strip()).is_relative_to(target)  # the installed copy, not the repo's
    # every package of the source tree is installed (a package missing from setup.cfg's list
    # works in an editable install and fails in this one)
    packages = [
        ".".join(("marlseg", *d.relative_to(src / top).parts))
        if top == "marlseg"
        else ".".join(("marlseg", top, *d.relative_to(src / top).parts))
        for top in ("marlseg", "networks", "gp_pipelines", "db")
        for d in [src / top, *sorted(p.parent for p in (src / top).rglob("*/__init__.py"))]
    ]
    probe = (
        "import importlib, sys; [print(importlib.import_module(m).__file__) for m in sys.argv[1:]]"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe, *packages],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    files = run.stdout.split()
    assert len(files) == len(packages) > 5
    outside = [f for f in files if not Path(f).is_relative_to(target)]
    assert not outside, f"not installed: {outside}"
