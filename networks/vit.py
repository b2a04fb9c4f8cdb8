"""A 3D ViT encoder with a per-axis patch size, shared by MAE pretraining and the UNETR.

The patch size is set per axis (``(16, 16, 16)`` isotropic FIB-SEM, ``(4, 16, 16)`` or
``(4, 8, 8)`` anisotropic ssTEM), so a token covers a world-space region of similar extent on
every axis. The encoder is built from monai blocks: :class:`~monai.networks.blocks.
PatchEmbeddingBlock` (a strided conv whose kernel and stride are the patch size, plus a position
embedding per patch) and a stack of :class:`~monai.networks.blocks.TransformerBlock`.

Two ways through it:

* all tokens (``keep_index=None``): the UNETR path; every layer's output is returned for the
  decoder's skip connections;
* only the visible tokens (``keep_index`` of shape ``(B, K)``): the MAE path. Masked tokens are
  removed *after* the position embedding is added, so each kept token still knows where it is,
  and the transformer attends over ``K`` tokens only (the cost of a masked step shrinks with
  the mask ratio).

Token order is z-major over the patch grid, ``index = (gz * Gy + gy) * Gx + gx``; the
:meth:`ViTEncoder.patchify` / :meth:`ViTEncoder.unpatchify` helpers use the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import PatchEmbeddingBlock, TransformerBlock
from torch import nn


def as_triple(v: int | Sequence[int], name: str) -> tuple[int, int, int]:
    """``v`` as three ints (z, y, x); an int is repeated."""
    t = (int(v),) * 3 if isinstance(v, int) else tuple(int(a) for a in v)
    if len(t) != 3 or any(a <= 0 for a in t):
        raise ValueError(f"{name} must be three positive ints (z, y, x), got {v}")
    return t  # type: ignore[return-value]


class ViTEncoder(nn.Module):
    """3D ViT encoder with per-axis patch size.

    Args:
        in_channels: input channels (1 for EM).
        img_size: input shape (z, y, x), voxels; a multiple of ``patch_size`` on every axis.
        patch_size: patch shape (z, y, x), voxels.
        hidden_size: token width.
        mlp_dim: width of each transformer block's MLP.
        num_layers: transformer blocks.
        num_heads: attention heads (must divide ``hidden_size``).
        dropout_rate: dropout in the embedding and the transformer blocks.
        qkv_bias: bias on the attention's qkv projection.
        pos_embed: ``"learnable"`` (monai default) or ``"sincos"`` (fixed, as in MAE; needs
            ``hidden_size`` divisible by 6).
    """

    def __init__(
        self,
        in_channels: int,
        img_size: int | Sequence[int],
        patch_size: int | Sequence[int],
        hidden_size: int = 192,
        mlp_dim: int = 384,
        num_layers: int = 4,
        num_heads: int = 4,
        dropout_rate: float = 0.0,
        qkv_bias: bool = True,
        pos_embed: str = "learnable",
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.img_size = as_triple(img_size, "img_size")
        self.patch_size = as_triple(patch_size, "patch_size")
        for i, p in zip(self.img_size, self.patch_size):
            if i % p:
                raise ValueError(
                    f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
                )
        self.grid: tuple[int, int, int] = tuple(  # type: ignore[assignment]
            i // p for i, p in zip(self.img_size, self.patch_size)
        )
        """Patches per axis (z, y, x)."""
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        self.patch_voxels = self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.patch_embedding = PatchEmbeddingBlock(
            in_channels=self.in_channels,
            img_size=self.img_size,
            patch_size=self.patch_size,
            hidden_size=self.hidden_size,
            num_heads=num_heads,
            proj_type="conv",
            pos_embed_type=pos_embed,
            dropout_rate=dropout_rate,
            spatial_dims=3,
        )
        self.blocks = nn.ModuleList(
            TransformerBlock(
                hidden_size=self.hidden_size,
                mlp_dim=mlp_dim,
                num_heads=num_heads,
                dropout_rate=dropout_rate,
                qkv_bias=qkv_bias,
            )
            for _ in range(self.num_layers)
        )
        self.norm = nn.LayerNorm(self.hidden_size)

    @property
    def position_embeddings(self) -> torch.Tensor:
        """``(1, N, hidden_size)`` position embedding of every patch, in token order."""
        return self.patch_embedding.position_embeddings

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with position embedding, ``(B, N, hidden_size)``, before any block."""
        if tuple(x.shape[2:]) != self.img_size or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input (B, {self.in_channels}, {', '.join(map(str, self.img_size))}), "
                f"got {tuple(x.shape)}"
            )
        return self.patch_embedding(x)

    def forward(
        self,
        x: torch.Tensor,
        keep_index: torch.Tensor | None = None,
        keep_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode ``x`` ``(B, C, Z, Y, X)``.

        Args:
            keep_index: optional ``(B, K)`` long tensor of the patch indices to encode (the
                visible patches of an MAE step); ``None`` encodes all ``N`` patches.
            keep_valid: optional ``(B, K)`` bool, False where ``keep_index`` is padding (batch
                items with fewer visible patches than ``K``): padded tokens are never attended
                to, so a valid token's result does not depend on the padding.

        Returns:
            ``(tokens, hidden_states)``: the final layer-normed tokens ``(B, K or N, hidden)``
            and the output of every transformer block (before the final norm), one per layer.
        """
        tokens = self.embed(x)
        if keep_index is not None:
            tokens = gather_tokens(tokens, keep_index)
        attn_mask = None
        if keep_valid is not None and not bool(keep_valid.all()):
            attn_mask = keep_valid
        hidden_states = []
        for blk in self.blocks:
            tokens = blk(tokens, attn_mask=attn_mask)
            hidden_states.append(tokens)
        return self.norm(tokens), hidden_states

    # --- patch helpers (token order = the conv embedding's flatten order) ---
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, Z, Y, X)`` -> ``(B, N, pz * py * px * C)``, voxels of a patch in z, y, x, c
        order."""
        return patchify(x, self.patch_size)

    def unpatchify(self, patches: torch.Tensor, channels: int | None = None) -> torch.Tensor:
        """Inverse of :meth:`patchify`: ``(B, N, pz * py * px * C)`` -> ``(B, C, Z, Y, X)``."""
        return unpatchify(patches, self.patch_size, self.grid, channels or self.in_channels)


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tokens[b, index[b]]`` for every batch item: ``(B, N, D)``, ``(B, K)`` -> ``(B, K, D)``."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def patchify(x: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    b, c, z, y, xx = x.shape
    pz, py, px = patch_size
    gz, gy, gx = z // pz, y // py, xx // px
    x = x.reshape(b, c, gz, pz, gy, py, gx, px)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b, gz, gy, gx, pz, py, px, c
    return x.reshape(b, gz * gy * gx, pz * py * px * c)


def unpatchify(
    patches: torch.Tensor, patch_size: Sequence[int], grid: Sequence[int], channels: int = 1
) -> torch.Tensor:
    b = patches.shape[0]
    pz, py, px = patch_size
    gz, gy, gx = grid
    x = patches.reshape(b, gz, gy, gx, pz, py, px, channels)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # b, c, gz, pz, gy, py, gx, px
    return x.reshape(b, channels, gz * pz, gy * py, gx * px)
