"""The presence detector: trained on image-level tags, it scores crops, patches and pixels.

A :class:`~marlseg.networks.weak_labels.PresenceDetector` learns "this 2D crop contains the ROI"
from tagged crops (:func:`train_detector`). It then gives the game its inputs
(:func:`tile_inputs`: a presence score per patch and the patch's image evidence) and the
baselines their maps (:func:`cam_probability`: the class activation map per pixel).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from marlseg.config import DetectorConfig
from marlseg.errors import ConfigError
from marlseg.networks.weak_labels import PresenceDetector
from marlseg.weak_labels.game import FEATURE_CHANNELS


def _augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips and (square crops) transposes: EM sections have no preferred in-plane direction."""
    if rng.random() < 0.5:
        batch = batch[:, ::-1]
    if rng.random() < 0.5:
        batch = batch[:, :, ::-1]
    if batch.shape[1] == batch.shape[2] and rng.random() < 0.5:
        batch = batch.transpose(0, 2, 1)
    return np.ascontiguousarray(batch)


def train_detector(
    crops: Sequence[np.ndarray],
    labels: np.ndarray,
    settings: DetectorConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = None,
) -> tuple[PresenceDetector, dict[str, Any]]:
    """Train a :class:`PresenceDetector` on tagged 2D crops (binary cross-entropy, positives
    weighted to balance the classes). Crops of one shape form a batch. Returns the detector
    (eval mode) and metrics: tag accuracy on the training crops and on the held-out ones."""
    labels = np.asarray(labels, dtype=np.float32)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    order = rng.permutation(len(crops))
    n_val = int(round(settings.val_fraction * len(crops)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if len(train_idx) == 0 or len(set(labels[train_idx].tolist())) < 2:
        raise ConfigError("weak_labels.tags", "the training crops need both tags, 0 and 1")
    groups: dict[tuple[int, int], list[int]] = {}
    for i in train_idx:
        groups.setdefault(tuple(crops[i].shape), []).append(int(i))
    shapes = list(groups)
    weights = np.array([len(groups[s]) for s in shapes], dtype=float)
    weights /= weights.sum()
    stacked = {s: np.stack([crops[i] for i in groups[s]]).astype(np.float32) for s in shapes}
    stacked_labels = {s: labels[groups[s]] for s in shapes}

    det = PresenceDetector(width=settings.width, lse_r=settings.lse_r).to(device)
    pixels = np.concatenate([crops[i].ravel() for i in train_idx]).astype(np.float64)
    det.mean.fill_(float(pixels.mean()))
    det.std.fill_(float(max(pixels.std(), 1e-3)))
    n_pos = float(labels[train_idx].sum())
    pos_weight = torch.tensor((len(train_idx) - n_pos) / max(n_pos, 1.0), device=device)
    opt = torch.optim.Adam(det.parameters(), lr=settings.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.iterations)
    det.train()
    losses = []
    for it in range(settings.iterations):
        s = shapes[rng.choice(len(shapes), p=weights)]
        idx = rng.integers(0, len(stacked[s]), size=settings.batch_size)
        x = torch.from_numpy(_augment(stacked[s][idx], rng))[:, None].to(device)
        y = torch.from_numpy(stacked_labels[s][idx]).to(device)
        loss = F.binary_cross_entropy_with_logits(det(x), y, pos_weight=pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log and (it + 1) % max(1, settings.iterations // 5) == 0:
            log(f"detector {it + 1}/{settings.iterations}: loss {np.mean(losses[-50:]):.3f}")
    det.eval()
    metrics = {
        "crops_train": int(len(train_idx)),
        "crops_val": int(len(val_idx)),
        **{f"train_{k}": v for k, v in _accuracy(det, crops, labels, train_idx, device).items()},
        **{f"val_{k}": v for k, v in _accuracy(det, crops, labels, val_idx, device).items()},
        "final_loss": float(np.mean(losses[-50:])),
        **score_levels(det, crops, labels, train_idx, device),
    }
    return det, metrics


@torch.no_grad()
def presence(
    det: PresenceDetector, images: np.ndarray, device: str | torch.device = "cpu", batch=256
) -> np.ndarray:
    """Presence probabilities of a stack of same-shape 2D images ``(N, H, W)``."""
    out = []
    for i in range(0, len(images), batch):
        x = torch.as_tensor(np.asarray(images[i : i + batch], dtype=np.float32))[:, None]
        out.append(torch.sigmoid(det(x.to(device))).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def crop_scores(det, crops, idx, device) -> np.ndarray:
    """Presence scores of ``crops[idx]`` (crops of one shape scored together)."""
    s = np.zeros(len(idx))
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for j, i in enumerate(idx):
        by_shape.setdefault(tuple(crops[i].shape), []).append(j)
    for js in by_shape.values():
        s[js] = presence(det, np.stack([crops[idx[j]] for j in js]), device)
    return s


def _accuracy(det, crops, labels, idx, device) -> dict[str, float | None]:
    """Tag accuracy and balanced accuracy (mean of the per-class recalls) on ``crops[idx]``."""
    if len(idx) == 0:
        return {"accuracy": None, "balanced_accuracy": None}
    idx = np.asarray(idx)
    pred = crop_scores(det, crops, idx, device) >= 0.5
    truth = np.asarray(labels)[idx].astype(bool)
    recalls = [float((pred[truth == t] == t).mean()) for t in (False, True) if (truth == t).any()]
    return {"accuracy": float((pred == truth).mean()), "balanced_accuracy": float(np.mean(recalls))}


def score_levels(det, crops, labels, idx, device) -> dict[str, float]:
    """The game's anchors (:class:`~marlseg.weak_labels.game.PatchGame` ``levels``): the mean
    presence score of the training crops tagged 1 (``level_roi``) and tagged 0
    (``level_background``)."""
    idx = np.asarray(idx)
    s = crop_scores(det, crops, idx, device)
    truth = np.asarray(labels)[idx].astype(bool)
    return {"level_roi": float(s[truth].mean()), "level_background": float(s[~truth].mean())}


@torch.no_grad()
def cam_probability(
    det: PresenceDetector, image: np.ndarray, device: str | torch.device = "cpu"
) -> np.ndarray:
    """The class activation map of ``det`` on a 2D image, as probabilities at full size."""
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None, None].to(device)
    return torch.sigmoid(det.cam_full(x))[0].cpu().numpy()


def to_patches(tiles: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """``(N, H, W)`` -> ``(N, gh, gw, py, px)``; H, W multiples of the patch."""
    n, h, w = tiles.shape
    py, px = patch
    return tiles.reshape(n, h // py, py, w // px, px).transpose(0, 1, 3, 2, 4)


def tile_inputs(
    det: PresenceDetector,
    tiles: np.ndarray,
    patch: Sequence[int],
    context: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Game inputs of tiles given with a ``context`` margin, ``(N, H + 2c, W + 2c)``.

    Scores ``(N, gh, gw)``: the detector's presence probability on each patch together with
    ``context`` voxels around it (``context=0``: the patch alone, as in the paper; EM objects
    are defined by their surroundings, so a margin that makes the window the size of the
    tagged crops keeps the detector on the inputs it was trained on). Features
    ``(N, FEATURE_CHANNELS, gh, gw)``, the patch's image evidence: mean and std of its
    standardised intensities, its mean gradient magnitude (texture: membranes and organelles
    vs. blank resin or a smeared fold) and the fraction of its voxels darker than one std below
    the mean (membrane-like)."""
    tiles = np.asarray(tiles, dtype=np.float32)
    c = int(context)
    py, px = (int(v) for v in patch)
    n, h, w = tiles.shape
    gh, gw = (h - 2 * c) // py, (w - 2 * c) // px
    win = np.lib.stride_tricks.sliding_window_view(tiles, (py + 2 * c, px + 2 * c), axis=(1, 2))
    win = win[:, ::py, ::px][:, :gh, :gw]  # (n, gh, gw, py + 2c, px + 2c)
    scores = presence(det, win.reshape(-1, py + 2 * c, px + 2 * c), device).reshape(n, gh, gw)
    centre = win[..., c : c + py, c : c + px]
    z = (centre - float(det.mean)) / float(det.std)
    gy, gx = np.diff(z, axis=3)[..., :, :-1], np.diff(z, axis=4)[..., :-1, :]
    grad = np.sqrt(gy**2 + gx**2).mean(axis=(3, 4))
    dark = (z < -1.0).mean(axis=(3, 4))
    feats = np.stack([z.mean(axis=(3, 4)), z.std(axis=(3, 4)), grad, dark], axis=1)
    assert feats.shape[1] == FEATURE_CHANNELS
    return scores.astype(np.float32), feats.astype(np.float32)
