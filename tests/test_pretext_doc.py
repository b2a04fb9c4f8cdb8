"""The pretext-signal figures quoted in the README and docs/pretraining.md are the ones the
committed benchmark JSON holds (``benchmarks/pretext_signal.py --json``)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_quoted_pretext_figures_come_from_the_json():
    rows = json.loads((ROOT / "docs" / "results" / "pretext_signal.json").read_text())["rows"]
    mse = {r["iteration"]: f"{r['mse']:.3f}" for r in rows}
    series = ", ".join(mse[i] for i in sorted(mse))
    assert f"**{series}**" in (ROOT / "docs" / "pretraining.md").read_text()
    readme = (ROOT / "README.md").read_text()
    assert f"{mse[100]} at iteration 100, {mse[400]} at 400 (goal <= 0.80)" in readme
    assert float(mse[400]) <= 0.80 and all(r["collapsed"] == 0 for r in rows)
