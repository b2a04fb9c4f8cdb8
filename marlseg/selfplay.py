"""Self-play weak labels: two agents compete for the patches of an image.

After Saeed et al., "Competing for pixels: a self-play algorithm for weakly-supervised
segmentation" (arXiv 2405.16628). Only image-level tags are needed: a presence detector
(:class:`~marlseg.networks.selfplay.PresenceDetector`) learns "this crop contains the ROI" from
tagged 2D crops, then scores every patch of a game image by its presence probability (on the
patch plus an optional context margin, :func:`tile_inputs`). Two agents take turns selecting
patches; the patches selected when the game ends are the weak mask.

The game (:class:`PatchGame`, played on a grid of ``n`` patches with detector scores ``s_i`` in
[0, 1]; a patch is an *ROI patch* when ``s_i >= roi_threshold``):

* Players 0 and 1 alternate, player 0 first; one *round* is a move of each. A move is a patch
  ``i`` and a termination flag.
* **Pick** (flag 0): if ``i`` is already taken the mover gets ``-invalid_penalty`` and takes
  nothing; otherwise ``i`` is taken (selected). At the end of each round the two picks are
  compared: the higher score wins, **+1** to the winner and **-1** to the loser (an invalid pick
  scores -1, so it loses to any valid one; equal scores: 0 each).
* **Terminate** (flag 1): the mover claims no ROI patch is left; its patch choice is ignored
  and an open round is not compared. The opponent's next move is its **final pick** ``j`` (its
  flag is ignored). If ``j`` is untaken and an ROI patch, the opponent found one: opponent
  **+termination_reward**, terminator **-termination_reward**, and ``j`` is selected. Otherwise
  the terminator was right: terminator **+termination_reward**, opponent
  **-termination_reward**. The game ends after the final pick.
* The game also ends, with no termination reward, when every patch is taken or after
  ``max_rounds`` rounds (default: ``n``).

Winning rounds rewards picking the highest-scoring free patch; the termination stake rewards
stopping exactly when the ROI patches are exhausted, so the selection neither stops short
(under-segmentation) nor runs on (over-segmentation). The public code of the method (s-sd/spurl,
TensorFlow) scales the round reward by 100 when either side terminates; ``termination_reward``
plays that role here and is decided by the final pick as the paper describes.

Training (:func:`train_selfplay`) is REINFORCE with a learned value baseline (normalised
advantages, an entropy bonus): the learner plays a batch of games on a random side against an
opponent drawn from a pool of its own past snapshots (:class:`OpponentPool`: a truncated normal
over snapshot age, favouring recent ones — prioritised fictitious self-play —, or uniform, or
the latest snapshot only). Three choices make it learn on a CPU budget, each found necessary on
toy grids: a discount below 1 (a pick is credited mostly with its own round), a warm-up without
termination calls (the agents learn to pick before terminating can pay off against random
opponents) and a bounded termination logit (a saturated Bernoulli never explores again).

Everything here is per 2D z-section; :func:`label_volume` plays every tile of every section of
a volume and writes the selected patches as a uint8 mask (1 = ROI).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array
from scipy.stats import truncnorm

from marlseg.config import DatasetRef, DetectorConfig, SelfPlayConfig
from marlseg.errors import ConfigError
from marlseg.networks.selfplay import PatchPolicy, PresenceDetector
from marlseg.volumes import open_volume, write

FEATURE_CHANNELS = 2
"""Static image features per patch besides the score: mean and std of standardised intensity."""
OBS_CHANNELS = 1 + FEATURE_CHANNELS + 3
"""Policy input: score, image features, taken, final-pick flag, second-mover flag."""

# ---------------------------------------------------------------------------------------------
# tags
# ---------------------------------------------------------------------------------------------

TAG_HEADER_3D = ("path", "dataset", "z0", "y0", "x0", "z1", "y1", "x1", "tag")
TAG_HEADER_2D = ("path", "dataset", "z", "y0", "x0", "y1", "x1", "tag")


@dataclass(frozen=True)
class Tag:
    """One tagged box: every z-section of ``box`` is a 2D crop tagged ``tag``."""

    path: Path
    dataset: str
    box: tuple[int, int, int, int, int, int]
    """``z0, y0, x0, z1, y1, x1`` in voxels of the dataset, half-open."""
    tag: int
    where: str = ""
    """Origin, for messages (``file, line N``)."""

    @property
    def num_crops(self) -> int:
        return self.box[3] - self.box[0]


def read_tags(csv_path: str | Path) -> list[Tag]:
    """Read and validate a tags CSV (format: ``WeakLabelsConfig.tags``).

    Every row is checked against its dataset (file, dataset, box inside it, tag 0/1); any
    problem is a one-line :class:`ConfigError` naming the file and line.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ConfigError("weak_labels.tags", f"tags file not found: {csv_path}")
    try:
        text = csv_path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(csv_path), f"cannot read: {e}") from None
    header: tuple[str, ...] | None = None
    shapes: dict[tuple[Path, str], tuple[int, ...]] = {}
    tags: list[Tag] = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        where = f"{csv_path}, line {lineno}"
        cells = [c.strip() for c in row]
        if not cells or all(not c for c in cells) or cells[0].startswith("#"):
            continue
        if header is None:
            header = tuple(c.lower() for c in cells)
            if header not in (TAG_HEADER_3D, TAG_HEADER_2D):
                raise ConfigError(
                    where,
                    f"header must be {','.join(TAG_HEADER_3D)} or {','.join(TAG_HEADER_2D)}, "
                    f"got {','.join(cells)}",
                )
            continue
        if len(cells) != len(header):
            raise ConfigError(where, f"expected {len(header)} columns, got {len(cells)}")
        path_s, dataset = cells[0], cells[1]
        if not path_s or not dataset:
            raise ConfigError(where, "empty path or dataset")
        try:
            nums = [int(c) for c in cells[2:]]
        except ValueError:
            bad = next(c for c in cells[2:] if not _is_int(c))
            raise ConfigError(
                where, f"expected whole numbers for the box and tag, got {bad!r}"
            ) from None
        *coords, tag = nums
        if tag not in (0, 1):
            raise ConfigError(where, f"tag must be 0 or 1, got {tag}")
        if header == TAG_HEADER_2D:
            z, y0, x0, y1, x1 = coords
            box = (z, y0, x0, z + 1, y1, x1)
        else:
            box = tuple(coords)  # type: ignore[assignment]
        if any(b < 0 for b in box) or any(box[i + 3] <= box[i] for i in range(3)):
            raise ConfigError(where, f"empty or negative box {list(box)} (z0,y0,x0,z1,y1,x1)")
        if box[4] - box[1] < 4 or box[5] - box[2] < 4:
            raise ConfigError(where, f"crop {list(box)} is smaller than 4 x 4 voxels in y, x")
        path = Path(path_s)
        if not path.is_absolute():
            path = csv_path.parent / path
        key = (path, dataset)
        if key not in shapes:
            try:
                arr = open_volume(DatasetRef(path=path, dataset=dataset))
            except ConfigError as e:
                raise ConfigError(where, e.what) from None
            if arr.channel_dims or len(arr.shape) != 3:
                raise ConfigError(where, f"{path}:{dataset} is not a 3D (z, y, x) volume")
            shapes[key] = tuple(arr.shape)
        shape = shapes[key]
        if any(box[i + 3] > shape[i] for i in range(3)):
            raise ConfigError(
                where, f"box {list(box)} reaches outside {path}:{dataset} of shape {list(shape)}"
            )
        tags.append(Tag(path, dataset, box, tag, where))  # type: ignore[arg-type]
    if header is None:
        raise ConfigError(str(csv_path), "no header and no rows")
    counts = {t: sum(x.num_crops for x in tags if x.tag == t) for t in (0, 1)}
    if not counts[0] or not counts[1]:
        raise ConfigError(
            str(csv_path),
            f"needs crops tagged 0 and crops tagged 1, got {counts[0]} and {counts[1]}",
        )
    return tags


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def roi_from_labels(section: np.ndarray, min_area: int) -> np.ndarray:
    """The ROI of the derivation rule: voxels of bodies (id != 0) whose area in this 2D
    section is at least ``min_area``."""
    ids, counts = np.unique(section, return_counts=True)
    big = ids[(counts >= min_area) & (ids != 0)]
    return np.isin(section, big)


