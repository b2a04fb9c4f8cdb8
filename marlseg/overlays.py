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
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array

from marlseg import volumes
from marlseg.config import Config, DatasetRef
from marlseg.errors import ConfigError

log = logging.getLogger(__name__)

FIGURES = "figures"


# --- which segmentation a threshold means ------------------------------------------------


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


# --- sections -----------------------------------------------------------------------------


@dataclass
class Section:
    """A one-voxel-thick slab of the reference grid: an xy section (thin in z) or an xz
    section (thin in y)."""

    name: str
    plane: str
    roi: Roi
    voxel_size: Coordinate

    @property
    def thin_axis(self) -> int:
        return 0 if self.plane == "xy" else 1

    @property
    def image_axes(self) -> tuple[int, int]:
        return (1, 2) if self.plane == "xy" else (0, 2)

    @property
    def shape(self) -> tuple[int, int]:
        r, c = self.image_axes
        return (
            int(self.roi.shape[r] // self.voxel_size[r]),
            int(self.roi.shape[c] // self.voxel_size[c]),
        )

    @property
    def aspect(self) -> float:
        """Height / width of one pixel in the world (an xz section of ssTEM is flat)."""
        r, c = self.image_axes
        return self.voxel_size[r] / self.voxel_size[c]


def choose_sections(
    roi: Roi, voxel_size: Coordinate, num_z: int = 3, max_size: int = 1024
) -> list[Section]:
    """``num_z`` evenly spaced z sections and one xz section through the middle of ``roi``,
    each cropped to at most ``max_size`` voxels per side around the centre."""
    vs = Coordinate(voxel_size)
    shape = roi.shape / vs

    def crop(axis: int) -> tuple[int, int]:
        n = int(shape[axis])
        size = min(n, max_size)
        begin = (n - size) // 2
        return roi.begin[axis] + begin * vs[axis], size * vs[axis]

    (y0, ys), (x0, xs), (z0, zs) = crop(1), crop(2), crop(0)
    out = []
    nz = int(shape[0])
    picks = sorted({min(nz - 1, int(nz * (i + 1) / (num_z + 1))) for i in range(num_z)})
    for k in picks:
        z = roi.begin[0] + k * vs[0]
        out.append(Section(f"z{z // vs[0]:04d}", "xy", Roi((z, y0, x0), (vs[0], ys, xs)), vs))
    y = roi.begin[1] + (int(shape[1]) // 2) * vs[1]
    out.append(Section(f"xz_y{y // vs[1]:04d}", "xz", Roi((z0, y, x0), (zs, vs[1], xs)), vs))
    return out


def read_section(array: Array, section: Section, labels: Labels | None = None) -> np.ndarray:
    """The section as a 2D image (channels first if the array has channels), on the section's
    grid: arrays of another voxel size are sampled at the section's voxel centres."""
    data = labels.read(section.roi) if labels is not None else volumes.read(array, section.roi)
    nc = array.channel_dims
    avs = array.voxel_size
    if avs != section.voxel_size:
        begin = section.roi.snap_to_grid(avs, mode="grow").begin
        index = []
        for a in range(3):
            n = int(section.roi.shape[a] // section.voxel_size[a])
            centres = section.roi.begin[a] + (np.arange(n) + 0.5) * section.voxel_size[a]
            index.append(np.floor((centres - begin[a]) / avs[a]).astype(int))
        data = data[(slice(None),) * nc + np.ix_(*index)]
    return data.squeeze(axis=nc + section.thin_axis)


# --- errors -------------------------------------------------------------------------------


@dataclass
class MergeError:
    segment: int
    bodies: list[int]
    """Ground-truth bodies with a substantial part in the segment, largest overlap first."""
    size: int
    """Voxels of the segment in the section (on scored ground truth)."""
    wrong: int
    """Voxels of the segment outside its largest body: what the merge costs."""


@dataclass
class SplitError:
    body: int
    segments: list[int]
    """Segments holding a substantial part of the body, largest overlap first."""
    size: int
    """Voxels of the body in the section (on labelled segments)."""
    wrong: int
    """Voxels of the body outside its largest segment."""


@dataclass
class SectionErrors:
    merges: list[MergeError]
    splits: list[SplitError]
    merge_ids: np.ndarray
    """Segment id at the voxels of the reported merge segments, 0 elsewhere."""
    split_ids: np.ndarray
    """Ground-truth id at the voxels of the reported split bodies, 0 elsewhere."""
    params: dict[str, Any] = field(default_factory=dict)


def find_errors(
    segmentation: np.ndarray,
    gt: np.ndarray,
    ignore_label: int | None = 0,
    top_k: int = 5,
    min_fraction: float = 0.1,
    min_voxels: int = 10,
) -> SectionErrors:
    """The largest merge and split errors of ``segmentation`` against ``gt`` (same shape).

    A segment and a body overlap *substantially* when the overlap is at least ``min_voxels``
    and at least ``min_fraction`` of the body. A merge is a segment overlapping several bodies
    substantially; a split is a body overlapped substantially by several segments. Segment 0
    and ``ignore_label`` voxels of ``gt`` are not scored. Errors are ranked by the voxels
    outside the best match (``wrong``); the ``top_k`` of each kind are reported and marked.
    """
    if segmentation.shape != gt.shape:
        raise ValueError(f"segmentation {segmentation.shape} and gt {gt.shape} differ")
    seg = segmentation.astype(np.uint64, copy=False).ravel()
    body = gt.astype(np.uint64, copy=False).ravel()
    valid = seg != 0
    if ignore_label is not None:
        valid &= body != np.uint64(ignore_label)
    su, si = np.unique(seg[valid], return_inverse=True)
    gu, gi = np.unique(body[valid], return_inverse=True)
    params = dict(
        ignore_label=ignore_label, top_k=top_k, min_fraction=min_fraction, min_voxels=min_voxels
    )
    merge_ids = np.zeros(segmentation.shape, np.uint64)
    split_ids = np.zeros(segmentation.shape, np.uint64)
    if su.size == 0 or gu.size == 0:
        return SectionErrors([], [], merge_ids, split_ids, params)
    pairs, counts = np.unique(si.astype(np.int64) * gu.size + gi, return_counts=True)
    ps, pg = np.divmod(pairs, gu.size)
    seg_size = np.bincount(si, minlength=su.size)
    gt_size = np.bincount(gi, minlength=gu.size)
    substantial = (counts >= min_voxels) & (counts >= min_fraction * gt_size[pg])

    merges = []
    for s in np.flatnonzero(np.bincount(ps[substantial], minlength=su.size) >= 2):
        mine = substantial & (ps == s)
        order = np.argsort(-counts[mine], kind="stable")
        best = int(counts[ps == s].max())
        merges.append(
            MergeError(
                segment=int(su[s]),
                bodies=[int(b) for b in gu[pg[mine][order]]],
                size=int(seg_size[s]),
                wrong=int(seg_size[s]) - best,
            )
        )
    splits = []
    for g in np.flatnonzero(np.bincount(pg[substantial], minlength=gu.size) >= 2):
        mine = substantial & (pg == g)
        order = np.argsort(-counts[mine], kind="stable")
        best = int(counts[pg == g].max())
        splits.append(
            SplitError(
                body=int(gu[g]),
                segments=[int(s) for s in su[ps[mine][order]]],
                size=int(gt_size[g]),
                wrong=int(gt_size[g]) - best,
            )
        )
    merges = sorted(merges, key=lambda e: (-e.wrong, e.segment))[:top_k]
    splits = sorted(splits, key=lambda e: (-e.wrong, e.body))[:top_k]
    for e in merges:
        merge_ids[segmentation == e.segment] = e.segment
    for e in splits:
        split_ids[gt == e.body] = e.body
    return SectionErrors(merges, splits, merge_ids, split_ids, params)


# --- drawing ------------------------------------------------------------------------------


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64: a well-spread hash, so neighbouring ids get unrelated colours."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def label_colors(ids: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] per voxel: a fixed colour per id (the same in every figure); 0 black."""
    from matplotlib.colors import hsv_to_rgb

    u, inv = np.unique(ids, return_inverse=True)
    h = _mix64(u)
    hsv = np.stack(
        [
            (h & np.uint64(0xFFFF)).astype(float) / 0xFFFF,
            0.55 + 0.45 * ((h >> np.uint64(16)) & np.uint64(0xFF)).astype(float) / 0xFF,
            0.75 + 0.25 * ((h >> np.uint64(24)) & np.uint64(0xFF)).astype(float) / 0xFF,
        ],
        axis=-1,
    )
    rgb = hsv_to_rgb(hsv)
    rgb[u == 0] = 0.0
    return rgb[inv.reshape(ids.shape)]


def to_gray(raw: np.ndarray) -> np.ndarray:
    """Raw in [0, 1]: uint8 as is, anything else stretched between its 1st and 99th
    percentiles."""
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0
    lo, hi = np.percentile(raw, [1, 99]) if raw.size else (0.0, 1.0)
    return np.clip((raw.astype(np.float32) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def to_unit(data: np.ndarray) -> np.ndarray:
    """Affinities or a boundary map in [0, 1] (uint8 is scaled by 1/255)."""
    if data.dtype == np.uint8:
        return data.astype(np.float32) / 255.0
    return np.clip(data.astype(np.float32), 0.0, 1.0)


def blend(gray: np.ndarray | None, ids: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Label colours over raw (labelled voxels), raw alone elsewhere."""
    base = np.zeros(ids.shape, np.float32) if gray is None else gray
    rgb = np.repeat(base[..., None], 3, axis=-1)
    on = ids != 0
    rgb[on] = (1 - alpha) * rgb[on] + alpha * label_colors(ids)[on]
    return rgb


def boundaries(ids: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another id."""
    edge = np.zeros(ids.shape, bool)
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    return edge


def anchor(mask: np.ndarray) -> tuple[int, int]:
    """A pixel of ``mask`` near its centroid (the centroid may fall outside the region)."""
    rows, cols = np.nonzero(mask)
    r, c = rows.mean(), cols.mean()
    i = int(np.argmin((rows - r) ** 2 + (cols - c) ** 2))
    return int(rows[i]), int(cols[i])


def _figure(n_panels: int, section: Section, rows: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = section.shape
    ratio = min(max(h * section.aspect / max(w, 1), 0.15), 2.0)
    panel_w = 4.0
    fig = Figure(figsize=(panel_w * n_panels, panel_w * ratio * rows + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, n_panels, squeeze=False).ravel()
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _dpi(section: Section) -> int:
    """Enough dots that each voxel of a large section keeps a pixel (capped for file size)."""
    return int(np.clip(section.shape[1] / 4.0, 100, 250))


def _show(ax, image: np.ndarray, section: Section, title: str) -> None:
    ax.imshow(image, interpolation="nearest", aspect=section.aspect)
    ax.set_title(title, fontsize=9)


def draw_overlay(section: Section, panels: dict[str, np.ndarray], path: Path, title: str) -> Path:
    fig, axes = _figure(len(panels), section)
    for ax, (name, image) in zip(axes, panels.items()):
        _show(ax, image, section, name)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=_dpi(section), bbox_inches="tight")
    return path


def draw_errors(
    section: Section,
    gray: np.ndarray | None,
    segmentation: np.ndarray,
    gt: np.ndarray,
    errors: SectionErrors,
    path: Path,
    title: str,
) -> Path:
    fig, (ax_m, ax_s) = _figure(2, section)
    base = np.zeros(gt.shape, np.float32) if gray is None else gray
    # Merges: the offending segments, with the gt boundaries they cross drawn in white.
    img = blend(base, errors.merge_ids, alpha=0.6)
    img[boundaries(gt) & (errors.merge_ids != 0)] = 1.0
    _show(ax_m, img, section, f"merge errors: {len(errors.merges)} (white: gt boundaries)")
    for e in errors.merges:
        r, c = anchor(errors.merge_ids == e.segment)
        _label(ax_m, c, r, f"seg {e.segment}: {len(e.bodies)} bodies\n{e.size} vx")
    # Splits: the offending bodies, with the segment boundaries that cut them drawn in white.
    img = blend(base, errors.split_ids, alpha=0.6)
    img[boundaries(segmentation) & (errors.split_ids != 0)] = 1.0
    _show(ax_s, img, section, f"split errors: {len(errors.splits)} (white: segment boundaries)")
    for e in errors.splits:
        r, c = anchor(errors.split_ids == e.body)
        _label(ax_s, c, r, f"gt {e.body}: {len(e.segments)} segments\n{e.size} vx")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=_dpi(section), bbox_inches="tight")
    return path


def _label(ax, x: int, y: int, text: str) -> None:
    ax.annotate(
        text,
        (x, y),
        fontsize=7,
        ha="center",
        va="center",
        bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="black", lw=0.5, alpha=0.85),
    )


def plot_scores(scores: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """VOI split, merge and their sum, and ARAND, against the threshold; the best marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = sorted(
            (float(s["threshold"]), float(s[key]))
            for s in scores
            if s.get(key) is not None and s.get("threshold") is not None
        )
        return [p[0] for p in pts], [p[1] for p in pts]

    ts, split = series("voi_split")
    _, merge = series("voi_merge")
    ta, arand = series("arand")
    if not ts and not ta:
        return None
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_voi, ax_rand = fig.subplots(1, 2)
    if ts:
        ax_voi.plot(ts, split, "o-", label="VOI split")
        if len(merge) == len(ts):
            ax_voi.plot(ts, merge, "s-", label="VOI merge")
            ax_voi.plot(ts, np.add(split, merge), "k--", label="VOI total")
    if ta:
        ax_rand.plot(ta, arand, "o-", color="tab:red", label="ARAND")
    best = best_threshold(scores)
    for ax, name in ((ax_voi, "VOI (lower is better)"), (ax_rand, "ARAND (lower is better)")):
        if best is not None:
            ax.axvline(best, color="gray", lw=1, ls=":", label=f"best {best:g}")
        ax.set_xlabel("threshold")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


# --- the figures of a run -----------------------------------------------------------------


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
