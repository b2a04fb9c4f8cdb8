"""Affinity training of the UNETR: the loop behind ``00_train.py``.

Batches come from :func:`marlseg.gp_pipelines.recipes.affinity_batches` (raw in ``[-1, 1]``,
0/1 affinities, class-balancing weights); the loss is the weighted binary cross-entropy on the
network's logits (or the weighted MSE on its sigmoid output, as lsd). Everything the run writes
lives under ``run.dir/train/``:

- ``checkpoints/iter_NNNNNNN.pt`` every ``checkpoint_every`` iterations and at the end: model,
  optimizer, iteration, RNG states, best VOI so far. A re-run resumes from the newest one; with
  ``precache_workers: 0`` the resumed run is the uninterrupted run, batch for batch.
- ``best.pt``: the model with the lowest validation VOI (model only).
- ``loss.csv`` and ``tensorboard/``: the loss every ``log_every`` iterations, plus seconds
  spent waiting for data and computing (so a starving pipeline shows).
- ``validation.csv``: VOI split/merge and adapted Rand error per threshold per validation.
- ``snapshots/iter_NNNNNNN.png``: raw / predicted / target affinities of the middle section.

Validation (``train.validation``) is :class:`marlseg.validation.Validation`, the in-memory
chain equivalent to the blockwise one. ``python -m marlseg.train`` scores a saved checkpoint
with it (:func:`main`).
"""

from __future__ import annotations

import csv
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from marlseg.config import Config, NetworkConfig, ValidationConfig
from marlseg.errors import ConfigError
from marlseg.gp_pipelines.targets import LSD_CHANNELS
from marlseg.validation import Validation, score_checkpoint

CHECKPOINT_RE = re.compile(r"iter_(\d+)\.pt$")
LOSS_FIELDS = ["iteration", "loss", "data_s", "step_s", "lr"]
VALIDATION_FIELDS = ["iteration", "threshold", "voi_split", "voi_merge", "voi", "arand"]


