"""Drawing: a fixed colour per label id, raw and affinities as images, labels blended over
raw, and the figures themselves (an overlay of panels, the errors of a section, the score
curves), rendered with matplotlib's Agg backend.

May import :mod:`marlseg.sections`, :mod:`marlseg.section_errors` and
:mod:`marlseg.segmentations`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from marlseg.section_errors import SectionErrors
from marlseg.sections import Section
from marlseg.segmentations import best_threshold


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
