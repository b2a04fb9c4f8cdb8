"""Edge scores from a waterz merge history, without replaying it edge by edge.

The score of an edge ``(u, v)`` is the running maximum of the history's scores up to the
merge that first put ``u`` and ``v`` into one region (see
:func:`marlseg.watershed.merge_scores`). Because that running maximum never decreases, the
history is a single-linkage dendrogram, and single linkage has a leaf order in which every
region is a contiguous interval: the fragments of ``A`` followed by those of ``B`` when
``A`` and ``B`` merge. Record, for every pair of neighbours in that order, the level at
which they were joined (the *gap*); the score of ``(u, v)`` is then the largest gap between
their positions, a range-maximum query.

Work: one pass over the history (a union-find and two chain pointers per merge, in Python:
``O(M)`` for ``M`` merges), a walk along the chains (``O(N)``), then vectorised numpy: a
sparse table of gap maxima (``O(N log N)``) and one query per edge (``O(E)``). The replay it
replaces moved member lists per merge and scanned incident edges in Python, ``O(E log N)``
interpreted steps, the largest cost of a block of ``03`` with many small fragments.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def history_arrays(history: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(a, b, score)`` of waterz's merge-history records (``{"a", "b", "c", "score"}``)."""
    m = len(history)
    a = np.fromiter((int(e["a"]) for e in history), dtype=np.uint64, count=m)
    b = np.fromiter((int(e["b"]) for e in history), dtype=np.uint64, count=m)
    s = np.fromiter((float(e["score"]) for e in history), dtype=np.float64, count=m)
    return a, b, s


def _leaf_order(n: int, a: list[int], b: list[int], score: list[float]) -> tuple[list, list]:
    """Single-linkage leaf order of ``n`` nodes merged ``(a[i], b[i])`` in order (``-1``: not a
    node of ours) and the gap after each position (``inf`` between regions never merged)."""
    parent = list(range(n))
    head = list(range(n))
    tail = list(range(n))
    size = [1] * n
    nxt = [-1] * n
    gap = [np.inf] * n

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    level = -np.inf
    for ka, kb, s in zip(a, b, score):
        if ka < 0 or kb < 0:
            continue  # regions without edges cannot merge; nothing of ours to score
        ra, rb = find(ka), find(kb)
        if ra == rb:
            continue
        level = max(level, s)
        nxt[tail[ra]] = head[rb]  # A's chain, then B's
        gap[tail[ra]] = level
        new_head, new_tail = head[ra], tail[rb]
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        parent[rb] = ra
        size[ra] += size[rb]
        head[ra], tail[ra] = new_head, new_tail
    order: list[int] = []
    gaps: list[float] = []
    for r in range(n):
        if parent[r] != r:
            continue
        x = head[r]
        while x >= 0:
            order.append(x)
            gaps.append(gap[x])
            x = nxt[x]
    return order, gaps


def _range_max(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``max(values[lo[i]:hi[i]])`` for every ``i`` (``hi > lo``), by a sparse table."""
    table = [values]
    width = 1
    while 2 * width <= values.size:
        prev = table[-1]
        table.append(np.maximum(prev[:-width], prev[width:]))
        width *= 2
    length = hi - lo
    k = np.floor(np.log2(length)).astype(np.int64)
    out = np.empty(lo.size, dtype=values.dtype)
    for level in np.unique(k):
        sel = k == level
        t = table[level]
        out[sel] = np.maximum(t[lo[sel]], t[hi[sel] - (1 << int(level))])
    return out


def scores_from_history(
    u: np.ndarray, v: np.ndarray, a: np.ndarray, b: np.ndarray, score: np.ndarray
) -> np.ndarray:
    """The level at which each edge's fragments were joined by the merges ``(a, b, score)``
    (``inf`` if never); ``u``, ``v``, ``a``, ``b`` are fragment ids."""
    if len(u) == 0:
        return np.zeros(0, dtype=np.float64)
    nodes = np.unique(np.concatenate([u, v]))

    def dense(ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.uint64)
        idx = np.minimum(np.searchsorted(nodes, ids), nodes.size - 1)
        return np.where(nodes[idx] == ids, idx, -1)

    order, gaps = _leaf_order(nodes.size, dense(a).tolist(), dense(b).tolist(), score.tolist())
    pos = np.empty(nodes.size, dtype=np.int64)
    pos[np.asarray(order, dtype=np.int64)] = np.arange(nodes.size)
    pu, pv = pos[dense(u)], pos[dense(v)]
    return _range_max(np.asarray(gaps, dtype=np.float64), np.minimum(pu, pv), np.maximum(pu, pv))
