"""``08_weak_labels.py``: where to segment, from image-level tags, by self-play.

1. Tags: the CSV ``weak_labels.tags`` (or the rule ``weak_labels.derive``) names 2D crops of
   EM sections as containing an imaging defect or empty resin (1) or not (0).
2. A presence detector is trained on the tagged crops (``run.dir/weak_labels/detector.pt``).
3. The patch policy is trained by self-play on tiles of ``raw`` scored by the detector
   (``run.dir/weak_labels/policy.pt``); no labels are needed for this step.
4. Every tile of every z-section of ``raw`` is played greedily (the policy against itself); the
   selected patches (the defects) are left out of a uint8 mask (1 = segment here) with
   ``raw``'s voxel size and offset, by default ``run.dir/weak_mask.zarr`` / ``volumes/mask``.

With ``weak_labels.skip_blocks`` the stages 01-05 skip blocks with nothing to segment
(:mod:`marlseg.weak_labels.blocks`). Checkpoints of an earlier run with the same
inputs and settings are reused; ``--restart`` retrains. Runs in this process (CPU or one GPU),
region by region, so memory stays bounded; it is not distributed over workers.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from funlib.geometry import Coordinate

from marlseg.config import DatasetRef, WeakLabelsConfig
from marlseg.errors import ConfigError
from marlseg.networks.weak_labels import PatchPolicy, PresenceDetector
from marlseg.stage import Stage, check_writable
from marlseg.volumes import dataset_exists, is_hdf5, open_volume, prepare_volume
from marlseg.weak_labels import detector, labelling, tags, training
from marlseg.weak_labels.blocks import mask_ref
from marlseg.weak_labels.game import OBS_CHANNELS

REGION_VOXELS = 256
"""Target y/x extent of the regions the mask is computed and written in (and its chunks)."""


class WeakLabelsStage(Stage):
    """Where to segment, from image-level tags by self-play: a presence detector and two
    competing patch-selecting agents turn defect tags into a voxel mask (zarr)."""

    name = "weak_labels"
    description = "Where-to-segment mask from image-level defect tags by self-play."

    @property
    def section(self) -> WeakLabelsConfig:
        return self.config.weak_labels

    @property
    def mask_ref(self) -> DatasetRef:
        return mask_ref(self.config)

    @property
    def work_dir(self) -> Path:
        return self.run_dir / "weak_labels"

    # --- geometry ---------------------------------------------------------------------------
    def _raw(self):
        if self.config.raw is None:
            raise ConfigError("raw", "required: the EM volume to label")
        raw = open_volume(self.config.raw, field="raw")
        if raw.channel_dims or len(raw.voxel_size) != 3:
            raise ConfigError("raw", f"expected a 3D (z, y, x) volume, got shape {raw.shape}")
        return raw

    def _region(self) -> tuple[int, int, int]:
        ty, tx = self.section.tile_shape
        return 8, ty * max(1, REGION_VOXELS // ty), tx * max(1, REGION_VOXELS // tx)

    def _chunk_nm(self, voxel_size: Coordinate) -> Coordinate:
        if self.section.chunk_shape is not None:
            return Coordinate(self.section.chunk_shape)
        return Coordinate(self._region()) * voxel_size

    # --- checks -----------------------------------------------------------------------------
    def check(self) -> None:
        super().check()
        sec = self.section
        raw = self._raw()
        if sec.tags is None and sec.derive is None:
            raise ConfigError(
                "weak_labels.tags", "set a tags CSV (or weak_labels.derive, a rule on labels)"
            )
        if sec.tags is not None:
            self._tags = tags.read_tags(sec.tags)
        else:
            lab = open_volume(sec.derive.truth, field="weak_labels.derive.truth")
            if tuple(lab.shape) != tuple(raw.shape):
                raise ConfigError(
                    "weak_labels.derive.truth",
                    f"shape {list(lab.shape)} differs from raw's {list(raw.shape)}",
                )
        if sec.detector.checkpoint is not None and not Path(sec.detector.checkpoint).is_file():
            raise ConfigError(
                "weak_labels.detector.checkpoint", f"file not found: {sec.detector.checkpoint}"
            )
        if sec.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("weak_labels.device", "cuda requested but no GPU is available")
        chunk = self._chunk_nm(raw.voxel_size)
        bad = [int(c) % int(v) for c, v in zip(chunk, raw.voxel_size)]
        if any(bad):
            raise ConfigError(
                "weak_labels.chunk_shape",
                f"{list(chunk)} nm is not a multiple of the voxel size {list(raw.voxel_size)} nm",
            )
        out = self.mask_ref
        if is_hdf5(Path(out.path)):
            raise ConfigError("weak_labels.mask.path", f"outputs are zarr, not HDF5: {out.path}")
        check_writable("weak_labels.mask.path", Path(out.path).parent)
        if dataset_exists(out):
            have = open_volume(out, field="weak_labels.mask")
            existing = (
                list(have.shape),
                list(have.voxel_size),
                list(have.roi.offset),
                str(have.dtype),
                list(have._source_data.chunks),
            )
            wanted = (
                list(raw.shape),
                list(raw.voxel_size),
                list(raw.roi.offset),
                "uint8",
                list(chunk / raw.voxel_size),
            )
            if existing != wanted:
                raise ConfigError(
                    "weak_labels.mask",
                    f"{out.path}/{out.dataset} exists with shape/voxel size/offset/dtype/chunks "
                    f"{existing}, this run needs {wanted}: use another mask or delete it",
                )

    # --- run --------------------------------------------------------------------------------
    def run(self, restart: bool = False) -> dict[str, Any]:
        sec = self.section
        t0 = time.time()
        device = _device(sec.device)
        raw = self._raw()
        tag_rows = getattr(self, "_tags", None) or self._load_tags()
        out = prepare_volume(
            self.mask_ref,
            raw.roi,
            raw.voxel_size,
            np.uint8,
            self._chunk_nm(raw.voxel_size),
            field="weak_labels.mask",
        )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        n_crops = sum(t.num_crops for t in tag_rows)
        _say(f"weak_labels: {len(tag_rows)} tag rows, {n_crops} crops")

        det, det_metrics = self._detector(tag_rows, device, restart)
        levels = _levels(det_metrics)
        policy, play_metrics = self._policy(raw, det, levels, device, restart)

        stats = labelling.label_volume(
            raw,
            out,
            det,
            policy,
            patch=sec.patch_size,
            tile=sec.tile_shape,
            context=sec.score_context,
            levels=levels,
            region=self._region(),
            device=device,
            log=_say,
        )
        summary = {
            "mask": str(self.mask_ref),
            "detector": det_metrics,
            "selfplay": play_metrics,
            "selected_fraction": stats["selected_fraction"],
            "kept_fraction": stats["kept_fraction"],
            "voxels": stats["voxels"],
            "wall_s": time.time() - t0,
        }
        (self.work_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        _say(
            f"weak_labels: wrote {self.mask_ref} ({stats['kept_fraction']:.1%} to segment); "
            f"detector tag accuracy {_fmt(det_metrics.get('val_accuracy'))} (held out); "
            f"summary in {self.work_dir / 'summary.json'}"
        )
        return summary

    def _load_tags(self) -> list[tags.Tag]:
        sec = self.section
        if sec.tags is not None:
            return tags.read_tags(sec.tags)
        d = sec.derive
        return tags.derive_tags(self.config.raw, d.truth, d.crop_shape, d.min_fraction)

    def _detector(
        self, tag_rows: list[tags.Tag], device: torch.device, restart: bool
    ) -> tuple[PresenceDetector, dict[str, Any]]:
        sec = self.section
        if sec.detector.checkpoint is not None:
            state, meta = labelling.load_checkpoint(Path(sec.detector.checkpoint))
            return _detector_from(state, meta, device), meta.get("metrics", {})
        key = labelling.fingerprint(
            {
                "tags": tags.tags_fingerprint(tag_rows),
                "detector": sec.detector.model_dump(mode="json"),
                "seed": sec.seed,
            }
        )
        path = self.work_dir / "detector.pt"
        if path.is_file() and not restart:
            state, meta = labelling.load_checkpoint(path)
            if meta.get("fingerprint") == key:
                _say(f"weak_labels: reusing {path}")
                return _detector_from(state, meta, device), meta["metrics"]
        crops, labels = tags.load_crops(tag_rows)
        det, metrics = detector.train_detector(
            crops, labels, sec.detector, seed=sec.seed, device=device, log=_say
        )
        meta = {
            "fingerprint": key,
            "metrics": metrics,
            "width": sec.detector.width,
            "lse_r": sec.detector.lse_r,
        }
        labelling.save_checkpoint(path, det, meta)
        return det, metrics

    def _policy(
        self,
        raw,
        det: PresenceDetector,
        levels: tuple[float, float],
        device: torch.device,
        restart: bool,
    ) -> tuple[PatchPolicy, dict[str, Any]]:
        sec = self.section
        key = labelling.fingerprint(
            {
                "detector": _digest(det),
                "levels": levels,
                "selfplay": sec.selfplay.model_dump(mode="json"),
                "patch": sec.patch_size,
                "tile": sec.tile_shape,
                "context": sec.score_context,
                "raw": str(Path(self.config.raw.path).absolute()) + ":" + self.config.raw.dataset,
                "seed": sec.seed,
            }
        )
        path = self.work_dir / "policy.pt"
        if path.is_file() and not restart:
            state, meta = labelling.load_checkpoint(path)
            if meta.get("fingerprint") == key:
                _say(f"weak_labels: reusing {path}")
                policy = PatchPolicy(OBS_CHANNELS, meta["width"])
                policy.load_state_dict(state)
                return policy.to(device).eval(), meta["metrics"]
        rng = np.random.default_rng(sec.seed)
        tiles = labelling.sample_tiles(
            raw, sec.tile_shape, sec.score_context, sec.selfplay.max_tiles, rng
        )
        scores, feats = detector.tile_inputs(det, tiles, sec.patch_size, sec.score_context, device)
        policy, hist = training.train_selfplay(
            scores,
            feats,
            sec.selfplay,
            levels=levels,
            seed=sec.seed,
            device=device,
            log=_say,
        )
        last = slice(-max(1, sec.selfplay.iterations // 10), None)
        metrics = {
            "tiles": len(tiles),
            "agreement_with_relative_split": float(np.mean(hist.agreement[last])),
            "correct_terminations": float(np.mean(hist.correct_termination[last])),
            "mean_game_steps": float(np.mean(hist.game_steps[last])),
            "pool_size": hist.pool_size[-1],
        }
        labelling.save_checkpoint(
            path, policy, {"fingerprint": key, "metrics": metrics, "width": sec.selfplay.width}
        )
        return policy, metrics


def _levels(det_metrics: dict[str, Any]) -> tuple[float, float]:
    """The game's ROI and background levels: the detector's mean scores on the crops tagged 1
    and 0 (a detector checkpoint from before they were recorded: 0.9 and 0.1)."""
    return (
        float(det_metrics.get("level_roi", 0.9)),
        float(det_metrics.get("level_background", 0.1)),
    )


def _digest(model: torch.nn.Module) -> str:
    """A digest of the weights: the policy is reused only with the detector it was trained on."""
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _detector_from(state: dict, meta: dict, device: torch.device) -> PresenceDetector:
    det = PresenceDetector(width=int(meta.get("width", 16)), lse_r=float(meta.get("lse_r", 5.0)))
    try:
        det.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(
            "weak_labels.detector.checkpoint", f"not a detector checkpoint: {e}"
        ) from None
    return det.to(device).eval()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _say(msg: str) -> None:
    print(msg, flush=True)
