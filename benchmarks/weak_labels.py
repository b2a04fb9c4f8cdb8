"""Where-to-segment masks from defect tags: self-play against threshold baselines.

``python benchmarks/weak_labels.py [--seeds 0 1 2] [--quick] [--out docs/weak_labels.json]``

Data (real EM underneath, exact truth): imaging defects and empty resin are inserted into the
repository's two FIB-SEM volumes by :func:`marlseg.weak_labels.defects.insert_defects`
(seeded, documented there). ``fib_train`` (defect seed ``100 + seed``) is cut by section:
sections 0-34 give the tags (20 x 20 crops, tag 1 when >= 25 % defect, the
``weak_labels.derive`` rule), the detector's training crops and the agents' training tiles;
sections 35-49 are the **validation split** on which each threshold baseline chooses its
threshold (best mIoU over a grid). ``fib25_tiny`` (defect seed 7, the same for every seed) is
the **held-out test volume**: neither the detector nor the agents nor any threshold choice saw
it.

Arms, all on the same detector per seed:

* ``self-play``: greedy games of the trained policy against itself on 50 x 50 tiles of
  10 x 10 patches (PFSP opponents, relative termination); the selected patches are the defect.
* ``score threshold``: the detector's patch scores >= t (t chosen on validation).
* ``CAM threshold``: the detector's class activation map (probability per voxel) >= t (t
  chosen on validation).
* ``relative split (no agents)``: the selection perfect play converges to under the relative
  termination rule, computed directly from the scores (what the game's rule alone gives).
* ``oracle patches``: patches at least half defect in the truth (the best 10 x 10 patch mask).
* ``no mask``: segment everything (the trivial competitor).

Scores on the test volume, pooled over its voxels: **mIoU** = mean of the IoU of the two
classes (defect, tissue); **Dice** of the defect class. Writes ``--out`` (per arm the per-seed
values, chosen thresholds and timings), the figure ``docs/figures/weak_labels.png`` and the
table in ``docs/weak_labels.md`` (between its ``<!-- table -->`` markers). One CPU thread;
about 10 minutes for three seeds on a laptop core (``--quick``: a smoke test).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from marlseg.config import DatasetRef, DetectorConfig, SelfPlayConfig
from marlseg.weak_labels.defects import insert_defects
from marlseg.weak_labels.detector import cam_probability, tile_inputs, to_patches, train_detector
from marlseg.weak_labels.game import relative_split
from marlseg.weak_labels.labelling import mask_sections, patches_to_mask, read_window, sample_tiles
from marlseg.weak_labels.tags import derive_tags, load_crops
from marlseg.weak_labels.training import train_selfplay

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
CROP = (20, 20)
PATCH, TILE = (10, 10), (50, 50)
"""Game patch and tile (y, x): 10 x 10 patches, 5 x 5 of them per game."""
CONTEXT = (CROP[0] - PATCH[0]) // 2
"""The detector scores a patch with this margin: a window the size of the tagged crops."""
TRAIN_Z, VAL_Z = (0, 35), (35, 50)
TEST_SEED = 7
THRESHOLDS = np.round(np.arange(0.05, 1.0, 0.05), 2)
ARMS = (
    "self-play",
    "score threshold",
    "CAM threshold",
    "relative split (no agents)",
    "oracle patches",
    "no mask",
)
MARK_BEGIN, MARK_END = "<!-- table -->", "<!-- /table -->"


def miou_dice(defect: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """mIoU over the classes (defect, tissue) and the defect class's Dice."""
    d, t = np.asarray(defect, bool), np.asarray(truth, bool)
    ious = []
    for a, b in ((d, t), (~d, ~t)):
        union = np.logical_or(a, b).sum()
        ious.append(np.logical_and(a, b).sum() / union if union else 1.0)
    total = d.sum() + t.sum()
    dice = 2 * np.logical_and(d, t).sum() / total if total else 1.0
    return {"miou": float(np.mean(ious)), "dice": float(dice)}


def padded(raw: np.ndarray) -> np.ndarray:
    """Sections with the context margin (reflection), sizes padded to whole tiles."""
    _, ny, nx = raw.shape
    return read_window(
        raw,
        (0, len(raw)),
        (-CONTEXT, ny + (-ny % TILE[0]) + CONTEXT),
        (-CONTEXT, nx + (-nx % TILE[1]) + CONTEXT),
    )


def patch_scores(det, raw: np.ndarray) -> np.ndarray:
    """Detector scores of every patch of whole sections, ``(nz, gy, gx)``."""
    s, _ = tile_inputs(det, padded(raw), PATCH, CONTEXT)
    return s


