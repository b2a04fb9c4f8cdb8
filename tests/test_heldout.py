"""The validation protocol: an annotated crop splits into disjoint selection and report parts,
and the docs' held-out table is the one the benchmark's JSON gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from marlseg.errors import ConfigError
from marlseg.splits import parse_range, split

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import heldout  # noqa: E402


def test_split_writes_disjoint_parts_in_world_coordinates(tmp_path):
    src = ROOT / "data" / "fib_train.h5"
    sel, rep = tmp_path / "s.h5", tmp_path / "r.h5"
    split(src, sel, rep, (0, 20), (24, 50))
    with h5py.File(src) as f, h5py.File(sel) as s, h5py.File(rep) as r:
        raw = f["volumes/raw"][:]
        assert np.array_equal(s["volumes/raw"][:], raw[:20])
        assert np.array_equal(r["volumes/raw"][:], raw[24:])
        assert np.array_equal(
            r["volumes/labels/neuron_ids"][:], f["volumes/labels/neuron_ids"][24:]
        )
        res = f["volumes/raw"].attrs["resolution"]
        assert list(r["volumes/raw"].attrs["offset"]) == [24 * res[0], 0, 0]
        assert "report" in r.attrs["split"]


def test_split_refuses_overlap_and_bad_ranges(tmp_path):
    src = ROOT / "data" / "fib_train.h5"
    with pytest.raises(ConfigError, match="overlap"):
        split(src, tmp_path / "s.h5", tmp_path / "r.h5", (0, 30), (20, 50))
    with pytest.raises(ConfigError, match="--select"):
        parse_range("24:0", "--select")
    out = subprocess.run(
        [sys.executable, "-m", "marlseg.splits", str(src), "a.h5", "b.h5", "--report", "40:99"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and out.stderr.count("\n") == 1 and "--report" in out.stderr


def test_shipped_report_part_is_the_crop_s_sections_26_to_50():
    with (
        h5py.File(ROOT / "data/medulla_val.h5") as f,
        h5py.File(ROOT / "data/medulla_report.h5") as r,
        h5py.File(ROOT / "data/medulla_select.h5") as s,
    ):
        assert np.array_equal(r["volumes/raw"][:], f["volumes/raw"][26:50])
        assert np.array_equal(s["volumes/raw"][:], f["volumes/raw"][:24])


def test_overlap_factor():
    assert heldout.overlap_factor([32, 64, 64], [4, 8, 8]) == pytest.approx((4 / 3) ** 3)
    assert heldout.overlap_factor([32, 64, 64], [2, 4, 4]) <= 1.5


def test_docs_table_is_generated_from_the_json():
    results = json.loads((ROOT / "docs" / "heldout.json").read_text())
    for rel in heldout.DOCS:
        doc = (ROOT / rel).read_text()
        assert f"{heldout.BEGIN}\n{heldout.table(results)}\n{heldout.END}" in doc, rel
    readme = (ROOT / "README.md").read_text()
    assert f"{heldout.DEMO_BEGIN}\n{heldout.demo_table(results)}\n{heldout.END}" in readme
    for arm in results["arms"]:
        # the threshold is the selection part's best, never the report part's
        sel = min(arm["selection"]["per_threshold"], key=lambda r: r["voi"])
        assert arm["chosen_threshold"] == sel["threshold"]