def derive_tags(
    raw: DatasetRef,
    labels: DatasetRef,
    crop_shape: Sequence[int],
    min_area: int,
    min_fraction: float,
    z_range: tuple[int, int] | None = None,
) -> list[Tag]:
    """Tags by the documented rule (``DeriveTagsConfig``): crop ``i`` of section ``z`` is 1 when
    at least ``min_fraction`` of it lies in :func:`roi_from_labels`. Boxes refer to ``raw``."""
    lab = open_volume(labels, field="weak_labels.derive.labels")
    cy, cx = (int(c) for c in crop_shape)
    nz, ny, nx = lab.shape
    z0, z1 = z_range or (0, nz)
    tags = []
    for z in range(z0, z1):
        roi = roi_from_labels(np.asarray(lab._source_data[z]), min_area)
        for y in range(0, ny - cy + 1, cy):
            for x in range(0, nx - cx + 1, cx):
                t = int(roi[y : y + cy, x : x + cx].mean() >= min_fraction)
                tags.append(Tag(Path(raw.path), raw.dataset, (z, y, x, z + 1, y + cy, x + cx), t))
    return tags


def load_crops(tags: Sequence[Tag]) -> tuple[list[np.ndarray], np.ndarray]:
    """The 2D crops of ``tags`` (one per z-section of each box) and their tags."""
    volumes: dict[tuple[Path, str], Any] = {}
    crops, labels = [], []
    for t in tags:
        key = (t.path, t.dataset)
        if key not in volumes:
            volumes[key] = open_volume(DatasetRef(path=t.path, dataset=t.dataset))._source_data
        z0, y0, x0, z1, y1, x1 = t.box
        block = np.asarray(volumes[key][z0:z1, y0:y1, x0:x1])
        crops.extend(block)
        labels.extend([t.tag] * len(block))
    return crops, np.asarray(labels, dtype=np.int64)


