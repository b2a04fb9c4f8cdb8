"""Labelling a volume: every tile of every z-section is one greedy game; the patches the
players select (the ROI) are left out of the mask written, which says where to segment.

The mask (uint8, same voxel size and offset as ``raw``) is 1 where the blockwise stages should
work and 0 on the ROI (imaging defects, empty resin). Region by region, so memory stays bounded
whatever the volume size.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array

from marlseg.networks.weak_labels import PatchPolicy, PresenceDetector
from marlseg.volumes import write
from marlseg.weak_labels.detector import tile_inputs
from marlseg.weak_labels.training import select_patches


def patches_to_mask(selected: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """Selected patches ``(..., gh, gw)`` -> pixel mask ``(..., gh*py, gw*px)``."""
    py, px = patch
    return np.repeat(np.repeat(selected, py, axis=-2), px, axis=-1)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def read_window(src: Any, z: tuple[int, int], y: tuple[int, int], x: tuple[int, int]) -> np.ndarray:
    """Voxels ``[z0:z1, y0:y1, x0:x1]`` of a (z, y, x) store; y/x beyond its edges are
    filled by reflection (padding a section with zeros would look like membrane)."""
    ny, nx = src.shape[-2:]
    ys, xs = (max(y[0], 0), min(y[1], ny)), (max(x[0], 0), min(x[1], nx))
    img = np.asarray(src[z[0] : z[1], ys[0] : ys[1], xs[0] : xs[1]])
    pads = [(0, 0), (ys[0] - y[0], y[1] - ys[1]), (xs[0] - x[0], x[1] - xs[1])]
    while any(p for pair in pads[1:] for p in pair):
        # np.pad's reflect needs pad < size: pad in steps
        step = [(0, 0)] + [
            (min(lo, d - 1), min(hi, d - 1)) for (lo, hi), d in zip(pads[1:], img.shape[1:])
        ]
        mode = "reflect" if min(img.shape[1:]) > 1 else "edge"
        img = np.pad(img, step, mode=mode)
        pads = [(0, 0)] + [(lo - a, hi - b) for (lo, hi), (a, b) in zip(pads[1:], step[1:])]
    return img


def tile_origins(shape_yx: Sequence[int], tile: Sequence[int]) -> Iterator[tuple[int, int]]:
    for y in range(0, int(shape_yx[0]), int(tile[0])):
        for x in range(0, int(shape_yx[1]), int(tile[1])):
            yield y, x


def sample_tiles(
    raw: Array, tile: Sequence[int], context: int, max_tiles: int, rng: np.random.Generator
) -> np.ndarray:
    """Up to ``max_tiles`` game tiles with their context margin, ``(N, ty + 2c, tx + 2c)``,
    from random sections and grid places of ``raw``."""
    nz, ny, nx = raw.shape[-3:]
    places = [(z, y, x) for z in range(nz) for y, x in tile_origins((ny, nx), tile)]
    pick = rng.permutation(len(places))[:max_tiles]
    c, (ty, tx) = int(context), tile
    out = []
    for i in sorted(pick.tolist()):
        z, y, x = places[i]
        out.append(
            read_window(raw._source_data, (z, z + 1), (y - c, y + ty + c), (x - c, x + tx + c))[0]
        )
    return np.stack(out)


def mask_sections(
    det: PresenceDetector,
    policy: PatchPolicy,
    block: np.ndarray,
    *,
    patch: Sequence[int],
    tile: Sequence[int],
    context: int,
    levels: tuple[float, float] = (0.9, 0.1),
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """The selected patches as voxels (uint8, 1 = ROI) of sections ``block (n, H + 2c, W + 2c)`` given with
    their ``context`` margin, H and W multiples of ``tile``: every tile is one greedy game of
    ``policy`` against itself."""
    c = int(context)
    ty, tx = (int(t) for t in tile)
    n, h, w = block.shape
    h, w = h - 2 * c, w - 2 * c
    where = list(tile_origins((h, w), tile))
    # (tiles * sections, ty + 2c, tx + 2c), tile-major
    stack = np.concatenate(
        [block[:, oy : oy + ty + 2 * c, ox : ox + tx + 2 * c] for oy, ox in where]
    )
    scores, feats = tile_inputs(det, stack, patch, c, device)
    sel = select_patches(policy, scores, feats, levels=levels, device=device)
    masks = patches_to_mask(sel, patch).astype(np.uint8)
    mask = np.zeros((n, h, w), np.uint8)
    for i, (oy, ox) in enumerate(where):
        mask[:, oy : oy + ty, ox : ox + tx] = masks[i * n : (i + 1) * n]
    return mask


def label_volume(
    raw: Array,
    out: Array,
    det: PresenceDetector,
    policy: PatchPolicy,
    *,
    patch: Sequence[int],
    tile: Sequence[int],
    context: int,
    levels: tuple[float, float] = (0.9, 0.1),
    region: Sequence[int],
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Play every ``tile`` of every z-section of ``raw`` and write where to segment to ``out``
    (uint8: 0 on the selected patches, the ROI; 1 elsewhere). Works region by region (``region``: z, y, x voxels, a multiple of
    ``tile`` in y and x), so memory stays bounded whatever the volume size. Tiles reaching
    past the volume's edge are completed by reflection and cropped again."""
    vs = Coordinate(raw.voxel_size)
    begin = Coordinate(raw.roi.begin)
    nz, ny, nx = raw.shape[-3:]
    rz, ry, rx = (int(r) for r in region)
    c = int(context)
    selected_voxels = 0
    regions = [
        (z, y, x) for z in range(0, nz, rz) for y in range(0, ny, ry) for x in range(0, nx, rx)
    ]
    for k, (z, y, x) in enumerate(regions):
        shape = (min(rz, nz - z), min(ry, ny - y), min(rx, nx - x))
        padded = [int(math.ceil(s / t) * t) for s, t in zip(shape[1:], tile)]
        block = read_window(
            raw._source_data,
            (z, z + shape[0]),
            (y - c, y + padded[0] + c),
            (x - c, x + padded[1] + c),
        )
        mask = mask_sections(
            det,
            policy,
            block,
            patch=patch,
            tile=tile,
            context=c,
            levels=levels,
            device=device,
        )
        mask = mask[:, : shape[1], : shape[2]]
        write(out, Roi(begin + Coordinate((z, y, x)) * vs, Coordinate(shape) * vs), 1 - mask)
        selected_voxels += int(mask.sum())
        if log and (k + 1) % max(1, len(regions) // 10) == 0:
            log(f"mask: region {k + 1}/{len(regions)}")
    total = nz * ny * nx
    roi = selected_voxels / max(total, 1)
    return {"voxels": total, "selected_fraction": roi, "kept_fraction": 1.0 - roi}


def save_checkpoint(path: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["state_dict"], ckpt["meta"]


def fingerprint(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
