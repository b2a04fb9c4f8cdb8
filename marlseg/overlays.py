"""Looking at a run's results: section overlays, the errors they show, and the score curves.

``write_overlays(config, scores)`` writes under ``run.dir/figures/``:

- ``overlay_z<k>.png`` for a few z sections and ``overlay_xz_y<k>.png`` for one xz section:
  raw, affinities as RGB (or the boundary map), fragments, the best segmentation and the ground
  truth, labels blended over raw;
- ``errors_<section>.png``: the largest merge errors (a segment holding a substantial part of
  several ground-truth bodies) and split errors (a body with substantial parts in several
  segments) of that section, each marked and labelled with its id and size;
- ``errors_<section>.npz`` (the error maps: ids of the offending segments / bodies, 0
  elsewhere) and ``errors.json`` (the error lists), so what a figure claims can be checked;
- ``scores.png``: VOI split, VOI merge and ARAND against the threshold.

Section indices ``<k>`` are global voxel coordinates (world position / voxel size), as in
neuroglancer. Volumes may be larger than memory: only the sections drawn are read, each
through :func:`marlseg.volumes.read` over a one-voxel-thick ROI, cropped to ``max_size``
voxels per side around the centre. Errors are counted within the section drawn (sizes are
section voxels): a section shows what it can show.

"Best" is the threshold with the lowest VOI split + merge. If its segmentation was not
extracted (05 writes one threshold), the fragments' section is relabelled through the
threshold's lookup table (``run.dir/luts/<edge_score>_<threshold>.npz``). Layers that do not
exist (no affinities when the run started from a boundary map, no ground truth, ...) are left
out of the figures, never faked.

Figure assembly lives here; the parts it puts together: :mod:`marlseg.segmentations` (the best
threshold and its segmentation), :mod:`marlseg.sections`, :mod:`marlseg.section_errors` and
:mod:`marlseg.drawing`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array

from marlseg import volumes
from marlseg.config import Config, DatasetRef
from marlseg.drawing import blend, draw_errors, draw_overlay, plot_scores, to_gray, to_unit
from marlseg.section_errors import find_errors
from marlseg.sections import choose_sections, read_section
from marlseg.segmentations import Labels, best_threshold, segmentation_source

log = logging.getLogger(__name__)

FIGURES = "figures"


@dataclass
class RunLayers:
    """What a run has to show; missing layers are ``None``."""

    raw: Array | None = None
    affs: Array | None = None
    boundary: Array | None = None
    fragments: Array | None = None
    segmentation: Labels | None = None
    gt: Array | None = None
    threshold: float | None = None
    notes: list[str] = field(default_factory=list)


def _open_if_exists(ref: DatasetRef | None, field_name: str) -> Array | None:
    if ref is None or not volumes.dataset_exists(ref):
        return None
    return volumes.open_volume(ref, field=field_name)


def open_layers(config: Config, threshold: float | None) -> RunLayers:
    """Open every layer of the run that exists. Inputs the config names (raw, gt) must
    exist; outputs may be absent (a stage not run yet)."""
    layers = RunLayers(threshold=threshold)
    if config.raw is not None:
        layers.raw = volumes.open_volume(config.raw, field="raw")
    if config.gt is not None:
        layers.gt = volumes.open_volume(config.gt, field="gt")
    layers.affs = _open_if_exists(config.fragment_affs, "fragments.affs")
    layers.boundary = _open_if_exists(config.fragments.boundary, "fragments.boundary")
    layers.fragments = _open_if_exists(config.fragments_ds, "fragments.fragments")
    if threshold is not None:
        layers.segmentation = segmentation_source(config, threshold)
        if layers.segmentation is None:
            layers.notes.append(
                f"no segmentation at threshold {threshold:g}: neither extracted nor a LUT"
            )
    if layers.affs is None:
        layers.notes.append(f"no affinities at {config.fragment_affs}")
    return layers


def reference_geometry(layers: RunLayers) -> tuple[Roi, Coordinate] | None:
    """ROI and voxel size the sections are cut from: the segmentation's (else fragments',
    affinities', raw's), within the ground truth where there is one."""
    for candidate in (
        layers.segmentation.array if layers.segmentation else None,
        layers.fragments,
        layers.affs,
        layers.boundary,
        layers.raw,
    ):
        if candidate is None:
            continue
        roi, vs = candidate.roi, candidate.voxel_size
        if layers.gt is not None:
            inside = roi.intersect(layers.gt.roi).snap_to_grid(vs, mode="shrink")
            if not inside.empty:
                roi = inside
        return roi, vs
    return None


def write_overlays(
    config: Config,
    scores: Sequence[dict[str, Any]],
    num_sections: int = 3,
    max_size: int = 1024,
    top_k: int = 5,
) -> list[Path]:
    """Write the run's figures under ``run.dir/figures/`` (see the module doc); return the
    files written. ``scores`` is what 06 writes to ``scores.json``."""
    out = Path(config.run.dir) / FIGURES
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if scores:
        p = plot_scores(scores, out / "scores.png")
        if p is not None:
            written.append(p)
    threshold = best_threshold(scores)
    if threshold is None:
        threshold = config.extract.threshold
    layers = open_layers(config, threshold)
    for note in layers.notes:
        log.info("overlays: %s", note)
    geometry = reference_geometry(layers)
    if geometry is None:
        return written
    roi, vs = geometry
    seg = layers.segmentation
    ignore = config.evaluate.ignore_label
    report: dict[str, Any] = {
        "threshold": threshold if seg else None,
        "segmentation": seg.describe() if seg else None,
        "sections": [],
    }
    for section in choose_sections(roi, vs, num_sections, max_size):
        gray = to_gray(read_section(layers.raw, section)) if layers.raw is not None else None
        panels: dict[str, np.ndarray] = {}
        if gray is not None:
            panels["raw"] = np.repeat(gray[..., None], 3, axis=-1)
        if layers.affs is not None:
            affs = to_unit(read_section(layers.affs, section))
            panels["affinities (z, y, x as RGB)"] = np.moveaxis(affs[:3], 0, -1)
        if layers.boundary is not None:
            b = to_unit(read_section(layers.boundary, section))
            panels["boundary"] = np.repeat(b[..., None], 3, axis=-1)
        if layers.fragments is not None:
            panels["fragments"] = blend(gray, read_section(layers.fragments, section))
        seg_img = gt_img = None
        if seg is not None:
            seg_img = read_section(seg.array, section, labels=seg)
            panels[f"segmentation, threshold {threshold:g}"] = blend(gray, seg_img)
        if layers.gt is not None:
            gt_img = read_section(layers.gt, section)
            panels["ground truth"] = blend(gray, gt_img)
        if not panels:
            continue
        where = f"{section.plane} section {section.name} ({config.run.dir})"
        written.append(draw_overlay(section, panels, out / f"overlay_{section.name}.png", where))
        if seg_img is None or gt_img is None:
            continue
        errors = find_errors(seg_img, gt_img, ignore_label=ignore, top_k=top_k)
        written.append(
            draw_errors(
                section,
                gray,
                seg_img,
                gt_img,
                errors,
                out / f"errors_{section.name}.png",
                f"errors of threshold {threshold:g}, {where}",
            )
        )
        npz = out / f"errors_{section.name}.npz"
        np.savez_compressed(
            npz,
            merge_ids=errors.merge_ids,
            split_ids=errors.split_ids,
            roi_offset=np.asarray(section.roi.offset),
            roi_shape=np.asarray(section.roi.shape),
        )
        written.append(npz)
        report["sections"].append(
            {
                "name": section.name,
                "plane": section.plane,
                "roi_offset": list(section.roi.offset),
                "roi_shape": list(section.roi.shape),
                "merges": [asdict(e) for e in errors.merges],
                "splits": [asdict(e) for e in errors.splits],
                "params": errors.params,
            }
        )
    if report["sections"]:
        path = out / "errors.json"
        path.write_text(json.dumps(report, indent=2))
        written.append(path)
    return written
