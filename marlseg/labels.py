"""Label volumes as runs: unique ids, inverse indices and per-label sums in one pass.

A label volume (fragments, segments, ground truth) is piecewise constant: along its last
axis a run of equal labels is typically tens of voxels long. ``np.unique`` sorts every voxel
(``O(N log N)``, the largest single cost of several post-processing stages before issue 20);
here only the first value of every run is sorted, and the result is repeated back over the
runs. The results are exactly ``np.unique``'s.

Runs are broken at the end of every row of the last axis, so a run's voxels share every
coordinate but the last: :func:`label_stats` sums coordinates per run in closed form.
"""

from __future__ import annotations

import numpy as np


def runs(*volumes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, lengths)`` of the maximal runs of equal values along the C-order flattened
    volumes (jointly: a run ends where any of them changes), broken at every row end."""
    flat = [np.ascontiguousarray(v).reshape(-1) for v in volumes]
    n = flat[0].size
    if any(f.size != n for f in flat):
        raise ValueError(f"volumes differ in size: {[f.size for f in flat]}")
    if n == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    change = np.empty(n, dtype=bool)
    change[0] = True
    np.not_equal(flat[0][1:], flat[0][:-1], out=change[1:])
    for f in flat[1:]:
        change[1:] |= f[1:] != f[:-1]
    row = volumes[0].shape[-1] if volumes[0].ndim else 1
    if row:
        change[::row] = True
    starts = np.flatnonzero(change)
    lengths = np.diff(starts, append=n)
    return starts, lengths


def _index_dtype(n: int) -> type:
    return np.int32 if n < 2**31 else np.int64


def unique_inverse(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(labels, return_inverse=True)`` with a flat inverse (int32 while fewer than
    2^31 labels)."""
    starts, lengths = runs(labels)
    ids, run_inverse = np.unique(labels.reshape(-1)[starts], return_inverse=True)
    run_inverse = run_inverse.reshape(-1).astype(_index_dtype(ids.size))
    return ids, np.repeat(run_inverse, lengths)


def unique_counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(labels, return_counts=True)`` (counts int64)."""
    starts, lengths = runs(labels)
    ids, run_inverse = np.unique(labels.reshape(-1)[starts], return_inverse=True)
    counts = np.bincount(run_inverse.reshape(-1), weights=lengths, minlength=ids.size)
    return ids, np.rint(counts).astype(np.int64)


def label_stats(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, sizes, centers)``: every label present, its voxel count and the mean voxel
    index of its voxels (``(len(ids), ndim)`` float64)."""
    starts, lengths = runs(labels)
    ids, run_inverse = np.unique(labels.reshape(-1)[starts], return_inverse=True)
    run_inverse = run_inverse.reshape(-1)
    sizes = np.bincount(run_inverse, weights=lengths, minlength=ids.size)
    centers = np.empty((ids.size, labels.ndim), dtype=np.float64)
    coords = np.unravel_index(starts, labels.shape)
    lengths_f = lengths.astype(np.float64)
    for d, first in enumerate(coords):
        if d < labels.ndim - 1:
            total = first * lengths_f  # every voxel of the run has this coordinate
        else:  # first, first + 1, ..., first + length - 1
            total = lengths_f * first + lengths_f * (lengths_f - 1) / 2
        centers[:, d] = np.bincount(run_inverse, weights=total, minlength=ids.size) / sizes
    return ids, np.rint(sizes).astype(np.int64), centers


def dense_relabel(labels: np.ndarray, dtype: type = np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, dense)``: the labels renumbered ``1..n`` in increasing order (0 stays 0) as
    ``dtype``, and ``ids`` with ``ids[dense] == labels`` (``ids[0]`` is always 0)."""
    starts, lengths = runs(labels)
    ids, run_inverse = np.unique(labels.reshape(-1)[starts], return_inverse=True)
    run_inverse = run_inverse.reshape(-1).astype(dtype)
    if not (ids.size and ids[0] == 0):
        run_inverse += dtype(1)
        ids = np.concatenate([np.zeros(1, ids.dtype), ids])
    return ids, np.repeat(run_inverse, lengths).reshape(labels.shape)


def unique(labels: np.ndarray) -> np.ndarray:
    """``np.unique(labels)``: the sorted labels present."""
    starts, _ = runs(labels)
    return np.unique(labels.reshape(-1)[starts])
