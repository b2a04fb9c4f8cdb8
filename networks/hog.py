"""Histogram-of-oriented-gradients (HOG) target for masked image modelling, in torch.

Computed on the batch, on the device, with no learnable part. The exact definition:

1. **Sections.** HOG is 2D, computed on every z-section separately (the y-x plane), for
   isotropic and anisotropic patches alike: a ``(pz, py, px)`` patch has ``pz`` sections.
   Gradients never cross sections, so ssTEM's large z step and section defects do not leak in.
2. **Gradient operator.** Central differences, ``g_x = I(y, x+1) - I(y, x-1)`` and
   ``g_y = I(y+1, x) - I(y-1, x)`` (kernel ``[-1, 0, 1]``), with replicate padding at the
   volume border; the patch borders are *not* borders (the target describes the true image).
3. **Orientation and magnitude.** Unsigned orientation ``theta = atan2(g_y, g_x) mod pi`` in
   ``[0, pi)``, magnitude ``m = sqrt(g_x^2 + g_y^2)``. ``y`` is the array's row index.
4. **Bins.** ``bins`` orientation bins (default 9, 20 degrees each) centred on
   ``k * pi / bins``, ``k = 0 .. bins-1`` (bin 0 is centred on horizontal gradients, i.e.
   vertical edges). Each voxel votes ``m`` split linearly between its two nearest bin centres,
   wrapping around at ``pi``.
5. **Cells.** Votes are averaged over ``cell x cell`` voxel cells in y-x (``cell`` must divide
   the patch's ``py`` and ``px``), per section.
6. **Normalisation.** Within a patch, each section's cell histograms (``py/cell * px/cell *
   bins`` values) are L2-normalised together: ``h / sqrt(|h|^2 + eps^2)``, ``eps = 1e-3``
   (Dalal-Triggs block normalisation, with the block = one section of the patch). Contrast
   changes between sections therefore do not change the target.

The per-patch feature has ``pz * (py/cell) * (px/cell) * bins`` values, ordered
``(section, cell_y, cell_x, bin)``. (The MAE additionally standardises it per patch before the
loss; see :mod:`marlseg.networks.mae`.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

EPS = 1e-3


def gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-section central differences of ``x`` ``(B, 1, Z, Y, X)``: ``(g_y, g_x)``."""
    b, c, z, y, xx = x.shape
    s = x.permute(0, 2, 1, 3, 4).reshape(b * z, c, y, xx)
    s = F.pad(s, (1, 1, 1, 1), mode="replicate")
    gx = s[..., 1:-1, 2:] - s[..., 1:-1, :-2]
    gy = s[..., 2:, 1:-1] - s[..., :-2, 1:-1]
    back = lambda g: g.reshape(b, z, c, y, xx).permute(0, 2, 1, 3, 4)  # noqa: E731
    return back(gy), back(gx)


def orientation_votes(x: torch.Tensor, bins: int = 9) -> torch.Tensor:
    """Per-voxel soft orientation histogram ``(B, bins, Z, Y, X)`` of a one-channel volume."""
    if x.shape[1] != 1:
        raise ValueError(f"HOG expects one channel, got {x.shape[1]}")
    gy, gx = gradients(x.float())
    mag = torch.sqrt(gx * gx + gy * gy)
    theta = torch.remainder(torch.atan2(gy, gx), math.pi)
    u = theta / (math.pi / bins)  # position in bin units; centres at integers
    lo = torch.floor(u)
    w_hi = u - lo
    lo = torch.remainder(lo.long(), bins)
    hi = torch.remainder(lo + 1, bins)
    votes = torch.zeros(x.shape[0], bins, *x.shape[2:], device=x.device, dtype=mag.dtype)
    votes.scatter_add_(1, lo, mag * (1.0 - w_hi))
    votes.scatter_add_(1, hi, mag * w_hi)
    return votes


def hog_features(
    x: torch.Tensor, patch_size: Sequence[int], bins: int = 9, cell: int = 4
) -> torch.Tensor:
    """HOG feature of every patch: ``(B, N, pz * (py/cell) * (px/cell) * bins)``, patches in
    the ViT's token order (z-major). See the module docstring for the definition."""
    pz, py, px = (int(p) for p in patch_size)
    if py % cell or px % cell:
        raise ValueError(f"HOG cell {cell} must divide the patch's y and x sizes ({py}, {px})")
    b, _, z, y, xx = x.shape
    if z % pz or y % py or xx % px:
        raise ValueError(f"input {tuple(x.shape[2:])} is not a multiple of patch {patch_size}")
    votes = orientation_votes(x, bins)
    cells = F.avg_pool3d(votes, kernel_size=(1, cell, cell), stride=(1, cell, cell))
    gz, gy, gx = z // pz, y // py, xx // px
    cy, cx = py // cell, px // cell
    h = cells.reshape(b, bins, gz, pz, gy, cy, gx, cx)
    h = h.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b, gz, gy, gx, pz, cy, cx, bins
    h = h.reshape(b, gz * gy * gx, pz, cy * cx * bins)
    h = h / torch.sqrt((h * h).sum(-1, keepdim=True) + EPS * EPS)
    return h.reshape(b, gz * gy * gx, pz * cy * cx * bins)


def hog_dim(patch_size: Sequence[int], bins: int = 9, cell: int = 4) -> int:
    """Length of one patch's HOG feature."""
    pz, py, px = patch_size
    return int(pz * (py // cell) * (px // cell) * bins)