def tags_fingerprint(tags: Sequence[Tag]) -> str:
    h = hashlib.sha1()
    for t in tags:
        h.update(f"{Path(t.path).absolute()}|{t.dataset}|{t.box}|{t.tag}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# detector
# ---------------------------------------------------------------------------------------------


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


def _accuracy(det, crops, labels, idx, device) -> dict[str, float | None]:
    """Tag accuracy and balanced accuracy (mean of the per-class recalls) on ``crops[idx]``."""
    if len(idx) == 0:
        return {"accuracy": None, "balanced_accuracy": None}
    idx = np.asarray(idx)
    pred = np.zeros(len(idx), bool)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for j, i in enumerate(idx):
        by_shape.setdefault(tuple(crops[i].shape), []).append(j)
    for js in by_shape.values():
        pred[js] = presence(det, np.stack([crops[idx[j]] for j in js]), device) >= 0.5
    truth = np.asarray(labels)[idx].astype(bool)
    recalls = [float((pred[truth == t] == t).mean()) for t in (False, True) if (truth == t).any()]
    return {"accuracy": float((pred == truth).mean()), "balanced_accuracy": float(np.mean(recalls))}


@torch.no_grad()
def cam_probability(
    det: PresenceDetector, image: np.ndarray, device: str | torch.device = "cpu"
) -> np.ndarray:
    """The class activation map of ``det`` on a 2D image, as probabilities at full size."""
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None, None].to(device)
    return torch.sigmoid(det.cam_full(x))[0].cpu().numpy()


