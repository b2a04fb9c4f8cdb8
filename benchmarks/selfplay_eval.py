"""Self-play weak masks vs a CAM baseline on real EM with voxel truth.

``python benchmarks/selfplay_eval.py [--quick] [--seeds 0 1 2] [--part real|toy|all]
[--out results.json]``

The ROI is the cross-sections of large neurite profiles: in each z-section, the voxels of
bodies (``volumes/labels/neuron_ids`` != 0) whose area in that section is at least
``--min-area`` voxels (``marlseg.selfplay.roi_from_labels``). Tags are derived from it by the
stage's documented rule (``weak_labels.derive``): 20 x 20 crops of every section, tag 1 when at
least half of the crop is ROI. Only the tags of the *training* volume are used; the masks are
scored against the voxel truth of the *other* volume (fib_train <-> fib25_tiny, both ways).

Compared on the same detector:
* ``self-play (<sampling>)``: greedy games of the trained policy against itself, on 50 x 50
  tiles of 10 x 10 patches, for the three opponent samplings (truncated normal = prioritised
  fictitious self-play, uniform, latest only);
* ``CAM >= 0.5``: the detector's class activation map as a probability, thresholded at 0.5;
* ``CAM / max >= 0.5``: the CAM min-max normalised per section, thresholded at 0.5 (the usual
  WSSS practice);
* ``patch score >= 0.5``: the detector's patch scores thresholded at the game's ROI threshold,
  the selection that perfect play converges to (reference, no game);
* ``everything``: the whole volume (a mask's IoU must beat the ROI fraction to mean anything);
* ``oracle patches``: patches at least half ROI in the truth: the best any 10 x 10 patch mask
  can do (upper bound).

A second part (``--part toy``) plays on toy score grids with a known ROI (a perfect
detector), to compare the opponent samplings on the game alone.

IoU and Dice are pooled over all voxels of the test volume; ``IoU/sec`` is the mean over
sections; ``selected`` is the fraction of voxels in the mask. Runs on the CPU in minutes (``--quick``: fewer iterations, for a smoke test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from marlseg import selfplay as sp
from marlseg.config import DatasetRef, DetectorConfig, SelfPlayConfig

DATA = Path(__file__).parents[1] / "data"
VOLUMES = {"fib_train": DATA / "fib_train.h5", "fib25_tiny": DATA / "fib25_tiny.h5"}
PATCH, TILE, CROP = (10, 10), (50, 50), (20, 20)
CONTEXT = (CROP[0] - PATCH[0]) // 2
SAMPLINGS = ("truncnorm", "uniform", "latest")


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(VOLUMES[name], "r") as f:
        return f["volumes/raw"][:], f["volumes/labels/neuron_ids"][:]


def refs(name: str) -> tuple[DatasetRef, DatasetRef]:
    path = VOLUMES[name]
    return (
        DatasetRef(path=path, dataset="volumes/raw"),
        DatasetRef(path=path, dataset="volumes/labels/neuron_ids"),
    )


def with_context(raw: np.ndarray) -> np.ndarray:
    """Sections with the context margin (reflection), sizes padded to whole tiles."""
    _, ny, nx = raw.shape
    py = -ny % TILE[0]
    px = -nx % TILE[1]
    return sp.read_window(
        raw, (0, len(raw)), (-CONTEXT, ny + py + CONTEXT), (-CONTEXT, nx + px + CONTEXT)
    )


def scores_of(det, raw: np.ndarray) -> np.ndarray:
    """Patch scores of whole sections ``(nz, ny/py, nx/px)`` (tiles of TILE, tile-major)."""
    s, _ = sp.tile_inputs(det, with_context(raw), PATCH, CONTEXT)  # a tile = a section
    return s


def scores(mask: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    per = [sp.iou(x, y) for x, y in zip(mask, truth)]
    return {
        "iou": sp.iou(mask, truth),
        "dice": sp.dice(mask, truth),
        "iou_per_section": float(np.mean(per)),
        "selected": float(np.mean(mask)),
    }


def evaluate(
    train: str,
    test: str,
    det_cfg: DetectorConfig,
    play_cfg: SelfPlayConfig,
    seeds: list[int],
    min_area: int,
) -> dict:
    t0 = time.time()
    tags = sp.derive_tags(*refs(train), CROP, min_area, 0.5)
    crops, labels = sp.load_crops(tags)
    det, det_metrics = sp.train_detector(crops, labels, det_cfg, seed=0)
    print(f"[{train} -> {test}] detector: {det_metrics} ({time.time() - t0:.0f} s)", flush=True)

    train_raw, _ = load(train)
    tiles = sp.sample_tiles(
        _Src(train_raw), TILE, CONTEXT, play_cfg.max_tiles, np.random.default_rng(0)
    )
    tr_scores, tr_feats = sp.tile_inputs(det, tiles, PATCH, CONTEXT)

    raw, lab = load(test)
    truth = np.stack([sp.roi_from_labels(s, min_area) for s in lab])
    nz, ny, nx = raw.shape
    block = with_context(raw)
    rows: dict[str, list[dict]] = {}

    def crop(m):
        return m[:, :ny, :nx]

    rows["everything (trivial)"] = [scores(np.ones_like(truth), truth)]
    sec_scores = scores_of(det, raw)
    rows["patch score >= 0.5"] = [scores(crop(sp.patches_to_mask(sec_scores >= 0.5, PATCH)), truth)]
    cams = np.stack([sp.cam_probability(det, s) for s in raw])
    rows["CAM >= 0.5"] = [scores(cams >= 0.5, truth)]
    lo = cams.min(axis=(1, 2), keepdims=True)
    hi = cams.max(axis=(1, 2), keepdims=True)
    rows["CAM / max >= 0.5"] = [scores((cams - lo) / np.maximum(hi - lo, 1e-6) >= 0.5, truth)]
    pad_truth = np.pad(truth, ((0, 0), (0, -ny % PATCH[0]), (0, -nx % PATCH[1])))
    frac = sp.to_patches(pad_truth.astype(np.float32), PATCH).mean(axis=(3, 4))
    rows["oracle patches"] = [scores(crop(sp.patches_to_mask(frac >= 0.5, PATCH)), truth)]

    for sampling in SAMPLINGS:
        key = f"self-play ({sampling})"
        rows[key] = []
        for seed in seeds:
            t = time.time()
            cfg = play_cfg.model_copy(update={"opponent_sampling": sampling})
            policy, hist = sp.train_selfplay(tr_scores, tr_feats, cfg, seed=seed)
            mask = sp.mask_sections(
                det, policy, block, patch=PATCH, tile=TILE, context=CONTEXT, roi_threshold=0.5
            )
            r = scores(crop(mask).astype(bool), truth)
            tail = slice(-max(1, cfg.iterations // 10), None)
            r["agreement"] = float(np.mean(hist.agreement[tail]))
            r["correct_terminations"] = float(np.mean(hist.correct_termination[tail]))
            r["train_s"] = time.time() - t
            rows[key].append(r)
            print(f"[{train} -> {test}] {key} seed {seed}: {r}", flush=True)
    return {
        "train": train,
        "test": test,
        "detector": det_metrics,
        "roi_fraction": float(truth.mean()),
        "rows": rows,
        "wall_s": time.time() - t0,
    }


class _Src:
    """A numpy volume dressed as the Array that ``sample_tiles`` reads."""

    def __init__(self, data: np.ndarray):
        self._source_data = data
        self.shape = data.shape


def toy_grids(n: int, g: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Score grids with a known ROI: a random rectangle of patches scoring 0.65-1, the rest
    0-0.35 (a perfect detector), to measure the game and its training apart from detection."""
    s = rng.uniform(0.0, 0.35, size=(n, g, g))
    roi = np.zeros((n, g, g), bool)
    for i in range(n):
        h, w = rng.integers(1, g, size=2)
        y, x = rng.integers(0, g - h + 1), rng.integers(0, g - w + 1)
        roi[i, y : y + h, x : x + w] = True
    s[roi] = rng.uniform(0.65, 1.0, size=roi.sum())
    return s.astype(np.float32), roi


