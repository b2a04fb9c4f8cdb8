"""The shared networks: the per-axis-patch ViT encoder and the UNETR built on it."""

from __future__ import annotations

import math

import pytest
import torch

from marlseg.config import NetworkConfig
from marlseg.errors import ConfigError
from marlseg.networks.unetr import (
    UNETR,
    build_encoder,
    build_unetr,
    load_encoder,
    upsampling_factors,
)
from marlseg.networks.vit import ViTEncoder

torch.set_num_threads(1)

TINY = dict(hidden_size=24, mlp_dim=32, num_layers=2, num_heads=2)

CASES = [
    # (patch size, input shapes)
    ((16, 16, 16), [(16, 16, 16), (32, 32, 16)]),
    ((4, 16, 16), [(4, 16, 16), (8, 32, 48)]),
    ((4, 8, 8), [(8, 16, 16), (12, 8, 24)]),
]


@pytest.mark.parametrize("patch", [c[0] for c in CASES])
def test_upsampling_factors_multiply_to_patch(patch):
    factors = upsampling_factors(patch)
    assert len(factors) == 4
    for axis, p in enumerate(patch):
        assert math.prod(f[axis] for f in factors) == p
    # coarse stages up-sample at least as much as fine ones (z first at coarse stages)
    for axis in range(3):
        col = [f[axis] for f in factors]
        assert col == sorted(col, reverse=True)


def test_upsampling_factors_more_factors_than_stages():
    factors = upsampling_factors((32, 1, 12))
    assert [math.prod(f[a] for f in factors) for a in range(3)] == [32, 1, 12]


@pytest.mark.parametrize("patch,shapes", CASES)
def test_unetr_output_shapes(patch, shapes):
    for shape in shapes:
        net = UNETR(1, 3, shape, patch, feature_size=4, **TINY)
        x = torch.randn(2, 1, *shape)
        with torch.no_grad():
            y = net(x)
        assert y.shape == (2, 3, *shape)
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0  # sigmoid affinities
        grid = tuple(s // p for s, p in zip(shape, patch))
        assert net.encoder.grid == grid
        assert net.encoder.num_patches == math.prod(grid)


def test_unetr_logits_mode():
    net = UNETR(1, 2, (8, 16, 16), (4, 8, 8), feature_size=4, final_activation=None, **TINY)
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        logits = net(x)
    assert torch.allclose(torch.sigmoid(logits), torch.sigmoid(net.logits(x)))
    assert float(logits.min()) < 0.0 or float(logits.max()) > 1.0


@pytest.mark.parametrize("patch,shapes", CASES)
def test_patchify_roundtrip_and_token_order(patch, shapes):
    shape = shapes[-1]
    enc = ViTEncoder(1, shape, patch, **TINY)
    x = torch.randn(2, 1, *shape)
    p = enc.patchify(x)
    assert p.shape == (2, enc.num_patches, math.prod(patch))
    assert torch.equal(enc.unpatchify(p), x)
    # token i of patchify is the patch the conv embedding puts at token i: mark one patch
    gz, gy, gx = enc.grid
    i = enc.num_patches - 2
    z, y, xx = i // (gy * gx), (i // gx) % gy, i % gx
    marked = torch.zeros(1, 1, *shape)
    pz, py, px = patch
    marked[..., z * pz : (z + 1) * pz, y * py : (y + 1) * py, xx * px : (xx + 1) * px] = 1.0
    assert enc.patchify(marked)[0].sum(-1).nonzero().flatten().tolist() == [i]
    with torch.no_grad():
        a = enc.embed(marked) - enc.embed(torch.zeros_like(marked))
    assert a[0].abs().sum(-1).nonzero().flatten().tolist() == [i]


def test_encoder_keep_index_encodes_only_kept_tokens():
    enc = ViTEncoder(1, (8, 16, 16), (4, 8, 8), **TINY).eval()
    x = torch.randn(2, 1, 8, 16, 16)
    keep = torch.tensor([[0, 3, 5], [1, 2, 7]])
    tokens, hidden = enc(x, keep_index=keep)
    assert tokens.shape == (2, 3, 24)
    assert len(hidden) == TINY["num_layers"]
    full, _ = enc(x)
    assert full.shape == (2, enc.num_patches, 24)
    # encoding a subset is not the same as encoding everything and picking (attention differs)
    assert not torch.allclose(tokens[0], full[0, keep[0]])
    # but a token's result does not depend on which *other* batch item is alongside
    single, _ = enc(x[1:], keep_index=keep[1:])
    assert torch.allclose(single[0], tokens[1], atol=1e-5)


def _checkpoint(tmp_path, encoder: ViTEncoder, network: NetworkConfig, kind="mae"):
    # an MAE-like model: the encoder under "encoder." plus decoder weights
    model = torch.nn.Module()
    model.encoder = encoder
    model.decoder = torch.nn.Linear(network.hidden_size, 5)
    path = tmp_path / "mae.pt"
    torch.save(
        {
            "kind": kind,
            "network": network.model_dump(mode="json"),
            "model": model.state_dict(),
            "iteration": 3,
        },
        path,
    )
    return path


def test_encoder_roundtrips_into_unetr(tmp_path):
    network = NetworkConfig(patch_size=[4, 8, 8], input_shape=[8, 16, 16], feature_size=4, **TINY)
    encoder = build_encoder(network)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn_like(p))
    path = _checkpoint(tmp_path, encoder, network)
    unetr = build_unetr(network, out_channels=3)
    before = {k: v.clone() for k, v in unetr.state_dict().items() if not k.startswith("encoder.")}
    ckpt = load_encoder(unetr, path)
    assert ckpt["iteration"] == 3
    for k, v in encoder.state_dict().items():
        assert torch.equal(unetr.encoder.state_dict()[k], v), k
    for k, v in unetr.state_dict().items():  # the decoder is untouched
        if not k.startswith("encoder."):
            assert torch.equal(before[k], v), k
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        assert torch.allclose(unetr.encoder(x)[0], encoder(x)[0])