# ---------------------------------------------------------------------------------------------
# game inputs
# ---------------------------------------------------------------------------------------------


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
    ``(N, FEATURE_CHANNELS, gh, gw)``: mean and std of the patch's standardised intensities."""
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
    feats = np.stack([z.mean(axis=(3, 4)), z.std(axis=(3, 4))], axis=1)
    return scores.astype(np.float32), feats.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the game
# ---------------------------------------------------------------------------------------------


class PatchGame:
    """A batch of patch games played in lockstep (rules: the module docstring).

    ``scores``: ``(B, gh, gw)`` presence probabilities; ``features``: ``(B, F, gh, gw)``.
    Call :meth:`observe` and :meth:`step` until :attr:`done` is all true.
    """

    def __init__(
        self,
        scores: torch.Tensor,
        features: torch.Tensor | None = None,
        *,
        roi_threshold: float = 0.5,
        termination_reward: float = 10.0,
        invalid_penalty: float = 1.0,
        max_rounds: int | None = None,
    ):
        scores = torch.as_tensor(scores, dtype=torch.float32)
        self.batch, self.grid = scores.shape[0], tuple(scores.shape[1:])
        self.n = int(np.prod(self.grid))
        self.device = scores.device
        self.scores = scores.reshape(self.batch, self.n)
        if features is None:
            features = torch.zeros(self.batch, FEATURE_CHANNELS, *self.grid, device=self.device)
        self.features = torch.as_tensor(features, dtype=torch.float32, device=self.device)
        self.roi_threshold = roi_threshold
        self.termination_reward = termination_reward
        self.invalid_penalty = invalid_penalty
        self.max_steps = 2 * (max_rounds if max_rounds is not None else self.n)
        self.reset()

    def reset(self) -> None:
        b, d = self.batch, self.device
        self.taken = torch.zeros(b, self.n, dtype=torch.bool, device=d)
        self.done = torch.zeros(b, dtype=torch.bool, device=d)
        self.final = torch.zeros(b, dtype=torch.bool, device=d)
        """The mover's next move is a final pick (the opponent called termination)."""
        self.first_score = torch.full((b,), math.nan, device=d)
        self.terminated_by = torch.full((b,), -1, dtype=torch.long, device=d)
        self.found = torch.zeros(b, dtype=torch.bool, device=d)
        self.steps = 0

    @property
    def mover(self) -> int:
        return self.steps % 2

    @property
    def selected(self) -> torch.Tensor:
        """Selected patches ``(B, gh, gw)``: every patch taken by either player."""
        return self.taken.reshape(self.batch, *self.grid)

    def observe(self) -> torch.Tensor:
        """Policy input ``(B, OBS_CHANNELS, gh, gw)``: score, features, taken, final, second."""
        b, (gh, gw) = self.batch, self.grid
        ones = torch.ones(b, 1, gh, gw, device=self.device)
        return torch.cat(
            [
                self.scores.reshape(b, 1, gh, gw),
                self.features,
                self.taken.reshape(b, 1, gh, gw).float(),
                ones * self.final.float()[:, None, None, None],
                ones * float(self.mover == 1),
            ],
            dim=1,
        )

    def step(self, patch: torch.Tensor, terminate: torch.Tensor) -> torch.Tensor:
        """The mover's move in every game; returns rewards ``(B, 2)`` (player 0, player 1).
        Games already done are left alone and get 0."""
        patch = torch.as_tensor(patch, dtype=torch.long, device=self.device)
        terminate = torch.as_tensor(terminate, dtype=torch.bool, device=self.device)
        m, o = self.mover, 1 - self.mover
        rewards = torch.zeros(self.batch, 2, device=self.device)
        active = ~self.done
        s = self.scores.gather(1, patch[:, None])[:, 0]
        valid = ~self.taken.gather(1, patch[:, None])[:, 0]
        rows = torch.arange(self.batch, device=self.device)

        # final pick after the opponent's termination call
        fin = active & self.final
        found = fin & valid & (s >= self.roi_threshold)
        missed = fin & ~found
        c = self.termination_reward
        rewards[:, m] += c * found.float() - c * missed.float()
        rewards[:, o] += c * missed.float() - c * found.float()
        self.taken[rows[found], patch[found]] = True
        self.found |= found

        # regular moves
        regular = active & ~self.final
        term = regular & terminate
        pick = regular & ~terminate
        rewards[:, m] -= self.invalid_penalty * (pick & ~valid).float()
        ok = pick & valid
        self.taken[rows[ok], patch[ok]] = True
        pick_score = torch.where(ok, s, torch.full_like(s, -1.0))
        if m == 0:
            self.first_score = torch.where(pick, pick_score, torch.full_like(s, math.nan))
        else:
            compared = pick & ~torch.isnan(self.first_score)
            d = torch.sign(pick_score - torch.nan_to_num(self.first_score)) * compared.float()
            rewards[:, 1] += d
            rewards[:, 0] -= d
            self.first_score = torch.full_like(s, math.nan)
        self.terminated_by[term] = m
        self.final = term
        self.done |= fin
        self.steps += 1
        self.done |= active & ~self.final & self.taken.all(dim=1)
        if self.steps >= self.max_steps:
            # truncation; a pending final pick still gets its move (one step more)
            self.done |= ~self.final | (self.steps > self.max_steps)
        return rewards


