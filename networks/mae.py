"""Masked autoencoder around the shared :class:`~marlseg.networks.vit.ViTEncoder`.

The encoder sees only the visible patches; a lightweight transformer decoder (monai
``TransformerBlock``) gets the encoded visible tokens back at their places, a learned mask token
everywhere else, and its own position embedding, and predicts two targets per patch:

* **voxels**: the patch's voxels, optionally smoothed and downsampled, normalised per patch
  (:mod:`marlseg.networks.voxel_target`; by default MAE's "normalised pixel" target);
* **HOG**: the patch's HOG feature (:mod:`marlseg.networks.hog`), standardised per patch.

Both targets are centred per patch, so predicting 0 is predicting each patch's mean. Each loss
is reported *relative* to that predictor: per patch ``mean((pred - t)^2) / mean(t^2)``
(``*_per_patch``), and over the masked patches of a batch the ratio of the sums (``mse``,
``hog``; low-contrast patches weigh less when the target's normalisation has a floor). 1 is
"the context explained nothing", 0 a perfect reconstruction. The MARL reward
(:mod:`marlseg.networks.marl`) relies on this scale.

``mask``: ``(B, N)`` bool, True = masked (hidden from the encoder). Batch items may hide
different numbers of patches (the MARL policy's choice); the visible tokens are then padded to
the largest count and the padding is excluded from attention.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.blocks import TransformerBlock
from torch import nn

from marlseg.networks.hog import hog_dim, hog_features
from marlseg.networks.vit import ViTEncoder, patchify, unpatchify
from marlseg.networks.voxel_target import VoxelTarget

NORM_EPS = 1e-6


def standardise(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-patch standardisation of ``(B, N, D)``: ``((t - mean) / std, mean, std)``."""
    mean = t.mean(-1, keepdim=True)
    std = torch.sqrt(t.var(-1, keepdim=True, unbiased=False) + NORM_EPS)
    return (t - mean) / std, mean, std