def test_load_encoder_mismatch_names_checkpoint(tmp_path):
    small = NetworkConfig(patch_size=[4, 8, 8], input_shape=[8, 16, 16], **TINY)
    path = _checkpoint(tmp_path, build_encoder(small), small)
    other = NetworkConfig(
        patch_size=[4, 8, 8], input_shape=[8, 16, 16], **{**TINY, "hidden_size": 32}
    )
    with pytest.raises(ConfigError) as e:
        load_encoder(build_unetr(other, 3), path)
    assert "mae.pt" in str(e.value) and "shape" in str(e.value)
    deeper = NetworkConfig(
        patch_size=[4, 8, 8], input_shape=[8, 16, 16], **{**TINY, "num_layers": 3}
    )
    with pytest.raises(ConfigError, match="missing key"):
        load_encoder(build_unetr(deeper, 3), path)
    with pytest.raises(ConfigError, match="not found"):
        load_encoder(build_unetr(small, 3), tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="junk.pt"):
        load_encoder(build_unetr(small, 3), tmp_path / "junk.pt")


@pytest.mark.parametrize("patch,shape", [((4, 16, 16), (8, 32, 32)), ((16, 16, 16), (16, 16, 32))])
def test_gradient_step_lowers_loss(patch, shape):
    torch.manual_seed(0)
    net = UNETR(1, 3, shape, patch, feature_size=4, **TINY)
    x = torch.randn(2, 1, *shape)
    target = (x > 0).float().expand(-1, 3, -1, -1, -1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = loss_fn(net.logits(x), target)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    # gradients reach the encoder's first layer through the decoder and skips
    assert net.encoder.patch_embedding.patch_embeddings.weight.grad.abs().sum() > 0
    assert losses[-1] < losses[0]
