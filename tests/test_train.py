"""Affinity training: the loss goes down, checkpoints resume exactly, a pretrained encoder
loads into the UNETR, validation scores segmentations, and bad configs fail before writing."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gunpowder.nodes.add_affinities import seg_to_affgraph

from marlseg.config import Config, NetworkConfig
from marlseg.errors import ConfigError
from marlseg.gp_pipelines.recipes import affinity_batches
from marlseg.networks.unetr import build_unetr, load_encoder
from marlseg.networks.vit import ViTEncoder
from marlseg.stages.train import TrainStage
from marlseg.train import TrainPaths, affinity_loss, train
from marlseg.validation import segment_and_score
from tests.tiny import TINY_NET

torch.set_num_threads(1)

ROOT = Path(__file__).parents[1]
DATA = ROOT / "data"
FIB = str(DATA / "fib_train.h5")


def make_config(run_dir: Path, **train) -> Config:
    data = {
        "run": {"dir": str(run_dir)},
        "network": TINY_NET,
        "train": {
            "raw": [{"path": FIB, "dataset": "volumes/raw"}],
            "labels": [{"path": FIB, "dataset": "volumes/labels/neuron_ids"}],
            "iterations": 10,
            "batch_size": 2,
            "lr": 3e-3,
            "augment": False,
            "precache_workers": 0,
            "log_every": 2,
            "checkpoint_every": 5,
            "snapshot_every": 5,
            "validate_every": 1000,
            "num_threads": 1,
            **train,
        },
    }
    return Config.model_validate(data)


def quiet(_msg: str) -> None:
    pass


def fixed_loss(model, n=4) -> float:
    it = affinity_batches(
        [{"path": FIB, "dataset": "volumes/raw"}],
        [{"path": FIB, "dataset": "volumes/labels/neuron_ids"}],
        TINY_NET["input_shape"],
        TINY_NET["input_shape"],
        batch_size=2,
        augment=False,
        seed=1234,
    )
    losses = []
    with torch.no_grad():
        for _ in range(n):
            b = next(it)
            logits = model.logits(torch.from_numpy(b["raw"]))
            losses.append(
                float(
                    affinity_loss(
                        logits, torch.from_numpy(b["affs"]), torch.from_numpy(b["weights"])
                    )
                )
            )
    it.close()
    return float(np.mean(losses))


def load_model(path: Path):
    ckpt = torch.load(path, weights_only=True)
    model = build_unetr(NetworkConfig.model_validate(ckpt["network"]), 3)
    model.load_state_dict(ckpt["model"])
    return model, ckpt


@pytest.mark.slow
def test_short_training_lowers_the_loss(tmp_path):
    config = make_config(tmp_path / "run", iterations=60, checkpoint_every=60, log_every=10)
    torch.manual_seed(config.train.seed)  # train() builds its model right after this seeding
    before = fixed_loss(build_unetr(config.network, 3))
    summary = train(config, log=quiet)
    model, ckpt = load_model(TrainPaths(config.run.dir).checkpoint(60))
    after = fixed_loss(model)
    assert ckpt["iteration"] == 60 and summary["loss"] is not None
    assert after < 0.85 * before, (before, after)
    with open(TrainPaths(config.run.dir).loss_csv) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == list(range(10, 61, 10))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])


def test_resume_continues_from_the_saved_iteration_exactly(tmp_path):
    every = {"checkpoint_every": 3, "snapshot_every": 3}
    straight = make_config(tmp_path / "a", iterations=6, **every)
    train(straight, log=quiet)

    first = make_config(tmp_path / "b", iterations=3, **every)
    train(first, log=quiet)
    logs: list[str] = []
    resumed = make_config(tmp_path / "b", iterations=6, **every)
    TrainStage(resumed).check()
    summary = train(resumed, log=logs.append)
    assert summary["start_iteration"] == 3
    assert any("resuming" in line and "iteration 3" in line for line in logs)

    a, _ = load_model(TrainPaths(tmp_path / "a").checkpoint(6))
    b, ckpt = load_model(TrainPaths(tmp_path / "b").checkpoint(6))
    assert ckpt["iteration"] == 6
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k  # same batches, same optimizer state: same weights
    paths = TrainPaths(tmp_path / "b")
    with open(paths.loss_csv) as f:
        its = [int(r["iteration"]) for r in csv.DictReader(f)]
    assert its == [2, 3, 4, 6]  # 3: the end of the first run; no duplicates
    assert sorted(p.name for p in paths.snapshots.iterdir()) == [
        "iter_0000003.png",
        "iter_0000006.png",
    ]
    assert any(paths.tensorboard.iterdir())
    # done: a re-run does nothing
    assert train(resumed, log=quiet)["start_iteration"] == 6


def test_resume_refuses_another_network(tmp_path):
    train(make_config(tmp_path / "r", iterations=2, checkpoint_every=2), log=quiet)
    other = make_config(tmp_path / "r", iterations=4)
    other.network = NetworkConfig(**{**TINY_NET, "hidden_size": 16})
    with pytest.raises(ConfigError, match=r"^network: differs"):
        TrainStage(other).check()


def fake_mae_checkpoint(path: Path, network: dict, seed: int = 7) -> dict:
    torch.manual_seed(seed)
    enc = ViTEncoder(
        1,
        network["input_shape"],
        network["patch_size"],
        hidden_size=network["hidden_size"],
        mlp_dim=network["mlp_dim"],
        num_layers=network["num_layers"],
        num_heads=network["num_heads"],
    )
    state = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    state["decoder.weight"] = torch.zeros(3)  # MAE-only parts are ignored
    torch.save({"kind": "mae", "network": network, "model": state, "iteration": 3}, path)
    return state


def test_pretrained_encoder_round_trips_into_the_unetr(tmp_path):
    mae = tmp_path / "mae.pt"
    state = fake_mae_checkpoint(mae, TINY_NET)
    unetr = build_unetr(NetworkConfig(**TINY_NET), 3)
    load_encoder(unetr, mae)
    for k, v in unetr.encoder.state_dict().items():
        assert torch.equal(v, state[f"encoder.{k}"]), k

    config = make_config(tmp_path / "run", iterations=1, lr=1e-9, init_encoder=str(mae))
    TrainStage(config).check()
    logs: list[str] = []
    train(config, log=logs.append)
    assert any("encoder initialised" in line for line in logs)
    model, _ = load_model(TrainPaths(config.run.dir).checkpoint(1))
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(v, state[f"encoder.{k}"], atol=1e-6, rtol=0)

    wrong = tmp_path / "wrong.pt"
    fake_mae_checkpoint(wrong, {**TINY_NET, "hidden_size": 16})
    bad = make_config(tmp_path / "run2", init_encoder=str(wrong))
    with pytest.raises(ConfigError, match=r"^train.init_encoder: encoder of .* does not match"):
        TrainStage(bad).check()


def test_validation_chain_scores_segmentations():
    import h5py

    with h5py.File(DATA / "fib25_tiny.h5") as f:
        labels = f["volumes/labels/neuron_ids"][:16, :64, :64]
    perfect = seg_to_affgraph(labels.astype(np.int32), [[-1, 0, 0], [0, -1, 0], [0, 0, -1]])
    rows = segment_and_score(perfect.astype(np.float32), labels, [0.5])
    assert rows[0]["voi"] < 0.1 and rows[0]["arand"] < 0.02
    noise = np.random.default_rng(0).random(perfect.shape).astype(np.float32)
    bad = segment_and_score(noise, labels, [0.5])
    assert bad[0]["voi"] > 1.0


def test_validation_during_training_keeps_the_best(tmp_path):
    val = {
        "raw": {"path": str(DATA / "fib25_tiny.h5"), "dataset": "volumes/raw"},
        "labels": {"path": str(DATA / "fib25_tiny.h5"), "dataset": "volumes/labels/neuron_ids"},
        "offset": [0, 0, 0],
        "shape": [160, 320, 320],
        "thresholds": [0.3, 0.6],
    }
    export = tmp_path / "exported.pt"
    config = make_config(
        tmp_path / "run", iterations=4, validate_every=2, validation=val, export=str(export)
    )
    TrainStage(config).check()
    summary = train(config, log=quiet)
    paths = TrainPaths(config.run.dir)
    with open(paths.validation_csv) as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["iteration"]), float(r["threshold"])) for r in rows] == [
        (2, 0.3),
        (2, 0.6),
        (4, 0.3),
        (4, 0.6),
    ]
    best = torch.load(paths.best, weights_only=True)
    assert best["iteration"] == summary["best_iteration"]
    assert best["validation"]["voi"] == pytest.approx(summary["best_voi"])
    assert "optimizer" not in best
    shipped = torch.load(export, weights_only=True)
    assert shipped["kind"] == "unetr" and "optimizer" not in shipped and "rng" not in shipped
    assert shipped["iteration"] == summary["best_iteration"]


@pytest.mark.parametrize(
    "change, where",
    [
        ({"raw": [{"path": "missing.h5", "dataset": "volumes/raw"}]}, "train.raw[0].path"),
        (
            {"labels": [{"path": FIB, "dataset": "volumes/nope"}]},
            "train.labels[0].dataset",
        ),
        ({"augment": {"flip": True}}, "train.augment"),
        (
            {
                "validation": {
                    "raw": {"path": FIB, "dataset": "volumes/raw"},
                    "labels": {"path": FIB, "dataset": "volumes/labels/neuron_ids"},
                    "shape": [1000, 100, 100],
                }
            },
            "train.validation.shape",
        ),
        ({"init_encoder": "missing.pt"}, "train.init_encoder"),
    ],
)
def test_train_checks_fail_before_writing(tmp_path, change, where):
    config = make_config(tmp_path / "run", **change)
    with pytest.raises(ConfigError) as e:
        TrainStage(config).check()
    assert e.value.where == where
    assert not (tmp_path / "run").exists()


def test_input_larger_than_the_volume(tmp_path):
    config = make_config(tmp_path / "run")
    config.network = NetworkConfig(**{**TINY_NET, "input_shape": [64, 16, 16]})
    with pytest.raises(ConfigError, match=r"smaller than a crop"):
        TrainStage(config).check()


@pytest.mark.slow
def test_cli_reports_one_line(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps(
            {
                "run": {"dir": str(tmp_path / "run")},
                "train": {
                    "raw": [{"path": str(tmp_path / "x.h5"), "dataset": "volumes/raw"}],
                    "labels": [{"path": FIB, "dataset": "volumes/labels/neuron_ids"}],
                },
            }
        )
    )
    r = subprocess.run(
        [sys.executable, str(ROOT / "workflows" / "00_train.py"), str(cfg)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: train.raw[0].path: file not found: {tmp_path / 'x.h5'}"
    ]
