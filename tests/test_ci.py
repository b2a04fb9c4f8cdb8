"""The CI guard (tests/conftest.py): with CI=true a skip fails the session, naming the test
and why; without CI it stays a skip. Run on a throw-away test file in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = """
import pytest

def test_runs():
    assert True

def test_needs_slurm():
    pytest.skip("Slurm is not running")

@pytest.mark.xfail(reason="known")
def test_known_bug():
    assert False
"""


def _pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_sample.py"),
        ],  # fmt: skip
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )


def test_a_skip_fails_on_ci_and_says_which_and_why(tmp_path):
    ci = _pytest(tmp_path, "true")
    assert ci.returncode == 1, ci.stdout[-2000:]
    assert (
        "SKIPPED (fails on CI) test_sample.py::test_needs_slurm: Slurm is not running" in ci.stdout
    )
    assert "test_known_bug" not in ci.stdout.split("CI=true")[-1]  # an xfail is not a skip
    local = _pytest(tmp_path, None)
    assert local.returncode == 0, local.stdout[-2000:]
    assert "fails on CI" not in local.stdout
