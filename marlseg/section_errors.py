"""The merge and split errors of a segmentation against ground truth in one section: which
segments hold substantial parts of several bodies, which bodies are cut into several segments.

Imports only numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