def sincos_embedding(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """``(N, dim)`` 3D sine-cosine position embedding of a patch grid in token order (z-major):
    a third of the channels per axis (sine and cosine pairs over geometric frequencies), zero
    padding when ``dim`` is not a multiple of 6."""
    per_axis = (dim // 6) * 2
    freqs = 1.0 / (
        10000 ** (torch.arange(per_axis // 2, dtype=torch.float32) / max(1, per_axis // 2))
    )
    coords = torch.stack(
        torch.meshgrid(*(torch.arange(g, dtype=torch.float32) for g in grid), indexing="ij"), -1
    ).reshape(-1, 3)
    parts = []
    for axis in range(3):
        angle = coords[:, axis : axis + 1] * freqs[None]
        parts += [torch.sin(angle), torch.cos(angle)]
    emb = torch.cat(parts, -1)
    return torch.nn.functional.pad(emb, (0, dim - emb.shape[1]))


def relative_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared error relative to the patch-mean predictor (0, the targets are centred):
    ``(sum over masked patches of error / sum of mean(t^2), per-patch error / mean(t^2))``."""
    err = ((pred - target) ** 2).mean(-1)
    ref = (target**2).mean(-1)
    total = (err * mask).sum() / (ref * mask).sum().clamp(min=NORM_EPS)
    return total, err / ref.clamp(min=NORM_EPS)


def visible_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep_index, keep_valid)`` of the visible patches of ``mask`` ``(B, N)``, padded to the
    largest visible count in the batch."""
    n_visible = (~mask).sum(1)
    k = int(n_visible.max())
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # visible first, in order
    keep = order[:, :k]
    valid = torch.arange(k, device=mask.device)[None, :] < n_visible[:, None]
    return keep, valid


class MaskedAutoencoder(nn.Module):
    """MAE with a voxel and a HOG head.

    Args:
        encoder: the shared ViT encoder (saved under ``encoder.*`` in the state dict, so the
            UNETR loads it key for key).
        decoder_dim, decoder_layers, decoder_heads: the decoder (lightweight: MAE uses a
            decoder much narrower and shallower than the encoder).
        hog_bins, hog_cell: the HOG target (see :mod:`marlseg.networks.hog`).
        hog_weight: weight of the HOG loss in ``losses["loss"]`` (0 disables the HOG head's
            loss; the head is still built so checkpoints keep one layout).
        target_sigma, target_pool, target_floor: the voxel target (see
            :class:`~marlseg.networks.voxel_target.VoxelTarget`).
        decoder_local: add a 3x3x3 convolution over the visible tokens on the patch grid to
            every decoder token (a locality prior: a masked patch sees its neighbours from the
            first iteration instead of after attention has learned where they are).
    """

    def __init__(
        self,
        encoder: ViTEncoder,
        decoder_dim: int = 128,
        decoder_layers: int = 2,
        decoder_heads: int = 4,
        hog_bins: int = 9,
        hog_cell: int = 4,
        hog_weight: float = 1.0,
        target_sigma: tuple[float, float, float] = (0.0, 0.0, 0.0),
        target_pool: tuple[int, int, int] = (1, 1, 1),
        target_floor: float = 0.0,
        decoder_local: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.hog_bins, self.hog_cell, self.hog_weight = hog_bins, hog_cell, float(hog_weight)
        self.voxel_target = VoxelTarget(encoder.patch_size, target_sigma, target_pool, target_floor)
        n, d = encoder.num_patches, decoder_dim
        self.decoder_embed = nn.Linear(encoder.hidden_size, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.decoder_pos = nn.Parameter(torch.zeros(1, n, d))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        with torch.no_grad():  # start from distances that mean something (MAE's fixed sincos)
            self.decoder_pos.copy_(sincos_embedding(encoder.grid, d)[None])
        self.decoder_blocks = nn.ModuleList(
            TransformerBlock(d, 4 * d, decoder_heads, qkv_bias=True) for _ in range(decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(d)
        self.decoder_local = nn.Conv3d(d, d, 3, padding=1) if decoder_local else None
        self.voxel_head = nn.Linear(d, self.voxel_target.dim * encoder.in_channels)
        self.hog_head = nn.Linear(d, hog_dim(encoder.patch_size, hog_bins, hog_cell))

    def targets(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised voxel and HOG targets ``(B, N, ·)`` plus the voxel target's mean and
        scale per patch (to turn predictions back into intensities)."""
        vox, mean, std = self.voxel_target(x)
        hog, _, _ = standardise(
            hog_features(x, self.encoder.patch_size, self.hog_bins, self.hog_cell)
        )
        return {"voxels": vox, "hog": hog, "mean": mean, "std": std}

    def decode(self, tokens: torch.Tensor, keep: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        dec = self.decoder_embed(tokens)
        dec = torch.where(valid[..., None], dec, self.mask_token.to(dec.dtype))
        full = self.mask_token.expand(b, self.encoder.num_patches, -1).clone()
        full = full.scatter(1, keep[..., None].expand(-1, -1, dec.shape[-1]), dec)
        if self.decoder_local is not None:
            # each token also gets a learned function of its visible neighbours (3^3 on the
            # patch grid; masked and padding tokens contribute zeros)
            seen = torch.zeros_like(full).scatter(
                1, keep[..., None].expand(-1, -1, dec.shape[-1]), dec * valid[..., None]
            )
            grid = seen.transpose(1, 2).reshape(b, -1, *self.encoder.grid)
            full = full + self.decoder_local(grid).flatten(2).transpose(1, 2)
        full = full + self.decoder_pos
        for blk in self.decoder_blocks:
            full = blk(full)
        return self.decoder_norm(full)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Reconstruct the masked patches of ``x`` ``(B, C, Z, Y, X)``.

        Returns:
            ``(pred_voxels, losses)``: the predicted voxel target of every patch
            ``(B, N, target voxels)`` and a dict with the scalar relative losses ``mse``,
            ``hog`` and ``loss`` (= mse + hog_weight * hog, what to minimise), the per-patch
            relative losses ``mse_per_patch`` / ``hog_per_patch`` ``(B, N)`` (masked or not),
            the HOG prediction ``pred_hog`` and the ``targets``.
        """
        mask = mask.to(torch.bool)
        if mask.shape != (x.shape[0], self.encoder.num_patches):
            raise ValueError(
                f"mask must be (B, {self.encoder.num_patches}), got {tuple(mask.shape)}"
            )
        if bool(mask.all(1).any()):
            raise ValueError("every batch item needs at least one visible patch")
        keep, valid = visible_index(mask)
        tokens, _ = self.encoder(x, keep_index=keep, keep_valid=valid)
        dec = self.decode(tokens, keep, valid)
        pred_vox = self.voxel_head(dec)
        pred_hog = self.hog_head(dec)
        with torch.no_grad():
            tgt = self.targets(x)
        m = mask.to(pred_vox.dtype)
        mse, mse_pp = relative_loss(pred_vox, tgt["voxels"], m)
        hog, hog_pp = relative_loss(pred_hog, tgt["hog"], m)
        losses = {
            "loss": mse + self.hog_weight * hog,
            "mse": mse,
            "hog": hog,
            "mse_per_patch": mse_pp,
            "hog_per_patch": hog_pp,
            "pred_hog": pred_hog,
            "targets": tgt,
        }
        return pred_vox, losses

    def reconstruction(
        self, x: torch.Tensor, mask: torch.Tensor, pred_voxels: torch.Tensor, targets: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked_input, reconstruction)`` volumes like ``x``: the input with masked patches
        blanked (set to the volume minimum), and the input with masked patches replaced by the
        prediction, de-normalised with the true patch mean and scale (as MAE visualises) and
        brought back to full resolution (nearest) when the target is pooled."""
        patches = self.encoder.patchify(x)
        pred = pred_voxels * targets["std"] + targets["mean"]
        vt = self.voxel_target
        if vt.pool != (1, 1, 1):
            grid = self.encoder.grid
            vol = unpatchify(pred, vt.target_patch, grid, x.shape[1])
            for axis, f in enumerate(vt.pool):
                vol = vol.repeat_interleave(f, dim=2 + axis)
            pred = patchify(vol, self.encoder.patch_size)
        m = mask[..., None].to(patches.dtype)
        recon = patches * (1 - m) + pred * m
        blank = patches * (1 - m) + m * patches.min()
        return self.encoder.unpatchify(blank), self.encoder.unpatchify(recon)
