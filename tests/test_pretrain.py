"""MAE pretraining with MARL masking: HOG target, decision module, MAE, trainer, stage."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from marlseg.cli import main
from marlseg.config import load_config
from marlseg.networks.hog import hog_features, orientation_votes
from marlseg.networks.mae import MaskedAutoencoder, visible_index
from marlseg.networks.marl import (
    CollapseGuard,
    MaskingPolicy,
    RewardScale,
    a2c_loss,
    random_mask,
    ratio_counts,
    sample_mask,
    team_reward,
)
from marlseg.networks.unetr import build_unetr, load_encoder
from marlseg.networks.vit import ViTEncoder

torch.set_num_threads(1)

DATA = Path(__file__).parents[1] / "data"
TINY = dict(hidden_size=24, mlp_dim=32, num_layers=2, num_heads=2)


# --- HOG ---


def _edge(deg: float, shape=(4, 32, 32), width: float = 2.0) -> torch.Tensor:
    """A smooth step whose gradient points at ``deg`` degrees (x towards y)."""
    phi = math.radians(deg)
    y, x = torch.meshgrid(
        torch.arange(shape[1], dtype=torch.float32),
        torch.arange(shape[2], dtype=torch.float32),
        indexing="ij",
    )
    cy, cx = shape[1] / 2, shape[2] / 2
    img = torch.tanh(((x - cx) * math.cos(phi) + (y - cy) * math.sin(phi)) / width)
    return img.expand(shape[0], -1, -1)[None, None].clone()


@pytest.mark.parametrize("deg", [0, 20, 40, 60, 100, 140, 160])
def test_hog_oriented_edge_peaks_in_its_bin(deg):
    votes = orientation_votes(_edge(deg), bins=9).sum((0, 2, 3, 4))
    assert int(votes.argmax()) == round(deg / 20) % 9
    assert float(votes.max() / votes.sum()) > 0.8  # sharp: most of the mass in one bin


def test_hog_between_bins_splits_and_wraps():
    votes = orientation_votes(_edge(170), bins=9).sum((0, 2, 3, 4))
    share = votes / votes.sum()
    # 170 degrees is halfway between bin 8 (160) and bin 0 (180 = 0): unsigned orientation wraps
    assert share[0] > 0.4 and share[8] > 0.4


def test_hog_features_per_patch_and_section():
    x = torch.zeros(1, 1, 8, 16, 16)
    # an edge in the patch at grid (1, 0, 1) only, in its second section only
    x[0, 0, 5, 0:8, 12:16] = 1.0
    f = hog_features(x, (4, 8, 8), bins=9, cell=4)
    assert f.shape == (1, 2 * 2 * 2, 4 * 2 * 2 * 9)
    energy = f.abs().sum(-1)
    assert int(energy.argmax()) == (1 * 2 + 0) * 2 + 1
    per_section = f[0, 5].reshape(4, -1).norm(dim=-1)
    assert per_section[1] == pytest.approx(1.0, abs=1e-3)  # L2-normalised per section
    assert float(per_section[[0, 2, 3]].max()) == 0.0
    # contrast does not change the normalised target
    assert torch.allclose(hog_features(3 * x, (4, 8, 8))[0, 5], f[0, 5], atol=1e-4)


# --- mask decision ---


def test_ratio_bounds_hold_for_any_policy():
    g = torch.Generator().manual_seed(0)
    n = 50
    n_min, n_max = ratio_counts(n, 0.3, 0.7)
    assert (n_min, n_max) == (15, 35)
    for bias in (-10.0, -1.0, 0.0, 1.0, 10.0):
        logits = bias + torch.randn(64, n, generator=g)
        s = sample_mask(logits, 0.3, 0.7, g)
        counts = s.mask.sum(1)
        assert int(counts.min()) >= n_min and int(counts.max()) <= n_max
        inside = (s.actions.sum(1) >= n_min) & (s.actions.sum(1) <= n_max)
        assert torch.equal(s.mask[inside], s.actions[inside])  # draws within bounds stay
        assert torch.equal(s.corrected, ~inside)
    with pytest.raises(ValueError):
        ratio_counts(4, 0.3, 0.45)  # no whole count of 4 patches in [1.2, 1.8]


def test_bound_correction_follows_probabilities():
    g = torch.Generator().manual_seed(1)
    n = 20
    # everything wants to be masked; the ones removed to reach max_ratio are the least likely
    logits = torch.full((500, n), 6.0)
    logits[:, :5] = 0.0
    s = sample_mask(logits, 0.1, 0.5, g)
    assert int(s.mask.sum(1).max()) == 10
    kept_visible = (~s.mask).float().mean(0)
    assert float(kept_visible[:5].mean()) > 2 * float(kept_visible[5:].mean())


def test_random_mask_exact_ratio():
    g = torch.Generator().manual_seed(0)
    m = random_mask(16, 64, 0.75, g, "cpu")
    assert m.sum(1).tolist() == [48] * 16
    assert not torch.equal(m[0], m[1])


class ToyEnv:
    """N agents; masking the fixed subset ``good`` earns, masking anything else costs. The best
    mask is ``good`` exactly (6 of 16 = 0.375, inside the bounds). Observations are noise, so
    the shared policy must tell agents apart by its position embedding."""

    n, dim = 16, 8
    good = torch.tensor([1, 4, 5, 9, 12, 14])

    def __init__(self):
        self.is_good = torch.zeros(self.n, dtype=torch.bool)
        self.is_good[self.good] = True

    def reward(self, mask: torch.Tensor) -> torch.Tensor:
        m = mask.float()
        return (m[:, self.is_good].sum(1) - m[:, ~self.is_good].sum(1)) / self.n


def test_shared_policy_learns_toy_mask_and_beats_random():
    torch.manual_seed(0)
    env, g = ToyEnv(), torch.Generator().manual_seed(0)
    policy = MaskingPolicy(env.dim, env.n, hidden=32, init_ratio=0.5)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    scale = RewardScale()
    lo, hi = 0.2, 0.7
    first = None
    for _ in range(150):
        obs = torch.randn(32, env.n, env.dim, generator=g)
        with torch.no_grad():
            logits, _ = policy(obs)
        s = sample_mask(logits, lo, hi, g)
        r = env.reward(s.mask)
        first = float(r.mean()) if first is None else first
        scale.update(r)
        loss, _ = a2c_loss(policy, obs, s.actions, scale(r), lo, hi, entropy_coef=0.01)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits, value = policy(torch.randn(512, env.n, env.dim, generator=g))
    p = torch.sigmoid(logits).mean(0)
    assert float(p[env.is_good].min()) > 0.9 and float(p[~env.is_good].max()) < 0.1
    s = sample_mask(logits, lo, hi, g)
    learned = float(env.reward(s.mask).mean())
    ratio = float(s.mask.float().mean())
    baseline = float(env.reward(random_mask(512, env.n, ratio, g, "cpu")).mean())
    assert learned > 0.3 > first and learned > baseline + 0.3
    # the critic learned the (scaled) value of the state
    assert float(value.mean()) == pytest.approx(scale(torch.tensor(learned)).item(), rel=0.2)


def test_team_reward_prefers_intermediate_difficulty():
    mask = torch.ones(1, 4, dtype=torch.bool)
    rewards = [float(team_reward(torch.full((1, 4), d), mask)) for d in (0.0, 0.25, 0.5, 1.0)]
    assert rewards[2] == pytest.approx(1.0) and rewards[0] == 0.0 == rewards[3]
    assert rewards[1] < rewards[2]
    # unmasked patches earn nothing
    assert float(team_reward(torch.full((1, 4), 0.5), torch.zeros(1, 4, dtype=torch.bool))) == 0


def test_reward_scale_tracks_spread_and_is_floored():
    scale = RewardScale(momentum=0.9, min_std=0.01)
    scale.update(torch.zeros(8))  # an MAE that has learned nothing: all rewards 0
    scale.update(torch.full((8,), 1e-5))
    assert float(scale(torch.tensor(1e-5))) == pytest.approx(1e-3)  # not blown up
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        scale.update(0.5 + 0.2 * torch.randn(64, generator=g))
    assert scale.std == pytest.approx(0.2, rel=0.15)
    assert scale.mean == pytest.approx(0.5, abs=0.05)


def test_collapse_guard_warns_after_patience_and_recovers():
    guard = CollapseGuard(0.4, 0.9, patience=3, entropy_floor=0.05)
    assert guard.update(0.7, 0.6) is None
    assert guard.update(0.9, 0.6) is None and guard.update(0.9, 0.5) is None
    msg = guard.update(0.895, 0.5)
    assert msg and "upper bound" in msg and guard.collapsed
    assert guard.update(0.9, 0.5) is None  # warned once
    assert "recovered" in guard.update(0.7, 0.5)
    for _ in range(2):
        assert guard.update(0.6, 0.01) is None
    assert "entropy" in guard.update(0.6, 0.01)


# --- MAE ---


def _mae(**kw) -> MaskedAutoencoder:
    enc = ViTEncoder(1, (8, 16, 16), (4, 8, 8), **TINY)
    return MaskedAutoencoder(enc, decoder_dim=16, decoder_layers=1, decoder_heads=2, **kw)


def test_mae_variable_mask_counts_match_single_items():
    torch.manual_seed(0)
    mae = _mae().eval()
    x = torch.randn(2, 1, 8, 16, 16)
    mask = torch.tensor([[1, 0, 1, 1, 0, 1, 1, 1], [0, 0, 1, 0, 1, 0, 0, 1]], dtype=torch.bool)
    keep, valid = visible_index(mask)
    assert keep.shape == (2, 5) and valid.sum(1).tolist() == [2, 5]
    with torch.no_grad():
        pred, losses = mae(x, mask)
        for b in range(2):  # padding never changes an item's result
            pred_b, _ = mae(x[b : b + 1], mask[b : b + 1])
            assert torch.allclose(pred[b], pred_b[0], atol=1e-5)
    assert pred.shape == (2, 8, 4 * 8 * 8)
    # the loss counts masked patches only
    m = mask.float()
    assert float(losses["mse"]) == pytest.approx(
        float((losses["mse_per_patch"] * m).sum() / m.sum()), rel=1e-5
    )
    # reconstruction keeps visible patches and fills masked ones
    blank, recon = mae.reconstruction(x, mask, pred, losses["targets"])
    vis = ~mask[0]
    assert torch.allclose(mae.encoder.patchify(recon)[0, vis], mae.encoder.patchify(x)[0, vis])


def test_mae_steps_lower_loss_on_fixed_batch():
    torch.manual_seed(0)
    mae = _mae(hog_weight=1.0)
    x = torch.randn(2, 1, 8, 16, 16).cumsum(-1) / 4  # some structure to learn
    mask = random_mask(2, 8, 0.5, torch.Generator().manual_seed(0), "cpu")
    opt = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        _, out = mae(x, mask)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.8 * losses[0]


# --- trainer, stage, CLI ---


def _config(tmp_path: Path, **pretrain) -> Path:
    cfg = {
        "run": {"dir": str(tmp_path / "run")},
        "network": {
            "patch_size": [4, 8, 8],
            "input_shape": [8, 32, 32],
            **TINY,
            "feature_size": 4,
        },
        "pretrain": {
            "raw": [{"path": str(DATA / "fib25_tiny.h5"), "dataset": "volumes/raw"}],
            "iterations": 6,
            "batch_size": 2,
            "decoder_dim": 16,
            "decoder_layers": 1,
            "decoder_heads": 2,
            "log_every": 2,
            "checkpoint_every": 3,
            "snapshot_every": 3,
            "policy_every": 2,
            "augment": False,
            "device": "cpu",
            **pretrain,
        },
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "pretrain" / "log.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_end_to_end_cli_writes_outputs_and_resumes(tmp_path, capsys):
    cfg = _config(tmp_path)
    run = tmp_path / "run"
    assert main("pretrain", [str(cfg), "--set", "pretrain.iterations=4"]) == 0
    out = run / "pretrain"
    assert (out / "mae.pt").is_file() and (out / "curves.png").is_file()
    assert (out / "reconstructions" / "iter_0000003.png").is_file()
    assert any((out / "tb").iterdir())
    assert [r["iteration"] for r in _rows(run)] == ["2", "4"]
    # resume to 6: continues from the iteration-4 checkpoint, no iteration is redone
    assert main("pretrain", [str(cfg)]) == 0
    assert "resuming from" in capsys.readouterr().out
    rows = _rows(run)
    assert [r["iteration"] for r in rows] == ["2", "4", "6"]
    lo, hi = 0.4, 0.95  # the default bounds
    for r in rows:
        assert lo - 1e-6 <= float(r["mask_ratio_min"]) <= float(r["mask_ratio_max"]) <= hi + 1e-6
        assert 0.0 < float(r["entropy"]) <= math.log(2) + 1e-6
    ckpt = torch.load(out / "mae.pt", weights_only=True)
    assert ckpt["kind"] == "mae" and ckpt["iteration"] == 6 and ckpt["policy"] is not None
    # 4 + 2 resumed iterations give exactly the weights of 6 in one go
    (tmp_path / "b").mkdir()
    cfg2 = _config(tmp_path / "b")
    assert main("pretrain", [str(cfg2)]) == 0
    straight = torch.load(tmp_path / "b" / "run" / "pretrain" / "mae.pt", weights_only=True)
    for k, v in straight["model"].items():
        assert torch.equal(v, ckpt["model"][k]), k
    for k, v in straight["policy"].items():
        assert torch.equal(v, ckpt["policy"][k]), k
    # the encoder loads into the UNETR key for key
    config = load_config(cfg)
    unetr = build_unetr(config.network, out_channels=3)
    load_encoder(unetr, out / "mae.pt")
    enc_keys = {k[len("encoder.") :] for k in ckpt["model"] if k.startswith("encoder.")}
    assert enc_keys == set(unetr.encoder.state_dict())


@pytest.mark.slow
def test_random_masking_mode_fixed_ratio(tmp_path):
    cfg = _config(tmp_path, masking="random", mask_ratio=0.75, iterations=2)
    assert main("pretrain", [str(cfg)]) == 0
    rows = _rows(tmp_path / "run")
    assert float(rows[-1]["mask_ratio_min"]) == float(rows[-1]["mask_ratio_max"]) == 0.75
    assert rows[-1]["entropy"] == ""
    ckpt = torch.load(tmp_path / "run" / "pretrain" / "mae.pt", weights_only=True)
    assert ckpt["policy"] is None
    # switching the masking mode on an existing run is refused, not silently mixed
    cfg_marl = _config(tmp_path, masking="marl", iterations=4)
    assert main("pretrain", [str(cfg_marl)]) == 2


@pytest.mark.parametrize(
    "override,field",
    [
        ("pretrain.raw=[]", "pretrain.raw"),
        ('pretrain.raw=[{"path": "nope.h5", "dataset": "volumes/raw"}]', "pretrain.raw[0].path"),
        ("pretrain.hog_cell=3", "pretrain.hog_cell"),
        ("pretrain.min_ratio=0.9", "pretrain"),
        ("network.input_shape=[64,64,64]", "pretrain.raw[0]"),
    ],
)
def test_config_errors_name_the_field(tmp_path, capsys, override, field):
    cfg = _config(tmp_path)
    assert main("pretrain", [str(cfg), "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {field}:") and "\n" not in err
    assert not (tmp_path / "run").exists()
