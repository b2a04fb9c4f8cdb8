"""The MAE's voxel target: what a masked patch's voxels are reconstructed *as*.

On 10 nm FIB-SEM a patch's raw voxels are dominated by shot noise and texture that no context
predicts, so a plain "normalised pixel" target stays at the patch-mean predictor's loss (see
``docs/pretraining.md``). The target here can keep only what the context can know:

1. **smoothing**: a separable Gaussian of ``sigma`` voxels per axis (z, y, x; 0 = none) over
   the whole input (replicate padding at the input's border; patch borders are not borders);
2. **downsampling**: average pooling by ``pool`` per axis (each must divide the patch size), so
   a ``(8, 8, 8)`` patch with ``pool = (2, 2, 2)`` has a ``4 x 4 x 4`` target;
3. **per-patch normalisation**: ``(t - mean) / sqrt(var + floor^2)``. ``floor = 0`` is MAE's
   standardisation (every patch has unit variance, flat patches' noise included);
   ``floor > 0`` (in the input's [-1, 1] units) leaves low-contrast patches small instead of
   blowing their noise up to unit variance.

Whatever the target, the patch-mean predictor is 0 (the target is centred per patch), so the
loss of a prediction divided by ``mean(t^2)`` is "relative to predicting each patch's mean".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from marlseg.networks.vit import patchify

NORM_EPS = 1e-6


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised 1D Gaussian of radius ``ceil(3 sigma)``."""
    r = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def smooth(x: torch.Tensor, sigma: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian smoothing of ``(B, C, Z, Y, X)`` by ``sigma`` (z, y, x) voxels."""
    c = x.shape[1]
    for axis, s in enumerate(sigma):
        if s <= 0:
            continue
        k = gaussian_kernel(float(s)).to(x.device, x.dtype)
        r = (k.numel() - 1) // 2
        shape = [1, 1, 1]
        shape[axis] = k.numel()
        pad = [0, 0, 0, 0, 0, 0]  # x, x, y, y, z, z
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        x = F.conv3d(
            F.pad(x, pad, mode="replicate"), k.reshape(1, 1, *shape).repeat(c, 1, 1, 1, 1), groups=c
        )
    return x


class VoxelTarget:
    """Smoothing, pooling and per-patch normalisation of the voxel target (module docstring).

    Args:
        patch_size: the ViT's patch size (z, y, x).
        sigma: Gaussian sigma per axis, voxels (0 = no smoothing).
        pool: average-pooling factor per axis (divides ``patch_size``).
        floor: standard-deviation floor of the per-patch normalisation (input units).
    """

    def __init__(
        self,
        patch_size: Sequence[int],
        sigma: Sequence[float] = (0.0, 0.0, 0.0),
        pool: Sequence[int] = (1, 1, 1),
        floor: float = 0.0,
    ) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)
        self.sigma = tuple(float(s) for s in sigma)
        self.pool = tuple(int(p) for p in pool)
        self.floor = float(floor)
        if len(self.sigma) != 3 or any(s < 0 for s in self.sigma):
            raise ValueError(f"target sigma must be three values >= 0 (z, y, x), got {sigma}")
        if len(self.pool) != 3 or any(p < 1 or ps % p for p, ps in zip(self.pool, self.patch_size)):
            raise ValueError(
                f"target pool {list(pool)} must be three positive divisors of the patch size "
                f"{list(self.patch_size)}"
            )
        self.target_patch = tuple(ps // p for ps, p in zip(self.patch_size, self.pool))

    @property
    def dim(self) -> int:
        """Values per patch (and channel)."""
        return self.target_patch[0] * self.target_patch[1] * self.target_patch[2]

    def volume(self, x: torch.Tensor) -> torch.Tensor:
        """The smoothed, pooled input ``(B, C, Z / pz, Y / py, X / px)``."""
        if any(s > 0 for s in self.sigma):
            x = smooth(x, self.sigma)
        if any(p > 1 for p in self.pool):
            x = F.avg_pool3d(x, kernel_size=self.pool, stride=self.pool)
        return x

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(target, mean, scale)`` per patch, ``(B, N, dim * C)``, ``(B, N, 1)`` twice;
        ``target * scale + mean`` is the smoothed, pooled patch."""
        t = patchify(self.volume(x), self.target_patch)
        mean = t.mean(-1, keepdim=True)
        var = t.var(-1, keepdim=True, unbiased=False)
        scale = torch.sqrt(var + self.floor**2 + NORM_EPS)
        return (t - mean) / scale, mean, scale
