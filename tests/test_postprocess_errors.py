"""Bad input to the post-processing stages: one line on stderr starting ``error: ``, exit code
2, and nothing written (the run directory is never created). Runs the workflow scripts as a
user does; no database is needed (every problem is caught before one would start)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from funlib.geometry import Roi

from marlseg.config import DatasetRef
from marlseg.volumes import prepare_volume
from tests.test_postprocess_helpers import DATA, ROOT, SCRIPTS, cli, config_file, make_config

TINY = ROOT / "data" / "fib25_tiny.h5"


@pytest.fixture(scope="module")
def fragments_elsewhere(tmp_path_factory) -> Path:
    """A fragments volume covering fib_train (outside any run dir), for the stages after 02."""
    path = tmp_path_factory.mktemp("frags") / "fragments.zarr"
    arr = prepare_volume(
        DatasetRef(path=path, dataset="f"),
        Roi((0, 0, 0), (500, 1000, 2000)),
        (10, 10, 10),
        np.uint64,
        (250, 500, 500),
    )
    arr._source_data[:] = 1
    return path


CASES = {
    "missing affinities": (
        "fragments",
        ["fragments.boundary=null"],
        "predict.affs: no affinities",
    ),
    "affinities of the wrong dtype": (
        "fragments",
        [
            "fragments.boundary=null",
            f"fragments.affs.path={DATA}",
            "fragments.affs.dataset=volumes/labels/neuron_ids",
        ],
        "fragments.affs.dataset:",
    ),
    "missing boundary dataset": (
        "fragments",
        ["fragments.boundary.dataset=volumes/nope"],
        "fragments.boundary.dataset: no dataset",
    ),
    "block shape not whole voxels": (
        "fragments",
        ["fragments.block_shape=[255, 500, 500]"],
        "fragments.block_shape:",
    ),
    "negative context": (
        "fragments",
        ["fragments.context=[-10, 80, 80]"],
        "fragments.context:",
    ),
    "threshold above 1": (
        "segments",
        ["segments.thresholds=[0.5, 1.5]"],
        "segments.thresholds[1]:",
    ),
    "unknown merge function": (
        "agglomerate",
        ["agglomerate.merge_function=median"],
        "agglomerate.merge_function:",
    ),
    "agglomerate blocks not a multiple of fragment blocks": (
        "agglomerate",
        ["agglomerate.block_shape=[250, 500, 750]", "FRAGMENTS"],
        "agglomerate.block_shape:",
    ),
    "extract threshold without a LUT": (
        "extract",
        ["extract.threshold=0.55", "FRAGMENTS"],
        "extract.threshold: 0.55 is not one of segments.thresholds",
    ),
    "gt of another shape": (
        "evaluate",
        [f"gt.path={TINY}", "FRAGMENTS"],
        "gt:",
    ),
    "unreachable database": (
        "segments",
        ["db.uri=mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300"],
        "db.uri: cannot reach MongoDB",
    ),
}


def _argv(case: str, tmp_path: Path, fragments: Path) -> tuple[str, list[str], str, Path]:
    stage, sets, expected = CASES[case]
    run_dir = tmp_path / "run"
    frag_ref = f'fragments.fragments={{"path": "{fragments}", "dataset": "f"}}'
    sets = [frag_ref if s == "FRAGMENTS" else s for s in sets]
    path = config_file(make_config(run_dir, None, "errors"), tmp_path / "config.json")
    return stage, [str(path), *[a for s in sets for a in ("--set", s)]], expected, run_dir


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_nothing_written(
    case, tmp_path, fragments_elsewhere, capfd, monkeypatch
):
    """In process (fast): the CLI's exit code and everything written to the stderr fd."""
    from marlseg.cli import main

    monkeypatch.delenv("MARLSEG_MONGODB_URI", raising=False)
    stage, argv, expected, run_dir = _argv(case, tmp_path, fragments_elsewhere)
    code = main(stage, argv)
    lines = capfd.readouterr().err.strip().splitlines()
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert expected in lines[0], lines[0]
    assert not run_dir.exists()


@pytest.mark.parametrize("case", ["gt of another shape", "negative context"])
def test_bad_input_as_a_user_runs_it(case, tmp_path, fragments_elsewhere):
    """The same through the workflow script in a fresh interpreter."""
    stage, argv, expected, run_dir = _argv(case, tmp_path, fragments_elsewhere)
    env = {k: v for k, v in os.environ.items() if k != "MARLSEG_MONGODB_URI"}
    proc = cli(SCRIPTS[stage], Path(argv[0]), *argv[1:], env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expected in lines[0], lines[0]
    assert not run_dir.exists()
