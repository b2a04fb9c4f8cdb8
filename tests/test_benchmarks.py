"""The benchmarks' own plumbing (their figures are printed, never asserted)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from marlseg.config import load_config
from tests.tiny import TINY_NET

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.mark.slow
def test_ablation_arm_fine_tunes_from_its_pretraining_and_predicts_with_its_own_network(
    tmp_path, mongo_uri, monkeypatch
):
    from benchmarks.pretrain_ablation import run_arm
    from marlseg.stages.predict import file_digest

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MARLSEG_MONGODB_URI", mongo_uri)
    sets = [f"network.{k}={json.dumps(v)}" for k, v in TINY_NET.items()]
    sets += [
        f"db.name=ablation_{os.getpid()}",
        "pretrain.iterations=4",
        "pretrain.batch_size=2",
        "pretrain.log_every=2",
        "pretrain.checkpoint_every=4",
        "pretrain.snapshot_every=4",
        "train.iterations=4",
        "train.log_every=2",
        "train.checkpoint_every=4",
        "train.snapshot_every=4",
        "train.validate_every=4",
        "segments.thresholds=[0.5]",
    ]
    config = load_config(ROOT / "configs" / "ablation_fib.json", sets)
    result = run_arm("c_marl_mae", config, tmp_path, "marl")
    assert "stopped" not in result, result.get("stopped")
    arm = tmp_path / "c_marl_mae"
    # fine-tuning started from this arm's MAE ...
    assert (arm / "pretrain" / "mae.pt").is_file()
    assert [it for it, _ in result["mask_ratio_over_time"]] == [2, 4]
    # ... and prediction used this arm's exported network, not the shipped checkpoint
    params = json.loads((arm / "tracking" / "predict" / "params.json").read_text())
    assert params["checkpoint"] == file_digest(arm / "unetr.pt")
    assert params["network"]["hidden_size"] == TINY_NET["hidden_size"]
    assert result["scores"]["threshold"] == 0.5
    # the reported VOI is the arm's own segmentation scored against gt, recomputed here
    from marlseg import metrics
    from marlseg.stages.segments import apply_lut, load_lut, lut_path
    from marlseg.volumes import open_volume, read

    arm_config = config.model_copy(update={"run": config.run.model_copy(update={"dir": arm})})
    frags_arr = open_volume(arm_config.fragments_ds)
    seg = apply_lut(read(frags_arr, frags_arr.roi), *load_lut(lut_path(arm_config, 0.5)))
    gt = read(open_volume(arm_config.gt), frags_arr.roi)
    own = metrics.evaluate(seg, gt, ignore_label=arm_config.evaluate.ignore_label)
    assert result["scores"]["voi"] == pytest.approx(own["voi_split"] + own["voi_merge"], abs=1e-9)
    assert result["scores"]["voi"] > 0  # 4 training iterations cannot segment perfectly
    assert set(result["wall_s"]) == {"pretrain", "train", "chain"}