class TrainPaths:
    """Where a training run writes (all under ``run.dir/train``)."""

    def __init__(self, run_dir: Path):
        self.root = Path(run_dir) / "train"
        self.checkpoints = self.root / "checkpoints"
        self.best = self.root / "best.pt"
        self.loss_csv = self.root / "loss.csv"
        self.validation_csv = self.root / "validation.csv"
        self.tensorboard = self.root / "tensorboard"
        self.snapshots = self.root / "snapshots"

    def checkpoint(self, iteration: int) -> Path:
        return self.checkpoints / f"iter_{iteration:07d}.pt"

    def all_checkpoints(self) -> list[tuple[int, Path]]:
        if not self.checkpoints.is_dir():
            return []
        found = []
        for p in self.checkpoints.iterdir():
            m = CHECKPOINT_RE.search(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest(self) -> Path | None:
        found = self.all_checkpoints()
        return found[-1][1] if found else None


# --- pieces -----------------------------------------------------------------------------------
def affinity_loss(logits, target, weights, kind: str = "bce"):
    """Class-balanced loss: mean over voxels and channels of ``weights * l``."""
    import torch
    import torch.nn.functional as F

    if kind == "bce":
        per_voxel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    elif kind == "mse":
        per_voxel = (torch.sigmoid(logits) - target) ** 2
    else:
        raise ValueError(f"unknown loss {kind!r}")
    return (weights * per_voxel).mean()


def lsd_loss(logits, target, mask):
    """Masked mean squared error of the sigmoid descriptors (lsd's MTLSD auxiliary loss)."""
    import torch

    err = mask * (torch.sigmoid(logits) - target) ** 2
    return err.sum() / mask.sum().clamp(min=1.0)


def rng_state() -> dict[str, Any]:
    import torch

    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(
        ("MT19937", keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached))
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a file."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def model_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint without trainer state (optimizer, RNG): what prediction needs."""
    return {k: v for k, v in ckpt.items() if k not in ("optimizer", "rng")}


def trim_csv(path: Path, fields: list[str], upto: int) -> None:
    """Keep the rows of iterations ``<= upto`` (a resumed run rewrites what came after)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= upto]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def append_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerows(rows)


def write_snapshot(path: Path, raw, pred, target, iteration: int) -> None:
    """PNG of the middle z-section: raw, predicted and target affinities (channels 0-2 as
    RGB: z, y, x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = raw.shape[-3] // 2
    zo = pred.shape[-3] // 2

    def rgb(a):
        return np.clip(np.moveaxis(a[:3, zo], 0, -1), 0, 1)

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    axes[0].imshow(raw[0, z], cmap="gray", vmin=-1, vmax=1)
    axes[0].set_title("raw")
    axes[1].imshow(rgb(pred))
    axes[1].set_title("prediction (z,y,x -> R,G,B)")
    axes[2].imshow(rgb(target))
    axes[2].set_title("target")
    for a in axes:
        a.axis("off")
    fig.suptitle(f"iteration {iteration}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --- the loop ---------------------------------------------------------------------------------
def network_dict(network: NetworkConfig) -> dict[str, Any]:
    return network.model_dump(mode="json")


def check_resumable(config: Config, restart: bool = False) -> Path | None:
    """The checkpoint a run would resume from; ConfigError if it was made with another
    network than the configured one (unless ``restart``)."""
    if restart:
        return None
    latest = TrainPaths(config.run.dir).latest()
    if latest is None:
        return None
    from marlseg.networks.unetr import read_checkpoint

    ckpt = read_checkpoint(latest, "run.dir")
    if ckpt.get("network") != network_dict(config.network):
        raise ConfigError(
            "network",
            f"differs from the network of {latest} ({ckpt.get('network')}); re-run with "
            "--restart to train afresh, or use a fresh run.dir",
        )
    if ckpt.get("neighborhood") not in (None, config.train.neighborhood):
        raise ConfigError(
            "train.neighborhood",
            f"differs from {latest}'s {ckpt.get('neighborhood')}; re-run with --restart",
        )
    return latest


def train(
    config: Config, restart: bool = False, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train (or resume training) the UNETR on affinities; returns a summary."""
    import torch

    from marlseg.gp_pipelines.recipes import affinity_batches
    from marlseg.inference import select_device
    from marlseg.networks.unetr import build_unetr, load_encoder
    from marlseg.volumes import open_volume

    tc = config.train
    paths = TrainPaths(config.run.dir)
    if restart and paths.root.exists():
        shutil.rmtree(paths.root)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    device = select_device(tc.device, "train.device")
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed & 0xFFFFFFFF)
    random.seed(tc.seed)

    nbh = [list(o) for o in tc.neighborhood]
    input_shape = list(config.network.input_shape)
    lsd_channels = LSD_CHANNELS if tc.lsds else 0
    model = build_unetr(config.network, len(nbh) + lsd_channels).to(device)
    model.affinity_channels = len(nbh)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    validation = Validation(tc.validation) if tc.validation is not None else None
    raw0 = open_volume(tc.raw[0], field="train.raw[0]")
    voxel_size = [int(v) for v in raw0.voxel_size]

    start, best_voi, best_iteration = 0, None, None
    latest = check_resumable(config, restart)
    if latest is not None:
        ckpt = torch.load(latest, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["iteration"])
        best_voi, best_iteration = ckpt.get("best_voi"), ckpt.get("best_iteration")
        set_rng_state(ckpt["rng"])
        log(f"train: resuming from {latest} (iteration {start})")
    elif tc.init_encoder is not None:
        load_encoder(model, tc.init_encoder)
        log(f"train: encoder initialised from {tc.init_encoder}")
    paths.root.mkdir(parents=True, exist_ok=True)
    trim_csv(paths.loss_csv, LOSS_FIELDS, start)
    trim_csv(paths.validation_csv, VALIDATION_FIELDS, start)

    def state(iteration: int, loss: float | None) -> dict[str, Any]:
        return {
            "kind": "unetr",
            "network": network_dict(config.network),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "iteration": iteration,
            "neighborhood": nbh,
            "lsds": bool(tc.lsds),
            "voxel_size": voxel_size,
            "loss": loss,
            "best_voi": best_voi,
            "best_iteration": best_iteration,
            "train": tc.model_dump(mode="json"),
        }

    summary: dict[str, Any] = {"start_iteration": start, "iterations": tc.iterations}
    if start >= tc.iterations:
        log(f"train: already at iteration {start} of {tc.iterations}; nothing to do")
        _export(config, paths, log)
        return {**summary, "best_voi": best_voi, "best_iteration": best_iteration}

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(paths.tensorboard), purge_step=start if start else None)
    batches = affinity_batches(
        tc.raw,
        tc.labels,
        input_shape,
        input_shape,
        nbh,
        tc.batch_size,
        tc.augment,
        tc.seed,
        tc.precache_workers,
        mask_refs=tc.masks or None,
        min_masked=tc.min_masked,
        start=start,
        lsd_sigma=tc.lsd_sigma if tc.lsds else None,
        lsd_downsample=tc.lsd_downsample,
    )
    window: list[tuple[float, float, float]] = []
    last_loss = None
    model.train()
    t_run = time.perf_counter()
    try:
        for it in range(start, tc.iterations):
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            raw = torch.from_numpy(batch["raw"]).to(device)
            target = torch.from_numpy(batch["affs"]).to(device)
            weights = torch.from_numpy(batch["weights"]).to(device)
            logits = model.logits(raw)
            loss = affinity_loss(logits[:, : len(nbh)], target, weights, tc.loss)
            if tc.lsds:
                lsds = torch.from_numpy(batch["lsds"]).to(device)
                lsds_mask = torch.from_numpy(batch["lsds_mask"]).to(device)
                loss = loss + tc.lsd_weight * lsd_loss(logits[:, len(nbh) :], lsds, lsds_mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_value = float(loss.detach())
            t2 = time.perf_counter()
            window.append((loss_value, t1 - t0, t2 - t1))
            n = it + 1

            if n % tc.log_every == 0 or n == tc.iterations:
                mean = np.mean(window, axis=0)
                last_loss = float(mean[0])
                append_csv(
                    paths.loss_csv,
                    LOSS_FIELDS,
                    [
                        {
                            "iteration": n,
                            "loss": f"{mean[0]:.6f}",
                            "data_s": f"{mean[1]:.4f}",
                            "step_s": f"{mean[2]:.4f}",
                            "lr": tc.lr,
                        }
                    ],
                )
                writer.add_scalar("loss", mean[0], n)
                writer.add_scalar("seconds/data", mean[1], n)
                writer.add_scalar("seconds/step", mean[2], n)
                log(
                    f"train: iteration {n}/{tc.iterations} loss {mean[0]:.4f} "
                    f"(data {mean[1]:.3f} s, step {mean[2]:.3f} s per iteration)"
                )
                window = []

            if n % tc.snapshot_every == 0 or n == tc.iterations:
                write_snapshot(
                    paths.snapshots / f"iter_{n:07d}.png",
                    batch["raw"][0],
                    torch.sigmoid(logits[0, : len(nbh)]).detach().float().cpu().numpy(),
                    batch["affs"][0],
                    n,
                )

            if validation is not None and (n % tc.validate_every == 0 or n == tc.iterations):
                rows = validation.score(model, device)
                best_row = min(rows, key=lambda r: r["voi"])
                append_csv(
                    paths.validation_csv,
                    VALIDATION_FIELDS,
                    [{"iteration": n, **{k: round(v, 5) for k, v in r.items()}} for r in rows],
                )
                writer.add_scalar("validation/voi", best_row["voi"], n)
                writer.add_scalar("validation/voi_split", best_row["voi_split"], n)
                writer.add_scalar("validation/voi_merge", best_row["voi_merge"], n)
                writer.add_scalar("validation/arand", best_row["arand"], n)
                improved = best_voi is None or best_row["voi"] < best_voi
                if improved:
                    best_voi, best_iteration = best_row["voi"], n
                    save_atomic({**state(n, last_loss), "validation": best_row}, paths.best)
                log(
                    f"train: validation at {n}: VOI {best_row['voi']:.3f} (split "
                    f"{best_row['voi_split']:.3f}, merge {best_row['voi_merge']:.3f}, ARAND "
                    f"{best_row['arand']:.3f}, threshold {best_row['threshold']})"
                    + (" - best so far" if improved else "")
                )

            if n % tc.checkpoint_every == 0 or n == tc.iterations:
                save_atomic(
                    {
                        **state(n, last_loss),
                        "optimizer": optimizer.state_dict(),
                        "rng": rng_state(),
                    },
                    paths.checkpoint(n),
                )
                for _, old in paths.all_checkpoints()[: -tc.keep_checkpoints]:
                    old.unlink(missing_ok=True)
    finally:
        batches.close()
        writer.close()

    wall = time.perf_counter() - t_run
    log(f"train: {tc.iterations - start} iterations in {wall:.0f} s; last loss {last_loss}")
    _export(config, paths, log)
    return {
        **summary,
        "wall_s": wall,
        "loss": last_loss,
        "best_voi": best_voi,
        "best_iteration": best_iteration,
    }


def _export(config: Config, paths: TrainPaths, log: Callable[[str], None]) -> None:
    """Write the best (else the last) checkpoint, model only, to ``train.export``."""
    import torch

    src = paths.best if paths.best.exists() else paths.latest()
    if src is None:
        return
    export = export_path(config)
    ckpt = model_checkpoint(torch.load(src, map_location="cpu", weights_only=True))
    save_atomic(ckpt, export)
    log(f"train: exported {src.name} (iteration {ckpt['iteration']}) to {export}")


def export_path(config: Config) -> Path:
    """Where training exports its model: ``train.export``, else ``run.dir/train/export.pt``.
    The shipped checkpoint is never a default target; ConfigError if ``train.export`` names it
    (shipping is a deliberate copy, see ``checkpoints/README.md``)."""
    from marlseg.inference import SHIPPED_CHECKPOINT

    if config.train.export is None:
        return TrainPaths(config.run.dir).root / "export.pt"
    export = Path(config.train.export)
    if export.resolve() == SHIPPED_CHECKPOINT.resolve():
        raise ConfigError(
            "train.export",
            f"{export} is the shipped checkpoint; export under run.dir and copy it there "
            "deliberately (checkpoints/README.md says how)",
        )
    return export


def main(argv: list[str] | None = None) -> int:
    """``python -m marlseg.train CHECKPOINT RAW LABELS [--offset Z Y X] [--shape Z Y X]``:
    score a checkpoint with the in-memory validation chain (refs are ``path:dataset``)."""
    import argparse
    import json

    from marlseg.config import DatasetRef
    from marlseg.errors import MarlsegError

    def ref(s: str) -> DatasetRef:
        path, _, dataset = s.rpartition(":")
        return DatasetRef(path=Path(path), dataset=dataset)

    p = argparse.ArgumentParser(prog="python -m marlseg.train", description=main.__doc__)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("raw", type=ref, help="path:dataset")
    p.add_argument("labels", type=ref, help="path:dataset")
    p.add_argument("--offset", type=int, nargs=3, default=None, help="nm")
    p.add_argument("--shape", type=int, nargs=3, default=None, help="nm")
    p.add_argument("--merge-function", default="hist_quant_75")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    try:
        vc = ValidationConfig(
            raw=a.raw,
            labels=a.labels,
            offset=a.offset,
            shape=a.shape,
            merge_function=a.merge_function,
        )
        rows = score_checkpoint(a.checkpoint, vc, a.device)
    except MarlsegError as e:
        print(f"error: {e.line()}", file=sys.stderr)
        return e.exit_code
    best = min(rows, key=lambda r: r["voi"])
    print(json.dumps({"per_threshold": rows, "best": best}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
