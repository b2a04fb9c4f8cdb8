"""The command line as users meet it: --help, --print-config, --set, and one-line errors.

Every bad input ends in exactly one stderr line ``error: <field or file>: <problem>``, exit
code 2, and nothing written (the run directory is not even created).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
FIB = REPO / "data" / "fib_train.h5"


def run_workflow(script: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, str(REPO / "workflows" / script), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def fragments_config(tmp_path: Path, **changes) -> Path:
    cfg = {
        "run": {"dir": str(tmp_path / "run")},
        "fragments": {
            "boundary": {"path": str(FIB), "dataset": "volumes/predictions/boundary_p1"},
            "block_shape": [250, 500, 500],
            "context": [50, 50, 50],
        },
    }
    for key, value in changes.items():
        section, field = key.split("__")
        cfg.setdefault(section, {})[field] = value
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    return p


def assert_one_line_error(proc, where: str, what: str, code: int = 2):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {where}: "), lines[0]
    assert what in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_help_lists_the_common_options():
    proc = run_workflow("02_extract_fragments.py", "--help")
    assert proc.returncode == 0
    for opt in ("--set", "--print-config", "--restart", "config"):
        assert opt in proc.stdout


def test_print_config_shows_defaults_and_overrides(tmp_path):
    cfg = fragments_config(tmp_path)
    proc = run_workflow(
        "02_extract_fragments.py",
        str(cfg),
        "--print-config",
        "--set",
        "workers.num_workers=3",
        "--set",
        "fragments.method=mutex",
    )
    assert proc.returncode == 0, proc.stderr
    eff = json.loads(proc.stdout)
    assert eff["workers"]["num_workers"] == 3
    assert eff["fragments"]["method"] == "mutex"
    assert eff["agglomerate"]["merge_function"] == "mean"  # a default
    assert not (tmp_path / "run").exists()


BAD = {
    "unknown key": ({"fragments__colour": "red"}, [], "fragments.colour", "unknown key"),
    "wrong type": ({"fragments__min_size": "big"}, [], "fragments.min_size", "valid integer"),
    "negative context": ({"fragments__context": [-10, 0, 0]}, [], "fragments.context", ">= 0"),
    "missing dataset": (
        {"fragments__boundary": {"path": str(FIB), "dataset": "volumes/nothing"}},
        [],
        "fragments.boundary.dataset",
        "no dataset",
    ),
    "missing file": (
        {"fragments__boundary": {"path": "nowhere.h5", "dataset": "volumes/raw"}},
        [],
        "fragments.boundary.path",
        "file not found",
    ),
    "block not a voxel multiple": (
        {"fragments__block_shape": [255, 500, 500]},
        [],
        "fragments.block_shape",
        "not a multiple of the voxel size",
    ),
    "override of unknown key": (
        {},
        ["--set", "fragments.bogus=1"],
        "fragments.bogus",
        "unknown key",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, case):
    changes, extra, where, what = BAD[case]
    cfg = fragments_config(tmp_path, **changes)
    proc = run_workflow("02_extract_fragments.py", str(cfg), *extra)
    assert_one_line_error(proc, where, what)
    assert not (tmp_path / "run").exists()


def test_malformed_json_and_missing_config(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"run": {"dir": "x"},,}')
    assert_one_line_error(
        run_workflow("02_extract_fragments.py", str(bad)), str(bad), "malformed JSON"
    )
    missing = tmp_path / "missing.json"
    assert_one_line_error(
        run_workflow("02_extract_fragments.py", str(missing)), str(missing), "config file not found"
    )


def test_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = fragments_config(tmp_path, run__dir=str(blocker / "run"))
    proc = run_workflow("02_extract_fragments.py", str(cfg))
    assert_one_line_error(proc, "run.dir", "is a file, not a directory")
    cfg = fragments_config(tmp_path, run__dir="/proc/marlseg-run")
    proc = run_workflow("02_extract_fragments.py", str(cfg))
    assert_one_line_error(proc, "run.dir", "not writable")
