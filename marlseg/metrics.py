"""Segmentation scores from a contingency table that is built block by block.

A contingency table lists, for every pair (segment ``s``, ground-truth body ``g``) that
overlaps, the number of voxels ``n_sg`` they share. Tables of disjoint blocks add up (rows with
the same pair are summed), so a volume larger than memory is scored by tabulating each block
on its own (:func:`contingency`) and merging the tables (:func:`merge_tables`); only the table,
whose size is the number of overlapping pairs, is ever held whole.

With ``N = sum n_sg``, ``p_sg = n_sg / N`` and the marginals ``p_s``, ``p_g`` (log base 2):

* ``voi_split = H(S | G) = -sum p_sg log2(p_sg / p_g)`` — over-segmentation (false splits);
* ``voi_merge = H(G | S) = -sum p_sg log2(p_sg / p_s)`` — under-segmentation (false merges);
* ``arand = 1 - sum(n_sg^2 - n_sg) / (0.5 sum(n_s^2 - n_s) + 0.5 sum(n_g^2 - n_g))`` — the
  adapted Rand error (alpha = 0.5) over pairs of distinct voxels.

These equal scikit-image's ``variation_of_information(gt, seg, ignore_labels=[i])`` and
``adapted_rand_error(gt, seg, ignore_labels=[i])``.

Ignore semantics: voxels whose ground-truth label is ``ignore_label`` (default 0: unlabelled or
boundary voxels) are left out of the table entirely, whatever their segment. Segment label 0
(voxels without a fragment) is an ordinary segment: it is not ignored, so holes in a
segmentation are scored as one big segment and cost merge error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from marlseg.labels import runs


@dataclass(frozen=True)
class Table:
    """A contingency table as three aligned arrays, one row per overlapping pair."""

    seg: np.ndarray
    gt: np.ndarray
    count: np.ndarray

    @classmethod
    def empty(cls) -> Table:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(self.count.size)


def _factorize(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, inverse = np.unique(a, return_inverse=True)
    return ids, inverse.reshape(-1)


def _reduce(seg: np.ndarray, gt: np.ndarray, weights: np.ndarray | None) -> Table:
    """Sum ``weights`` (1 per entry if ``None``) over equal (seg, gt) pairs."""
    if seg.size == 0:
        return Table.empty()
    seg_ids, si = _factorize(seg)
    gt_ids, gi = _factorize(gt)
    key = si.astype(np.int64) * np.int64(gt_ids.size) + gi.astype(np.int64)
    keys, inverse = np.unique(key, return_inverse=True)
    counts = np.bincount(inverse.reshape(-1), weights=weights, minlength=keys.size)
    return Table(
        seg=seg_ids[keys // gt_ids.size].astype(np.uint64),
        gt=gt_ids[keys % gt_ids.size].astype(np.uint64),
        count=np.rint(counts).astype(np.int64) if weights is not None else counts.astype(np.int64),
    )


def contingency(seg: np.ndarray, gt: np.ndarray, ignore_label: int | None = 0) -> Table:
    """The contingency table of ``seg`` against ``gt`` (same shape), without the voxels whose
    ground truth is ``ignore_label`` (``None``: keep every voxel)."""
    if seg.shape != gt.shape:
        raise ValueError(f"shapes differ: segmentation {seg.shape}, ground truth {gt.shape}")
    # one entry per run of equal (seg, gt) pairs, weighted by its length: exact, and a sort
    # of the runs instead of the voxels (marlseg.labels)
    starts, lengths = runs(seg, gt)
    seg = seg.reshape(-1)[starts]
    gt = gt.reshape(-1)[starts]
    if ignore_label is not None:
        keep = gt != np.asarray(ignore_label).astype(gt.dtype)
        seg, gt, lengths = seg[keep], gt[keep], lengths[keep]
    return _reduce(seg, gt, lengths.astype(np.float64))


def merge_tables(tables: Iterable[Table]) -> Table:
    """One table from several (of disjoint blocks, or with relabelled rows): the counts of
    equal pairs are summed, so every pair appears once."""
    tables = [t for t in tables if len(t)]
    if not tables:
        return Table.empty()
    return _reduce(
        np.concatenate([t.seg for t in tables]),
        np.concatenate([t.gt for t in tables]),
        np.concatenate([t.count for t in tables]).astype(np.float64),
    )


def _marginal(ids: np.ndarray, count: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(ids, return_inverse=True)
    return np.bincount(inverse.reshape(-1), weights=count.astype(np.float64))


def scores(table: Table) -> dict[str, float]:
    """``{"voi_split", "voi_merge", "arand"}`` of a contingency table (see the module doc).
    Rows of equal pairs are summed first (a table whose segments were relabelled through a
    LUT has several rows per pair)."""
    table = merge_tables([table])
    n = table.count.astype(np.float64)
    total = n.sum()
    if total == 0:
        raise ValueError("nothing to score: every voxel is ignored")
    n_s = _marginal(table.seg, table.count)
    n_g = _marginal(table.gt, table.count)
    p = n / total
    _, si = np.unique(table.seg, return_inverse=True)
    _, gi = np.unique(table.gt, return_inverse=True)
    p_s = (n_s / total)[si.reshape(-1)]
    p_g = (n_g / total)[gi.reshape(-1)]
    voi_split = float(-(p * np.log2(p / p_g)).sum())
    voi_merge = float(-(p * np.log2(p / p_s)).sum())
    pairs = float((n * n).sum() - total)
    pairs_s = float((n_s * n_s).sum() - total)
    pairs_g = float((n_g * n_g).sum() - total)
    denominator = 0.5 * pairs_s + 0.5 * pairs_g
    # every voxel its own segment and body: nothing to agree or disagree on
    arand = 1.0 - pairs / denominator if denominator > 0 else 0.0
    return {
        "voi_split": max(voi_split, 0.0),
        "voi_merge": max(voi_merge, 0.0),
        "arand": arand,
    }


def evaluate(seg: np.ndarray, gt: np.ndarray, ignore_label: int | None = 0) -> dict[str, float]:
    """Scores of a whole segmentation held in memory (small volumes, tests)."""
    return scores(contingency(seg, gt, ignore_label))
