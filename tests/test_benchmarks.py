"""The benchmarks' own plumbing (their figures are printed, never asserted), and that the
docs' tables agree with the JSON the benchmarks wrote."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from marlseg.config import load_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _run(arm: str, seed: int, regime: str, voi: float) -> dict:
    return {"arm": arm, "seed": seed, "regime": regime, "report": {"voi": voi, "arand": voi / 10}}


def test_ablation_summary_is_mean_and_seed_spread_per_arm():
    from benchmarks.pretrain_ablation import summarise

    runs = [_run("scratch", s, "full", v) for s, v in enumerate([1.0, 1.2, 1.4])]
    runs += [_run("marl_mae", s, "full", v) for s, v in enumerate([0.7, 0.8, 0.9])]
    runs += [_run("random_mae", s, "full", v) for s, v in enumerate([0.8, 1.0, 1.2])]
    full = summarise(runs)["full"]
    assert full["arms"]["scratch"]["voi_mean"] == pytest.approx(1.2)
    assert full["arms"]["scratch"]["voi_std"] == pytest.approx(0.2)  # n - 1
    assert full["arms"]["marl_mae"]["arand_mean"] == pytest.approx(0.08)
    v = full["verdict"]
    # MARL beats scratch by 0.4 > the larger std 0.2; random by 0.2, not beyond its std 0.2
    assert v["marl_mae_vs_scratch"]["beyond_one_std"]
    assert v["marl_mae_vs_scratch"]["voi_gain"] == pytest.approx(0.4)
    assert not v["marl_mae_vs_random_mae"]["beyond_one_std"]


def test_ablation_split_keeps_selection_and_report_apart():
    from benchmarks.pretrain_ablation import REPORT_BEGIN_Z, SELECT_END_Z, split

    config = load_config(ROOT / "configs" / "ablation_medulla.json")
    parts = split(config.train.validation)
    sel, rep = parts["selection"], parts["report"]
    vz = 10  # nm per section of medulla_val
    assert sel.offset[0] == 0 and sel.offset[0] + sel.shape[0] == SELECT_END_Z * vz
    assert rep.offset[0] == REPORT_BEGIN_Z * vz and rep.offset[0] + rep.shape[0] == 50 * vz
    # the config's own validation crop (what fine-tuning selects on) is the selection part
    assert config.train.validation.offset == sel.offset
    assert config.train.validation.shape == sel.shape


def test_docs_ablation_table_is_generated_from_the_published_json():
    from benchmarks.pretrain_ablation import BEGIN, DOC, END, PUBLISHED, render_table

    text = DOC.read_text()
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    result = json.loads(PUBLISHED.read_text()) if PUBLISHED.is_file() else None
    assert section.strip() == render_table(result).strip()
    if result is not None:
        assert not result["quick"] and len(result["seeds"]) >= 3


@pytest.mark.slow
def test_quick_ablation_runs_every_arm_and_regime_and_resumes(tmp_path, monkeypatch):
    from benchmarks.pretrain_ablation import ARMS, REGIMES, main, render_table

    monkeypatch.chdir(ROOT)
    out = tmp_path / "abl"
    args = ["configs/ablation_medulla.json", "--quick", "--seeds", "0", "--out", str(out)]
    assert main(args) == 0
    result = json.loads((out / "ablation.json").read_text())
    assert result["quick"] and (out / "ablation.png").is_file()
    got = {(r["arm"], r["regime"]) for r in result["runs"]}
    assert got == {(a, g) for a in ARMS for g in REGIMES}
    for r in result["runs"]:
        # the threshold comes from the selection part's thresholds; the report part is
        # scored at it
        assert r["threshold"] in (0.3, 0.6) and r["report"]["voi"] >= 0
    iters = {r["regime"]: r["iterations"] for r in result["runs"]}
    assert iters == {"full": 4, "scarce": 1}
    # pretrained arms started from their own MAE, with their own masking
    marl = torch.load(out / "pretrain" / "marl_mae_mse" / "seed0" / "pretrain" / "mae.pt")
    assert marl["pretrain"]["hog_weight"] == 0.0 and marl["policy"] is not None
    rnd = torch.load(out / "pretrain" / "random_mae" / "seed0" / "pretrain" / "mae.pt")
    assert rnd["policy"] is None
    assert not (out / "pretrain" / "scratch").exists()
    assert result["step_time"]["ratio"] > 0
    assert "Quick smoke run" in render_table(result)
    # a rerun reuses every finished run instead of training again
    stamp = (out / "full" / "scratch" / "seed0" / "result.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "full" / "scratch" / "seed0" / "result.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_ablation_timing_only_times_steps(tmp_path, monkeypatch, capsys):
    from benchmarks.pretrain_ablation import main

    monkeypatch.chdir(ROOT)
    args = ["configs/ablation_medulla.json", "--quick", "--timing", "--out", str(tmp_path)]
    assert main(args) == 0
    assert "MARL / random pretraining step:" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written
