"""Validation (``train.validation``) uses an in-memory chain equivalent to the blockwise one:
prediction with the very windows, margin and normalisation of ``01_predict.py``
(:func:`marlseg.inference.predict_region` on the validation crop, in its volume), then
``waterz.agglomerate`` over the affinities (its own watershed fragments and agglomeration with
the configured merge function, at each threshold), scored by skimage's
``variation_of_information`` and ``adapted_rand_error`` against the labels (label 0 ignored).
The blockwise chain (``02``-``06``) differs only in how it makes fragments (distance-transform
seeded watershed per block) and in being blockwise.

:class:`Validation` holds the crop and scores a model on it (what training's loop calls every
``train.validate_every`` iterations); :func:`score_checkpoint` does the same for a saved checkpoint
(``python -m marlseg.train``, the figures in ``checkpoints/README.md``);
:func:`segment_and_score` is the agglomeration and scoring alone.

May import: marlseg's library modules (config, errors, inference, volumes); never a stage.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from marlseg.config import ValidationConfig
from marlseg.errors import ConfigError


def waterz_scoring_function(merge_function: str) -> str:
    """``hist_quant_75`` -> waterz's C++ scoring function (as lsd's agglomeration names them)."""
    m = re.fullmatch(r"hist_quant_(\d+)(_initmax)?", merge_function)
    if m:
        q, initmax = int(m.group(1)), "true" if m.group(2) else "false"
        if not 0 <= q <= 100:
            raise ValueError(f"quantile must be in [0, 100], got {q}")
        return (
            f"OneMinus<HistogramQuantileAffinity<RegionGraphType, {q}, ScoreValue, 256, {initmax}>>"
        )
    simple = {
        "mean": "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>",
        "max": "OneMinus<MaxAffinity<RegionGraphType, ScoreValue>>",
        "min": "OneMinus<MinAffinity<RegionGraphType, ScoreValue>>",
    }
    if merge_function not in simple:
        raise ValueError(
            f"unknown merge function {merge_function!r}: hist_quant_N[_initmax], mean, max, min"
        )
    return simple[merge_function]


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1 (C++ ``std::cout``) for the duration."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def segment_and_score(
    affs: np.ndarray,
    labels: np.ndarray,
    thresholds: list[float],
    merge_function: str = "hist_quant_75",
) -> list[dict[str, float]]:
    """waterz agglomeration of ``affs`` (nearest three channels used) at each threshold, scored
    against ``labels`` (label 0 ignored): ``voi_split`` = H(seg | gt), ``voi_merge`` =
    H(gt | seg), ``arand`` = adapted Rand error."""
    import waterz
    from skimage.metrics import adapted_rand_error, variation_of_information

    affs3 = np.ascontiguousarray(affs[:3], dtype=np.float32)
    thresholds = sorted(float(t) for t in thresholds)
    rows = []
    with quiet_stdout():  # waterz's C++ core reports every merge on stdout
        segs = [
            np.asarray(s).copy()
            for s in waterz.agglomerate(
                affs3, thresholds, scoring_function=waterz_scoring_function(merge_function)
            )
        ]
    for t, seg in zip(thresholds, segs):
        split, merge = variation_of_information(labels, seg, ignore_labels=(0,))
        arand = adapted_rand_error(labels, seg, ignore_labels=(0,))[0]
        rows.append(
            {
                "threshold": t,
                "voi_split": float(split),
                "voi_merge": float(merge),
                "voi": float(split + merge),
                "arand": float(arand),
            }
        )
    return rows


class Validation:
    """The validation crop, and the in-memory chain that scores a model on it."""

    def __init__(self, vc: ValidationConfig, field: str = "train.validation"):
        from funlib.geometry import Coordinate, Roi

        from marlseg.volumes import open_volume, read

        self.vc = vc
        self.field = field
        labels = open_volume(vc.labels, field=f"{field}.labels")
        raw = open_volume(vc.raw, field=f"{field}.raw")
        if raw.voxel_size != labels.voxel_size:
            raise ConfigError(
                f"{field}.labels",
                f"voxel size {list(labels.voxel_size)} differs from raw's {list(raw.voxel_size)}",
            )
        roi = labels.roi.intersect(raw.roi)
        if vc.offset is not None or vc.shape is not None:
            offset = Coordinate(vc.offset) if vc.offset is not None else roi.offset
            shape = Coordinate(vc.shape) if vc.shape is not None else roi.end - offset
            crop = Roi(offset, shape)
            if not roi.contains(crop):
                raise ConfigError(
                    f"{field}.shape", f"crop {crop} is not inside the labelled raw {roi}"
                )
            roi = crop
        vs = raw.voxel_size
        if roi.empty or any(
            int(o) % int(v) or int(s) % int(v) for o, s, v in zip(roi.offset, roi.shape, vs)
        ):
            raise ConfigError(f"{field}.offset", f"crop {roi} is empty or not whole voxels of {vs}")
        try:
            waterz_scoring_function(vc.merge_function)
        except ValueError as e:
            raise ConfigError(f"{field}.merge_function", str(e)) from None
        self.roi = roi
        self.labels = read(labels, roi)
        self.begin = tuple(int(b) for b in (roi.begin - raw.roi.begin) / vs)
        self.shape = tuple(int(s) for s in roi.shape / vs)
        for a in (labels, raw):
            f = getattr(a._source_data, "file", None)
            if f is not None:
                f.close()

    def predict(self, model, device, batch_size: int = 4, margin=None) -> np.ndarray:
        from marlseg.inference import default_margin, predict_region
        from marlseg.volumes import open_volume

        raw = open_volume(self.vc.raw, field=f"{self.field}.raw")
        input_shape = model.encoder.img_size
        margin = default_margin(input_shape) if margin is None else margin
        try:
            return predict_region(
                model,
                raw._source_data,
                self.begin,
                self.shape,
                input_shape,
                margin,
                device,
                batch_size,
            )
        finally:
            f = getattr(raw._source_data, "file", None)
            if f is not None:
                f.close()

    def score(self, model, device, batch_size: int = 4) -> list[dict[str, float]]:
        was_training = model.training
        model.eval()
        try:
            affs = self.predict(model, device, batch_size)
        finally:
            model.train(was_training)
        return segment_and_score(affs, self.labels, self.vc.thresholds, self.vc.merge_function)


def score_checkpoint(
    checkpoint: Path,
    validation: ValidationConfig,
    device: str = "cpu",
    batch_size: int = 4,
) -> list[dict[str, float]]:
    """The in-memory validation chain for a saved checkpoint (the figures in
    ``checkpoints/README.md`` come from this)."""
    from marlseg.inference import load_model, select_device

    dev = select_device(device)
    model, _ = load_model(Path(checkpoint), dev, field="checkpoint")
    return Validation(validation, field="validation").score(model, dev, batch_size)
