"""Imaging defects inserted into real EM volumes by a seeded, documented procedure.

Evaluation needs real EM with exact truth of where not to segment. Real defect annotations are
rare, so :func:`insert_defects` puts the defects large volumes are full of into a real volume
and records every voxel it changed as truth (1 = defect / not tissue):

* ``resin``: the tissue ends and empty resin begins — one side of the volume (chosen by the
  seed) beyond a wavy edge that drifts smoothly with z, covering ``resin_fraction`` of the
  width on average; resin is a flat grey with fine noise. Large volumes have much of it.
* ``missing``: a whole section lost or blank (a flat grey with noise), each section with
  probability ``missing_rate``.
* ``fold``: a dark band of 3-8 voxels across a section at a random angle (tissue folded over
  itself), per section with probability ``fold_rate``.
* ``stain``: an elliptic patch (6-18 voxels radii) of smeared, darkened, speckled stain
  (precipitate), ``stains_per_section`` per section on average.

Finally every section's brightness and contrast drift (gain ``1 +- drift``, offset ``+- 20``),
as FIB-SEM sections do; drift is no defect (truth unchanged) but makes a detector's scores
shift from section to section. The same seed gives the same volume and truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter


@dataclass(frozen=True)
class DefectSettings:
    resin_fraction: float = 0.3
    missing_rate: float = 0.05
    fold_rate: float = 0.25
    stains_per_section: float = 0.4
    drift: float = 0.15


def _flat(shape: tuple[int, ...], level: float, rng: np.random.Generator) -> np.ndarray:
    return level + rng.normal(0.0, 4.0, size=shape)


def insert_defects(
    raw: np.ndarray, seed: int, settings: DefectSettings = DefectSettings()
) -> tuple[np.ndarray, np.ndarray]:
    """``raw`` (uint8, z, y, x) with defects inserted, and the truth (uint8, 1 = defect)."""
    rng = np.random.default_rng(seed)
    vol = np.asarray(raw, dtype=np.float32).copy()
    nz, ny, nx = vol.shape
    truth = np.zeros(vol.shape, np.uint8)
    mean, std = float(vol.mean()), float(vol.std())
    yy, xx = np.mgrid[0:ny, 0:nx]

    if settings.resin_fraction > 0:
        # edge position along the chosen axis, smooth in z and along the edge
        axis = int(rng.integers(0, 2))  # 0: resin beyond an x edge, 1: beyond a y edge
        flip = bool(rng.integers(0, 2))
        length, depth = (ny, nx) if axis == 0 else (nx, ny)
        wobble = gaussian_filter(rng.normal(0, 1, size=(nz, length)), (4, 8), mode="nearest")
        wobble *= 0.08 * depth / max(wobble.std(), 1e-6)
        edge = (1 - settings.resin_fraction) * depth + wobble  # (nz, length)
        level = mean + rng.uniform(0.8, 1.5) * std
        for z in range(nz):
            along, across = (yy, xx) if axis == 0 else (xx, yy)
            across = depth - 1 - across if flip else across
            m = across >= edge[z][along]
            vol[z][m] = _flat((int(m.sum()),), level, rng)
            truth[z][m] = 1

    for z in range(nz):
        if rng.random() < settings.missing_rate:
            vol[z] = _flat((ny, nx), rng.uniform(0.2, 0.9) * 255, rng)
            truth[z] = 1
            continue
        if rng.random() < settings.fold_rate:
            angle = rng.uniform(0, np.pi)
            cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
            dist = np.abs((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle))
            m = dist < rng.uniform(1.5, 4.0)
            vol[z][m] = vol[z][m] * 0.35
            truth[z][m] = 1
        for _ in range(rng.poisson(settings.stains_per_section)):
            ry, rx = rng.uniform(6, 18, size=2)
            cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
            m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            smeared = gaussian_filter(vol[z], 2.0)
            vol[z][m] = smeared[m] - 0.8 * std + rng.normal(0, 0.4 * std, size=int(m.sum()))
            truth[z][m] = 1

    gain = 1 + rng.uniform(-settings.drift, settings.drift, size=(nz, 1, 1))
    offset = rng.uniform(-20, 20, size=(nz, 1, 1))
    vol = (vol - mean) * gain + mean + offset
    return np.clip(np.rint(vol), 0, 255).astype(np.uint8), truth
