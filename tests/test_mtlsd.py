"""MTLSD: local shape descriptors as an auxiliary training target; prediction writes only the
affinities; training never exports over the shipped checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from marlseg.config import Config
from marlseg.errors import ConfigError
from marlseg.gp_pipelines.recipes import affinity_batches
from marlseg.gp_pipelines.targets import LSD_CHANNELS
from marlseg.inference import SHIPPED_CHECKPOINT, affinity_channels, load_model
from marlseg.train import TrainPaths, export_path, train
from tests.tiny import TINY_NET

torch.set_num_threads(1)

FIB = str(Path(__file__).parents[1] / "data" / "fib_train.h5")
RAW = [{"path": FIB, "dataset": "volumes/raw"}]
LABELS = [{"path": FIB, "dataset": "volumes/labels/neuron_ids"}]


def config(run_dir: Path, **train_kw) -> Config:
    return Config.model_validate(
        {
            "run": {"dir": str(run_dir)},
            "network": TINY_NET,
            "train": {
                "raw": RAW,
                "labels": LABELS,
                "iterations": 4,
                "batch_size": 1,
                "augment": False,
                "precache_workers": 0,
                "log_every": 2,
                "checkpoint_every": 4,
                "snapshot_every": 4,
                "validate_every": 1000,
                "num_threads": 1,
                **train_kw,
            },
        }
    )


def test_lsd_targets_describe_the_labels():
    b = next(
        affinity_batches(RAW, LABELS, [16, 32, 32], [16, 32, 32], augment=False, lsd_sigma=40.0)
    )
    lsds, mask, labels = b["lsds"][0], b["lsds_mask"][0], b["labels"][0]
    assert lsds.shape == (LSD_CHANNELS, 16, 32, 32) and mask.shape == lsds.shape
    assert 0.0 <= lsds.min() and lsds.max() <= 1.0
    # background (label 0) carries no descriptor; objects do
    assert np.all(mask[:, labels == 0] == 0) and mask[:, labels != 0].mean() > 0.9
    # the descriptors vary inside objects (not a constant fill)
    inside = lsds[:, labels != 0]
    assert inside.std(axis=1).min() > 1e-3
    # two different objects have different mean descriptors
    ids, counts = np.unique(labels[labels != 0], return_counts=True)
    a, c = ids[np.argsort(counts)[-2:]]
    assert np.abs(lsds[:, labels == a].mean(1) - lsds[:, labels == c].mean(1)).max() > 0.02


def test_no_lsds_unless_asked():
    b = next(affinity_batches(RAW, LABELS, [16, 32, 32], [16, 32, 32], augment=False))
    assert "lsds" not in b


def test_mtlsd_trains_and_prediction_writes_affinities_only(tmp_path):
    cfg = config(tmp_path / "run", lsds=True, lsd_sigma=40.0)
    summary = train(cfg, log=lambda _m: None)
    assert summary["loss"] is not None and np.isfinite(summary["loss"])
    exported = TrainPaths(cfg.run.dir).root / "export.pt"
    assert exported.is_file()
    model, ckpt = load_model(exported)
    assert ckpt["lsds"] is True
    assert affinity_channels(ckpt) == 3
    assert ckpt["model"]["out.conv.conv.weight"].shape[0] == 3 + LSD_CHANNELS
    x = torch.zeros(1, 1, *TINY_NET["input_shape"])
    from marlseg.inference import predict_windows

    out = predict_windows(model, x.numpy(), "cpu", 1)
    assert out.shape[1] == 3


def test_export_defaults_under_the_run_and_never_over_the_shipped_model(tmp_path):
    cfg = config(tmp_path / "run")
    assert export_path(cfg) == tmp_path / "run" / "train" / "export.pt"
    cfg = config(tmp_path / "run", export=str(SHIPPED_CHECKPOINT))
    with pytest.raises(ConfigError, match="train.export"):
        export_path(cfg)


def test_a_sigma_off_the_coarse_grid_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="train.lsd_sigma"):
        next(affinity_batches(RAW, LABELS, [16, 32, 32], [16, 32, 32], lsd_sigma=50.0))
