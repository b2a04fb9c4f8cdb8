"""The MAE's pretext task: the voxel target (smoothing, pooling, per-patch normalisation), the
relative loss that ``log.csv``'s ``mse`` reports (1.0 = the patch-mean predictor) and the
decoder's locality prior."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from marlseg.cli import main
from marlseg.config import load_config
from marlseg.errors import ConfigError
from marlseg.networks.mae import MaskedAutoencoder, relative_loss
from marlseg.networks.vit import ViTEncoder, patchify
from marlseg.networks.voxel_target import VoxelTarget, gaussian_kernel, smooth
from marlseg.pretrain import Pretrainer
from tests.test_pretrain import _config
from tests.tiny import TINY_NET

torch.set_num_threads(1)

DATA = Path(__file__).parents[1] / "data"
TINY = {k: TINY_NET[k] for k in ("hidden_size", "mlp_dim", "num_layers", "num_heads")}


def test_default_target_is_per_patch_standardisation():
    x = torch.randn(2, 1, 8, 16, 16)
    t, mean, scale = VoxelTarget((4, 8, 8))(x)
    p = patchify(x, (4, 8, 8))
    assert t.shape == p.shape
    assert torch.allclose(t.mean(-1), torch.zeros(2, 8), atol=1e-5)
    assert torch.allclose(t.var(-1, unbiased=False), torch.ones(2, 8), atol=1e-4)
    assert torch.allclose(t * scale + mean, p, atol=1e-5)


def test_smoothing_keeps_constants_and_removes_noise():
    assert float(gaussian_kernel(1.5).sum()) == pytest.approx(1.0)
    const = torch.full((1, 1, 8, 12, 12), 0.3)
    assert torch.allclose(smooth(const, (1.0, 1.0, 1.0)), const, atol=1e-6)
    noise = torch.randn(1, 1, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    assert float(smooth(noise, (1.0, 1.0, 1.0)).std()) < 0.3 * float(noise.std())
    # a ramp along x is a ramp after smoothing (away from the border)
    ramp = torch.arange(32.0).expand(1, 1, 4, 32, 32).clone()
    assert torch.allclose(smooth(ramp, (0.0, 0.0, 2.0))[..., 8:24], ramp[..., 8:24], atol=1e-4)


def test_pooled_target_is_the_smoothed_downsampled_patch():
    x = torch.randn(1, 1, 8, 16, 16)
    vt = VoxelTarget((4, 8, 8), sigma=(1.0, 1.0, 1.0), pool=(2, 4, 4))
    assert vt.target_patch == (2, 2, 2) and vt.dim == 8
    t, mean, scale = vt(x)
    want = patchify(F.avg_pool3d(smooth(x, (1, 1, 1)), (2, 4, 4), (2, 4, 4)), (2, 2, 2))
    assert t.shape == (1, 8, 8)
    assert torch.allclose(t * scale + mean, want, atol=1e-5)
    with pytest.raises(ValueError, match="divisors"):
        VoxelTarget((4, 8, 8), pool=(3, 1, 1))


def test_floor_leaves_low_contrast_patches_small():
    x = torch.zeros(1, 1, 4, 8, 16)
    g = torch.Generator().manual_seed(1)
    x[..., :8] = 0.01 * torch.randn(1, 1, 4, 8, 8, generator=g)  # flat: noise only
    x[..., 8:] = torch.randn(1, 1, 4, 8, 8, generator=g)  # contrast
    plain, _, _ = VoxelTarget((4, 8, 8))(x)
    floored, _, _ = VoxelTarget((4, 8, 8), floor=0.1)(x)
    power = lambda t: (t**2).mean(-1)[0]  # noqa: E731
    assert power(plain).tolist() == pytest.approx([1.0, 1.0], abs=1e-2)
    assert float(power(floored)[0]) < 0.05 and float(power(floored)[1]) > 0.95


@pytest.mark.parametrize("kw", [{}, {"target_sigma": (1, 1, 1), "target_pool": (2, 2, 2)}])
def test_mse_is_relative_to_the_patch_mean_predictor(kw):
    torch.manual_seed(0)
    enc = ViTEncoder(1, (8, 16, 16), (4, 8, 8), **TINY)
    mae = MaskedAutoencoder(enc, decoder_dim=16, decoder_layers=1, decoder_heads=2, **kw)
    x = torch.randn(2, 1, 8, 16, 16)
    mask = torch.tensor([[1, 0, 1, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        pred, losses = mae(x, mask)
    t = losses["targets"]["voxels"]
    assert pred.shape == t.shape
    m = mask.float()
    zero, zero_pp = relative_loss(torch.zeros_like(t), t, m)  # the patch means
    assert float(zero) == pytest.approx(1.0) and torch.allclose(zero_pp, torch.ones(2, 8))
    perfect, _ = relative_loss(t, t, m)
    assert float(perfect) == 0.0
    # the reported mse is that ratio for the network's own prediction
    assert float(losses["mse"]) == pytest.approx(float(relative_loss(pred, t, m)[0]), rel=1e-5)
    blank, recon = mae.reconstruction(x, mask, pred, losses["targets"])
    assert recon.shape == x.shape


def test_bad_target_settings_name_the_field(tmp_path, capsys):
    cfg = _config(tmp_path)
    assert main("pretrain", [str(cfg), "--set", "pretrain.target_pool=[3,1,1]"]) == 2
    assert capsys.readouterr().err.startswith("error: pretrain.target_pool:")
    assert main("pretrain", [str(cfg), "--set", "pretrain.target_sigma=[-1,0,0]"]) == 2
    assert capsys.readouterr().err.startswith("error: pretrain.target_sigma:")
    assert not (tmp_path / "run").exists()


def test_resume_across_a_target_change_is_refused(tmp_path):
    a = Pretrainer(load_config(_config(tmp_path)))
    b = Pretrainer(load_config(_config(tmp_path, target_pool=[2, 2, 2])))
    with pytest.raises(ConfigError) as e:
        b.load_state_dict(a.state_dict(), "ckpt")
    assert e.value.where == "pretrain.target_pool"


def test_decoder_local_prior_keeps_items_independent_of_padding():
    torch.manual_seed(0)
    enc = ViTEncoder(1, (8, 16, 16), (4, 8, 8), **TINY)
    mae = MaskedAutoencoder(
        enc, decoder_dim=16, decoder_layers=1, decoder_heads=2, decoder_local=True
    ).eval()
    assert "decoder_local.weight" in mae.state_dict()
    x = torch.randn(2, 1, 8, 16, 16)
    mask = torch.tensor([[1, 0, 1, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        pred, _ = mae(x, mask)
        for b in range(2):
            alone, _ = mae(x[b : b + 1], mask[b : b + 1])
            assert torch.allclose(pred[b], alone[0], atol=1e-5)
        # a masked patch's voxels never reach the prediction (only visible tokens are seen)
        y = x.clone()
        y[0, :, 0:4, 0:8, 0:8] += 5.0  # patch 0 of item 0 is masked
        again, _ = mae(y, mask)
    assert torch.allclose(again[0], pred[0], atol=1e-5)