# ---------------------------------------------------------------------------------------------
# opponents
# ---------------------------------------------------------------------------------------------

Sampling = Literal["truncnorm", "uniform", "latest"]


class OpponentPool:
    """Past snapshots of the learner, oldest first, and how opponents are drawn from them.

    ``truncnorm``: prioritised fictitious self-play. A position ``x`` is drawn from a normal
    with its mean at the newest end of the pool (``x = n``) and standard deviation
    ``sigma * n``, truncated to ``[0, n]``; snapshot ``floor(x)`` (clipped to ``n - 1``) plays.
    The density rises towards the newest snapshot, so recent opponents are favoured while old
    ones keep a non-zero chance (no strategy cycling). ``uniform``: every snapshot alike
    (fictitious self-play). ``latest``: the newest snapshot only.
    """

    def __init__(self, sampling: Sampling = "truncnorm", sigma: float = 0.3, max_size: int = 50):
        if sampling not in ("truncnorm", "uniform", "latest"):
            raise ValueError(f"unknown opponent sampling {sampling!r}")
        self.sampling = sampling
        self.sigma = float(sigma)
        self.max_size = int(max_size)
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.snapshots)

    def add(self, policy: torch.nn.Module) -> None:
        self.snapshots.append({k: v.detach().clone() for k, v in policy.state_dict().items()})
        if len(self.snapshots) > self.max_size:
            self.snapshots.pop(0)

    def probabilities(self, n: int | None = None) -> np.ndarray:
        """Probability of each snapshot (index 0 = oldest) for a pool of ``n``."""
        n = len(self) if n is None else n
        if n <= 0:
            raise ValueError("empty opponent pool")
        if self.sampling == "latest":
            p = np.zeros(n)
            p[-1] = 1.0
            return p
        if self.sampling == "uniform":
            return np.full(n, 1.0 / n)
        dist = self._truncnorm(n)
        edges = dist.cdf(np.arange(n + 1, dtype=float))
        p = np.diff(edges)
        return p / p.sum()

    def _truncnorm(self, n: int):
        scale = self.sigma * n
        return truncnorm(a=-n / scale, b=0.0, loc=float(n), scale=scale)

    def sample_index(self, rng: np.random.Generator) -> int:
        n = len(self)
        if n == 0:
            raise ValueError("empty opponent pool")
        if self.sampling == "latest":
            return n - 1
        if self.sampling == "uniform":
            return int(rng.integers(0, n))
        # floor(x) of the truncated normal, drawn through its index probabilities
        if n not in self._cache:
            self._cache[n] = self.probabilities(n)
        return int(rng.choice(n, p=self._cache[n]))

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return self.snapshots[self.sample_index(rng)]


