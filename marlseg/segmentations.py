"""Which segmentation a threshold means: the scores 06 wrote and the best threshold among
them, the fragment -> segment lookup tables under ``run.dir/luts``, and the segmentation of a
threshold as a label volume (the dataset 05 extracted, else the fragments seen through the
threshold's LUT).

May import :mod:`marlseg.volumes`, :mod:`marlseg.config` and :mod:`marlseg.errors`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from funlib.geometry import Roi
from funlib.persistence import Array

from marlseg import volumes
from marlseg.config import Config, DatasetRef
from marlseg.errors import ConfigError


def best_threshold(scores: Sequence[dict[str, Any]]) -> float | None:
    """The threshold with the lowest ``voi_split + voi_merge`` (the first one on ties), or
    ``None`` when no entry has both numbers."""
    best: tuple[float, float] | None = None
    for entry in scores:
        try:
            total = float(entry["voi_split"]) + float(entry["voi_merge"])
            t = float(entry["threshold"])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(total) and (best is None or total < best[0]):
            best = (total, t)
    return None if best is None else best[1]


def read_scores(run_dir: Path) -> list[dict[str, Any]]:
    """``run.dir/scores.json`` (written by 06), or ``[]`` when the run was not evaluated."""
    path = Path(run_dir) / "scores.json"
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(str(path), f"not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise ConfigError(str(path), "expected a list of {threshold, voi_split, voi_merge, arand}")
    return data


@dataclass
class Lut:
    """A fragment -> segment lookup table (one threshold)."""

    fragment_ids: np.ndarray
    segment_ids: np.ndarray
    path: Path

    @classmethod
    def load(cls, path: Path) -> Lut:
        try:
            with np.load(path) as f:
                frags, segs = f["fragment_ids"], f["segment_ids"]
        except (OSError, KeyError, ValueError) as e:
            raise ConfigError(str(path), f"not a LUT (fragment_ids, segment_ids): {e}") from None
        if frags.shape != segs.shape or frags.ndim != 1:
            raise ConfigError(
                str(path), f"fragment_ids {frags.shape} and segment_ids {segs.shape} differ"
            )
        order = np.argsort(frags, kind="stable")
        return cls(frags[order].astype(np.uint64), segs[order].astype(np.uint64), Path(path))

    def apply(self, fragments: np.ndarray) -> np.ndarray:
        """Relabel ``fragments``; ids the table does not list (and 0) keep their value, as
        ``funlib``'s ``replace_values`` leaves them."""
        x = np.asarray(fragments).astype(np.uint64, copy=False)
        if self.fragment_ids.size == 0:
            return x.copy()
        idx = np.searchsorted(self.fragment_ids, x).clip(0, self.fragment_ids.size - 1)
        hit = self.fragment_ids[idx] == x
        return np.where(hit, self.segment_ids[idx], x)


def find_lut(config: Config, threshold: float) -> Path | None:
    """The LUT of ``threshold`` for ``segments.edge_score`` under ``run.dir/luts``. The
    threshold part of the name is compared as a number, so ``0.5``, ``0.50`` and ``0.500`` all
    match."""
    luts = Path(config.run.dir) / "luts"
    prefix = f"{config.segments.edge_score}_"
    if not luts.is_dir():
        return None
    for path in sorted(luts.glob(f"{prefix}*.npz")):
        try:
            t = float(path.stem[len(prefix) :])
        except ValueError:
            continue
        if math.isclose(t, threshold, abs_tol=1e-6):
            return path
    return None


def lut_thresholds(config: Config) -> list[float]:
    """Thresholds that have a LUT under ``run.dir/luts``."""
    luts = Path(config.run.dir) / "luts"
    prefix = f"{config.segments.edge_score}_"
    found = []
    for path in sorted(luts.glob(f"{prefix}*.npz")) if luts.is_dir() else []:
        try:
            found.append(float(path.stem[len(prefix) :]))
        except ValueError:
            continue
    return sorted(found)


def extracted_segmentation(config: Config, threshold: float) -> DatasetRef | None:
    """The segmentation dataset 05 wrote for ``threshold``, if it exists. An explicit
    ``extract.segmentation`` holds ``extract.threshold`` only."""
    if config.extract.segmentation is not None and not math.isclose(
        threshold, config.extract.threshold, abs_tol=1e-6
    ):
        return None
    ref = config.segmentation_ds(threshold)
    return ref if volumes.dataset_exists(ref) else None


@dataclass
class Labels:
    """A label volume, possibly seen through a LUT (fragments relabelled on the fly)."""

    name: str
    array: Array
    ref: DatasetRef
    lut: Lut | None = None

    def read(self, roi: Roi) -> np.ndarray:
        data = volumes.read(self.array, roi)
        return data if self.lut is None else self.lut.apply(data)

    def describe(self) -> str:
        return f"{self.ref} through {self.lut.path}" if self.lut else str(self.ref)


def segmentation_source(config: Config, threshold: float) -> Labels | None:
    """The segmentation at ``threshold``: the extracted dataset if 05 wrote it, else the
    fragments relabelled through the threshold's LUT, else ``None``."""
    name = f"segmentation_{threshold:.3f}"
    ref = extracted_segmentation(config, threshold)
    if ref is not None:
        return Labels(name, volumes.open_volume(ref, field="extract.segmentation"), ref)
    lut_path = find_lut(config, threshold)
    frags = config.fragments_ds
    if lut_path is None or not volumes.dataset_exists(frags):
        return None
    return Labels(
        name, volumes.open_volume(frags, field="fragments.fragments"), frags, Lut.load(lut_path)
    )
