"""Which segmentation a threshold means: the scores 06 wrote and the best threshold among
them, the fragment -> segment lookup tables under ``run.dir/luts``, and the segmentation of a
threshold as a label volume (the dataset 05 extracted, else the fragments seen through the
threshold's LUT, :mod:`marlseg.luts`).

May import :mod:`marlseg.volumes`, :mod:`marlseg.luts`, :mod:`marlseg.config` and
:mod:`marlseg.errors`.
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
from marlseg.luts import Lut, find_lut


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