# ---------------------------------------------------------------------------------------------
# playing and training
# ---------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """A batch of played games from the learner's side (``T`` steps, ``B`` games)."""

    moved: list[torch.Tensor] = field(default_factory=list)
    """``(B,)`` per step: whether the learner moved in that game at that step."""
    rewards: list[torch.Tensor] = field(default_factory=list)
    """``(B, 2)`` per step, players 0 and 1."""
    obs: list[torch.Tensor] = field(default_factory=list)
    """The learner's observations, its moves only, step by step (concatenate for all)."""
    patch: list[torch.Tensor] = field(default_factory=list)
    term: list[torch.Tensor] = field(default_factory=list)
    final: list[torch.Tensor] = field(default_factory=list)
    """Whether the move's termination flag was not part of the action (final pick, warm-up)."""


def _sample(
    policy: PatchPolicy, obs: torch.Tensor, greedy: bool, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    logits, tlogit, _ = policy(obs)
    if greedy:
        return logits.argmax(dim=1), tlogit > 0
    patch = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=gen)[:, 0]
    u = torch.rand(tlogit.shape, generator=gen, device=tlogit.device)
    return patch, u < torch.sigmoid(tlogit)


def evaluate_moves(
    policy: PatchPolicy,
    obs: torch.Tensor,
    patch: torch.Tensor,
    term: torch.Tensor,
    final: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probability, entropy and value of moves ``(patch, term)`` in ``obs`` under
    ``policy``. Where ``final``, the termination flag is not part of the action (the game
    ignores it), so neither its probability nor its entropy counts."""
    logits, tlogit, value = policy(obs)
    logq = torch.log_softmax(logits, dim=1)
    logp = logq.gather(1, patch[:, None])[:, 0]
    tlogp = torch.where(term, F.logsigmoid(tlogit), F.logsigmoid(-tlogit))
    pt = torch.sigmoid(tlogit)
    tent = -(pt * F.logsigmoid(tlogit) + (1 - pt) * F.logsigmoid(-tlogit))
    pent = -(logq.exp() * logq).sum(dim=1)
    zero = torch.zeros_like(tlogp)
    logp = logp + torch.where(final, zero, tlogp)
    ent = pent + torch.where(final, zero, tent)
    return logp, ent, value


@torch.no_grad()
def play(
    game: PatchGame,
    players: tuple[PatchPolicy, PatchPolicy],
    learner_side: torch.Tensor | None = None,
    *,
    greedy: bool = False,
    gen: torch.Generator | None = None,
    allow_termination: bool = True,
) -> Rollout:
    """Play ``game`` to the end (no gradients). ``players[0]`` (the learner) moves in games
    where ``learner_side`` (``(B,)``, 0 or 1) equals the mover, ``players[1]`` elsewhere;
    ``learner_side=None``: the learner plays side 0 everywhere. ``allow_termination=False``:
    nobody calls termination (warm-up). The learner's moves are recorded for
    :func:`evaluate_moves`."""
    game.reset()
    b = game.batch
    if learner_side is None:
        learner_side = torch.zeros(b, dtype=torch.long, device=game.device)
    out = Rollout()
    while not bool(game.done.all()):
        obs = game.observe()
        patch = torch.zeros(b, dtype=torch.long, device=game.device)
        term = torch.zeros(b, dtype=torch.bool, device=game.device)
        active = ~game.done
        mine = (learner_side == game.mover) & active
        for who, sel in ((players[0], mine), (players[1], ~mine & active)):
            if bool(sel.any()):
                patch[sel], term[sel] = _sample(who, obs[sel], greedy, gen)
        if not allow_termination:
            term[:] = False
        out.moved.append(mine)
        out.obs.append(obs[mine])
        out.patch.append(patch[mine])
        out.term.append(term[mine])
        out.final.append(game.final[mine] | (not allow_termination))
        out.rewards.append(game.step(patch, term))
    return out


def returns_to_go(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G[t] = sum_{s >= t} gamma^(s - t) r[s]`` along the first axis."""
    g = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * running
        g[t] = running
    return g


@dataclass
class SelfPlayHistory:
    """Per-iteration training statistics (lists, one value per iteration)."""

    learner_return: list[float] = field(default_factory=list)
    game_steps: list[float] = field(default_factory=list)
    selected_fraction: list[float] = field(default_factory=list)
    agreement: list[float] = field(default_factory=list)
    """IoU of the selection with the patches scoring >= roi_threshold (no ground truth)."""
    correct_termination: list[float] = field(default_factory=list)
    """Fraction of termination calls the final pick did not refute."""
    entropy: list[float] = field(default_factory=list)
    opponent_index: list[int] = field(default_factory=list)
    pool_size: list[int] = field(default_factory=list)


def _iou_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def train_selfplay(
    scores: np.ndarray,
    features: np.ndarray | None,
    settings: SelfPlayConfig,
    *,
    roi_threshold: float = 0.5,
    seed: int = 0,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = None,
) -> tuple[PatchPolicy, SelfPlayHistory]:
    """Train the patch policy by self-play on game inputs ``scores (N, gh, gw)`` and
    ``features (N, F, gh, gw)`` (:func:`tile_inputs`). REINFORCE with a value baseline and an
    entropy bonus; the opponent of each iteration is drawn from an :class:`OpponentPool`."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    scores_t = torch.as_tensor(np.asarray(scores, dtype=np.float32), device=device)
    feats_t = (
        torch.zeros(len(scores_t), FEATURE_CHANNELS, *scores_t.shape[1:], device=device)
        if features is None
        else torch.as_tensor(np.asarray(features, dtype=np.float32), device=device)
    )
    policy = PatchPolicy(OBS_CHANNELS, settings.width).to(device)
    opponent = copy.deepcopy(policy)
    opponent.requires_grad_(False)
    pool = OpponentPool(settings.opponent_sampling, settings.sigma, settings.pool_size)
    pool.add(policy)
    opt = torch.optim.Adam(policy.parameters(), lr=settings.lr)
    scale = max(1.0, settings.termination_reward)
    hist = SelfPlayHistory()
    b = settings.games_per_iteration
    for it in range(settings.iterations):
        idx = torch.as_tensor(rng.integers(0, len(scores_t), size=b), device=device)
        game = PatchGame(
            scores_t[idx],
            feats_t[idx],
            roi_threshold=roi_threshold,
            termination_reward=settings.termination_reward,
            invalid_penalty=settings.invalid_penalty,
        )
        k = pool.sample_index(rng)
        opponent.load_state_dict(pool.snapshots[k])
        side = torch.as_tensor(rng.integers(0, 2, size=b), device=device)
        warm = it < settings.warmup_iterations
        ro = play(game, (policy, opponent), side, gen=gen, allow_termination=not warm)
        moved = torch.stack(ro.moved)  # (T, B)
        rew = torch.stack(ro.rewards)  # (T, B, 2)
        mine = rew.gather(2, side[None, :, None].expand(rew.shape[0], b, 1))[..., 0]
        # moves are recorded step by step, games in order: the same order as g[moved]
        g = (returns_to_go(mine, settings.gamma) / scale)[moved]
        logp, ent, value = evaluate_moves(
            policy,
            torch.cat(ro.obs),
            torch.cat(ro.patch),
            torch.cat(ro.term),
            torch.cat(ro.final),
        )
        adv = g - value.detach()
        adv = (adv - adv.mean()) / (adv.std() + 1e-6) if adv.numel() > 1 else adv
        loss = (
            -(adv * logp).mean() + 0.5 * ((g - value) ** 2).mean() - settings.entropy * ent.mean()
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        if (it + 1) % settings.snapshot_every == 0:
            pool.add(policy)

        with torch.no_grad():
            terminated = game.terminated_by >= 0
            roi = (game.scores >= roi_threshold).reshape(game.selected.shape)
            hist.learner_return.append(float(mine.sum(0).mean()))
            hist.game_steps.append(float(moved.shape[0]))
            hist.selected_fraction.append(float(game.taken.float().mean()))
            hist.agreement.append(float(_iou_t(game.selected, roi).mean()))
            hist.correct_termination.append(
                float((~game.found[terminated]).float().mean()) if bool(terminated.any()) else 0.0
            )
            hist.entropy.append(float(ent.mean()))
            hist.opponent_index.append(k)
            hist.pool_size.append(len(pool))
        if log and (it + 1) % max(1, settings.iterations // 10) == 0:
            w = slice(-max(1, settings.iterations // 10), None)
            log(
                f"self-play {it + 1}/{settings.iterations}: return "
                f"{np.mean(hist.learner_return[w]):+.2f}, agreement "
                f"{np.mean(hist.agreement[w]):.3f}, correct terminations "
                f"{np.mean(hist.correct_termination[w]):.2f}, pool {len(pool)}"
            )
    policy.eval()
    return policy, hist


@torch.no_grad()
def select_patches(
    policy: PatchPolicy,
    scores: np.ndarray,
    features: np.ndarray | None = None,
    *,
    roi_threshold: float = 0.5,
    opponent: PatchPolicy | None = None,
    device: str | torch.device = "cpu",
    batch: int = 256,
) -> np.ndarray:
    """Play greedy games (``policy`` against itself unless ``opponent``) on ``scores
    (N, gh, gw)``; returns the selected patches ``(N, gh, gw)`` (bool)."""
    out = []
    for i in range(0, len(scores), batch):
        s = torch.as_tensor(np.asarray(scores[i : i + batch], dtype=np.float32), device=device)
        f = None
        if features is not None:
            f = torch.as_tensor(np.asarray(features[i : i + batch], dtype=np.float32))
        game = PatchGame(s, None if f is None else f.to(device), roi_threshold=roi_threshold)
        play(game, (policy, opponent or policy), greedy=True)
        out.append(game.selected.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *np.shape(scores)[1:]), bool)


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


# ---------------------------------------------------------------------------------------------
# volumes
# ---------------------------------------------------------------------------------------------


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
    roi_threshold: float,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """The weak mask (uint8, 1 = selected) of sections ``block (n, H + 2c, W + 2c)`` given with
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
    sel = select_patches(policy, scores, feats, roi_threshold=roi_threshold, device=device)
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
    roi_threshold: float,
    region: Sequence[int],
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Play every ``tile`` of every z-section of ``raw`` and write the selected patches to
    ``out`` (uint8, 1 = ROI). Works region by region (``region``: z, y, x voxels, a multiple of
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
            roi_threshold=roi_threshold,
            device=device,
        )
        mask = mask[:, : shape[1], : shape[2]]
        write(out, Roi(begin + Coordinate((z, y, x)) * vs, Coordinate(shape) * vs), mask)
        selected_voxels += int(mask.sum())
        if log and (k + 1) % max(1, len(regions) // 10) == 0:
            log(f"mask: region {k + 1}/{len(regions)}")
    total = nz * ny * nx
    return {"voxels": total, "selected_fraction": selected_voxels / max(total, 1)}


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