def evaluate_toy(play_cfg: SelfPlayConfig, seeds: list[int], grid: int = 6) -> dict:
    """Self-play on toy grids, per opponent sampling: IoU with the known ROI patches."""
    scores_tr, _ = toy_grids(256, grid, np.random.default_rng(100))
    scores_te, truth = toy_grids(256, grid, np.random.default_rng(101))
    rows: dict[str, list[dict]] = {}
    for sampling in SAMPLINGS:
        key = f"self-play ({sampling})"
        rows[key] = []
        for seed in seeds:
            cfg = play_cfg.model_copy(update={"opponent_sampling": sampling})
            policy, hist = sp.train_selfplay(scores_tr, None, cfg, seed=seed)
            sel = sp.select_patches(policy, scores_te)
            r = scores(sel, truth)
            r["iou_per_section"] = float(np.mean([sp.iou(a, b) for a, b in zip(sel, truth)]))
            rows[key].append(r)
            print(f"[toy {grid}x{grid}] {key} seed {seed}: {r}", flush=True)
    return {"grid": grid, "roi_fraction": float(truth.mean()), "rows": rows}


def toy_table(res: dict) -> str:
    g = res["grid"]
    lines = [
        f"\n### toy {g} x {g} score grids with a known ROI (ROI {res['roi_fraction']:.1%} of "
        "patches; IoU/grid = mean over 256 test grids)\n",
        "| opponent sampling | IoU | Dice | IoU/grid | selected |",
        "|---|---|---|---|---|",
    ]
    for name, runs in res["rows"].items():
        cells = []
        for k in ("iou", "dice", "iou_per_section", "selected"):
            v = np.array([r[k] for r in runs])
            cells.append(f"{v.mean():.3f}" + (f" ± {v.std():.3f}" if len(v) > 1 else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(results: list[dict]) -> str:
    lines = []
    for res in results:
        det = res["detector"]
        bal = det.get("val_balanced_accuracy")
        lines.append(
            f"\n### train {res['train']} -> test {res['test']}  (ROI {res['roi_fraction']:.1%} "
            f"of voxels; detector tag accuracy: train {det['train_accuracy']:.3f}, held-out "
            f"{det['val_accuracy']:.3f}"
            + (f", held-out balanced {bal:.3f}" if bal is not None else "")
            + ")\n"
        )
        lines.append("| method | IoU | Dice | IoU/sec | selected |")
        lines.append("|---|---|---|---|---|")
        for name, runs in res["rows"].items():
            cells = []
            for k in ("iou", "dice", "iou_per_section", "selected"):
                v = np.array([r[k] for r in runs])
                cells.append(f"{v.mean():.3f}" + (f" ± {v.std():.3f}" if len(v) > 1 else ""))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few iterations (smoke test)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--min-area", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    ap.add_argument(
        "--part", choices=("real", "toy", "all"), default="all", help="which evaluation to run"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    det_cfg = DetectorConfig(iterations=150 if args.quick else 1500)
    play_cfg = SelfPlayConfig(
        iterations=40 if args.quick else 300,
        warmup_iterations=10 if args.quick else 50,
        games_per_iteration=32,
    )
    out: dict = {}
    if args.part in ("real", "all"):
        out["real"] = [
            evaluate(a, b, det_cfg, play_cfg, args.seeds, args.min_area)
            for a, b in (("fib_train", "fib25_tiny"), ("fib25_tiny", "fib_train"))
        ]
    if args.part in ("toy", "all"):
        toy_cfg = play_cfg.model_copy(update={"iterations": 40 if args.quick else 150})
        out["toy"] = evaluate_toy(toy_cfg, args.seeds)
    if "real" in out:
        print(table(out["real"]))
    if "toy" in out:
        print(toy_table(out["toy"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
