"""Masked autoencoder around the shared :class:`~marlseg.networks.vit.ViTEncoder`.

The encoder sees only the visible patches; a lightweight transformer decoder (monai
``TransformerBlock``) gets the encoded visible tokens back at their places, a learned mask token
everywhere else, and its own position embedding, and predicts two targets per patch:

* **voxels**: the patch's voxels standardised per patch (zero mean, unit variance: MAE's
  "normalised pixel" target); loss = mean squared error;
* **HOG**: the patch's HOG feature (:mod:`marlseg.networks.hog`), also standardised per patch;
  loss = mean squared error.

Both losses count the *masked* patches only. Because both targets are standardised per patch,
predicting the patch mean (knowing nothing) costs about 1 per patch, a perfect prediction 0:
a per-patch loss reads as the fraction of the patch's variance the context did not explain.
The MARL reward (:mod:`marlseg.networks.marl`) relies on this scale.

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
from marlseg.networks.vit import ViTEncoder

NORM_EPS = 1e-6


def standardise(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-patch standardisation of ``(B, N, D)``: ``((t - mean) / std, mean, std)``."""
    mean = t.mean(-1, keepdim=True)
    std = torch.sqrt(t.var(-1, keepdim=True, unbiased=False) + NORM_EPS)
    return (t - mean) / std, mean, std


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
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.hog_bins, self.hog_cell, self.hog_weight = hog_bins, hog_cell, float(hog_weight)
        n, d = encoder.num_patches, decoder_dim
        self.decoder_embed = nn.Linear(encoder.hidden_size, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.decoder_pos = nn.Parameter(torch.zeros(1, n, d))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)
        self.decoder_blocks = nn.ModuleList(
            TransformerBlock(d, 4 * d, decoder_heads, qkv_bias=True) for _ in range(decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(d)
        self.voxel_head = nn.Linear(d, encoder.patch_voxels * encoder.in_channels)
        self.hog_head = nn.Linear(d, hog_dim(encoder.patch_size, hog_bins, hog_cell))

    def targets(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Standardised voxel and HOG targets ``(B, N, ·)`` plus the voxel mean/std per patch
        (to turn predictions back into intensities)."""
        vox, mean, std = standardise(self.encoder.patchify(x))
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
        full = full + self.decoder_pos
        for blk in self.decoder_blocks:
            full = blk(full)
        return self.decoder_norm(full)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Reconstruct the masked patches of ``x`` ``(B, C, Z, Y, X)``.

        Returns:
            ``(pred_voxels, losses)``: predicted standardised voxels of every patch
            ``(B, N, patch voxels)`` and a dict with the scalar losses ``mse``, ``hog`` and
            ``loss`` (= mse + hog_weight * hog, what to minimise), the per-patch losses
            ``mse_per_patch`` / ``hog_per_patch`` ``(B, N)`` (masked or not), the HOG
            prediction ``pred_hog`` and the ``targets``.
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
        mse_pp = ((pred_vox - tgt["voxels"]) ** 2).mean(-1)
        hog_pp = ((pred_hog - tgt["hog"]) ** 2).mean(-1)
        m = mask.to(mse_pp.dtype)
        n_masked = m.sum().clamp(min=1.0)
        mse = (mse_pp * m).sum() / n_masked
        hog = (hog_pp * m).sum() / n_masked
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
        prediction, de-standardised with the true patch mean and std (as MAE visualises)."""
        patches = self.encoder.patchify(x)
        pred = pred_voxels * targets["std"] + targets["mean"]
        m = mask[..., None].to(patches.dtype)
        recon = patches * (1 - m) + pred * m
        blank = patches * (1 - m) + m * patches.min()
        return self.encoder.unpatchify(blank), self.encoder.unpatchify(recon)