def to_voxels(sel: np.ndarray, shape) -> np.ndarray:
    return patches_to_mask(sel, PATCH)[:, : shape[1], : shape[2]]


def best_threshold(maps: np.ndarray, truth: np.ndarray) -> float:
    """The threshold of ``maps >= t`` with the best mIoU against ``truth`` (validation)."""
    return float(max(THRESHOLDS, key=lambda t: miou_dice(maps >= t, truth)["miou"]))


class _Vol:
    """A numpy volume dressed as the Array ``sample_tiles`` reads."""

    def __init__(self, data: np.ndarray):
        self._source_data = data
        self.shape = data.shape


def load(name: str) -> np.ndarray:
    with h5py.File(DATA / f"{name}.h5", "r") as f:
        return f["volumes/raw"][:]


def run_seed(
    seed: int, det_cfg, play_cfg, test_raw, test_truth, work: Path
) -> tuple[dict, dict[str, np.ndarray]]:
    t0 = time.time()
    torch.manual_seed(seed)
    raw, truth = insert_defects(load("fib_train"), 100 + seed)
    path = work / f"train_{seed}.h5"
    with h5py.File(path, "w") as f:
        f["raw"], f["truth"] = raw, truth
    tags = derive_tags(
        DatasetRef(path=path, dataset="raw"),
        DatasetRef(path=path, dataset="truth"),
        CROP,
        0.25,
        z_range=TRAIN_Z,
    )
    crops, labels = load_crops(tags)
    det, det_metrics = train_detector(crops, labels, det_cfg, seed=seed)
    t_det = time.time() - t0

    train = raw[TRAIN_Z[0] : TRAIN_Z[1]]
    tiles = sample_tiles(
        _Vol(train), TILE, CONTEXT, play_cfg.max_tiles, np.random.default_rng(seed)
    )
    scores, feats = tile_inputs(det, tiles, PATCH, CONTEXT)
    t1 = time.time()
    levels = (det_metrics["level_roi"], det_metrics["level_background"])
    policy, hist = train_selfplay(scores, feats, play_cfg, levels=levels, seed=seed)
    t_play = time.time() - t1

    val_raw, val_truth = raw[VAL_Z[0] : VAL_Z[1]], truth[VAL_Z[0] : VAL_Z[1]]
    val_scores = to_voxels(patch_scores(det, val_raw), val_raw.shape)
    val_cam = np.stack([cam_probability(det, s) for s in val_raw])
    t_score = best_threshold(val_scores, val_truth)
    t_cam = best_threshold(val_cam, val_truth)

    shape = test_raw.shape
    test_ps = patch_scores(det, test_raw)
    sp_mask = mask_sections(
        det, policy, padded(test_raw), patch=PATCH, tile=TILE, context=CONTEXT, levels=levels
    )
    sp_mask = sp_mask[:, : shape[1], : shape[2]].astype(bool)
    # the relative split per game tile (tiles of TILE, like the agents' games)
    gy, gx = TILE[0] // PATCH[0], TILE[1] // PATCH[1]
    tiled = to_patches(test_ps, (gy, gx))  # (nz, ty, tx, gy, gx)
    split = relative_split(tiled.reshape(-1, gy, gx), levels).reshape(tiled.shape)
    split = split.transpose(0, 1, 3, 2, 4).reshape(test_ps.shape)
    pad_truth = np.pad(test_truth, ((0, 0), (0, -shape[1] % PATCH[0]), (0, -shape[2] % PATCH[1])))
    oracle = to_patches(pad_truth.astype(np.float32), PATCH).mean(axis=(3, 4)) >= 0.5
    masks = {
        "self-play": sp_mask,
        "score threshold": to_voxels(test_ps, shape) >= t_score,
        "CAM threshold": np.stack([cam_probability(det, s) for s in test_raw]) >= t_cam,
        "relative split (no agents)": to_voxels(split, shape),
        "oracle patches": to_voxels(oracle, shape),
        "no mask": np.zeros(shape, bool),
    }
    res = {arm: miou_dice(m, test_truth) for arm, m in masks.items()}
    tail = slice(-max(1, play_cfg.iterations // 10), None)
    out = {
        "seed": seed,
        "arms": res,
        "thresholds": {"score threshold": t_score, "CAM threshold": t_cam},
        "detector": det_metrics,
        "selfplay": {
            "correct_terminations": float(np.mean(hist.correct_termination[tail])),
            "agreement_with_relative_split": float(np.mean(hist.agreement[tail])),
            "pool_size": hist.pool_size[-1],
        },
        "detector_s": round(t_det, 1),
        "selfplay_s": round(t_play, 1),
        "wall_s": round(time.time() - t0, 1),
    }
    print(json.dumps({k: out[k] for k in ("seed", "arms", "thresholds", "wall_s")}), flush=True)
    return out, masks


def summarise(runs: list[dict]) -> dict:
    """Per arm: the per-seed mIoU and Dice, and their mean and std."""
    arms = {}
    for arm in ARMS:
        m = [r["arms"][arm]["miou"] for r in runs]
        d = [r["arms"][arm]["dice"] for r in runs]
        arms[arm] = {
            "miou": m,
            "dice": d,
            "miou_mean": float(np.mean(m)),
            "miou_std": float(np.std(m)),
            "dice_mean": float(np.mean(d)),
            "dice_std": float(np.std(d)),
        }
    return arms


def table(result: dict) -> str:
    """The docs' table, from the JSON alone."""
    lines = [
        "| arm | mIoU (mean ± std) | Dice, defects (mean ± std) | per seed mIoU |",
        "|---|---|---|---|",
    ]
    for arm, a in result["arms"].items():
        seeds = ", ".join(f"{v:.3f}" for v in a["miou"])
        lines.append(
            f"| {arm} | {a['miou_mean']:.3f} ± {a['miou_std']:.3f} | "
            f"{a['dice_mean']:.3f} ± {a['dice_std']:.3f} | {seeds} |"
        )
    return "\n".join(lines)


def write_table(result: dict, doc: Path) -> None:
    text = doc.read_text()
    a, b = text.index(MARK_BEGIN) + len(MARK_BEGIN), text.index(MARK_END)
    doc.write_text(text[:a] + "\n" + table(result) + "\n" + text[b:])


def figure(result: dict, example: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, 5, figsize=(16, 3.4), gridspec_kw={"width_ratios": [2.4, 1, 1, 1, 1]}
    )
    arms = list(result["arms"])
    for i, arm in enumerate(arms):
        v = result["arms"][arm]["miou"]
        axes[0].bar(i, np.mean(v), yerr=np.std(v), color="C0" if arm == "self-play" else "C7")
        axes[0].plot([i] * len(v), v, "k.", ms=4)
    axes[0].set_xticks(range(len(arms)), [a.replace(" (", "\n(") for a in arms], fontsize=7)
    axes[0].set_ylim(0.4, 1.0)
    axes[0].set_ylabel("mIoU on the held-out volume")
    for ax, (title, img) in zip(axes[1:], example.items()):
        ax.imshow(img, cmap="gray", interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="few iterations (smoke test)")
    ap.add_argument("--append", action="store_true", help="add the seeds to those already in --out")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "weak_labels.json")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "weak_labels.md")
    ap.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "weak_labels.png")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    det_cfg = DetectorConfig(iterations=100 if args.quick else 1200)
    play_cfg = SelfPlayConfig(
        iterations=20 if args.quick else 300,
        warmup_iterations=5 if args.quick else 50,
        max_tiles=64 if args.quick else 512,
    )
    t0 = time.time()
    test_raw, test_truth = insert_defects(load("fib25_tiny"), TEST_SEED)
    z = int(np.argmax(test_truth.mean(axis=(1, 2)) * (test_truth.mean(axis=(1, 2)) < 0.9)))
    settings = {
        "detector": det_cfg.model_dump(mode="json"),
        "selfplay": play_cfg.model_dump(mode="json"),
        "quick": args.quick,
    }
    runs: list[dict] = []
    if args.append and args.out.exists():
        before = json.loads(args.out.read_text())
        if before["settings"] != settings:
            ap.error(f"{args.out} was made with other settings; drop --append")
        runs = before["runs"]
    example = None
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [s for s in args.seeds if s not in {r["seed"] for r in runs}]:
            run, masks = run_seed(seed, det_cfg, play_cfg, test_raw, test_truth, Path(tmp))
            runs.append(run)
            # written after every seed: an interrupted benchmark keeps the seeds it finished
            result = {
                "protocol": __doc__.split("\n\n")[2].replace("\n", " "),
                "test_defect_fraction": float(test_truth.mean()),
                "arms": summarise(runs),
                "runs": runs,
                "settings": settings,
                "wall_s": round(time.time() - t0, 1),
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
            if example is None:
                example = {
                    f"test section {z}": test_raw[z],
                    "truth (defect)": test_truth[z],
                    f"self-play, seed {seed}": masks["self-play"][z],
                    "score threshold": masks["score threshold"][z],
                }
            figure(result, example, args.figure)
            if args.doc.exists():
                write_table(result, args.doc)
            print(table(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
