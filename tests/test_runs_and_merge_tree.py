"""marlseg.labels (run-length unique/inverse/stats) gives exactly what np.unique and plain
bincounts give; marlseg.merge_tree scores edges exactly as a brute-force history replay."""

from __future__ import annotations

import numpy as np
import pytest

from marlseg import metrics
from marlseg import watershed as W
from marlseg.labels import dense_relabel, label_stats, runs, unique, unique_counts, unique_inverse


def _volumes():
    rng = np.random.default_rng(3)
    blocky = np.repeat(rng.integers(0, 7, size=(5, 6, 4)), 5, axis=2).astype(np.uint64)
    blocky[2, 3, 7:] = 2**40 + 5  # large ids, a run crossing into the next row start
    yield blocky
    yield rng.integers(0, 3, size=(4, 5, 6)).astype(np.uint64)  # mostly one-voxel runs
    yield np.full((3, 3, 3), 9, dtype=np.uint64)  # one label, runs broken only at rows
    yield rng.integers(0, 4, size=(17,)).astype(np.int32)  # 1-D
    yield np.zeros((0, 4), dtype=np.uint64)


@pytest.mark.parametrize("labels", list(_volumes()))
def test_unique_inverse_and_counts_match_numpy(labels):
    ids, inverse = unique_inverse(labels)
    ref_ids, ref_inverse, ref_counts = np.unique(labels, return_inverse=True, return_counts=True)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(inverse, ref_inverse.reshape(-1))
    ids_c, counts = unique_counts(labels)
    np.testing.assert_array_equal(ids_c, ref_ids)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_array_equal(unique(labels), ref_ids)
    ids_d, dense = dense_relabel(labels)
    np.testing.assert_array_equal(ids_d[dense], labels.astype(ids_d.dtype))
    assert ids_d[0] == 0 and dense.dtype == np.uint64
    present = np.unique(dense)
    np.testing.assert_array_equal(present[present > 0], np.arange(1, (ref_ids != 0).sum() + 1))


@pytest.mark.parametrize("labels", [v for v in _volumes() if v.size])
def test_label_stats_match_bincount_centres(labels):
    ids, sizes, centers = label_stats(labels)
    ref_ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(-1)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(sizes, np.bincount(inverse))
    grid = np.indices(labels.shape).reshape(labels.ndim, -1)
    for d in range(labels.ndim):
        ref = np.bincount(inverse, weights=grid[d]) / np.bincount(inverse)
        np.testing.assert_allclose(centers[:, d], ref)


def test_runs_break_at_row_ends_and_where_any_volume_changes():
    a = np.array([[1, 1, 1], [1, 1, 2]])
    b = np.array([[0, 0, 5], [5, 5, 5]])
    starts, lengths = runs(a)
    assert starts.tolist() == [0, 3, 5] and lengths.tolist() == [3, 2, 1]
    starts, lengths = runs(a, b)
    assert starts.tolist() == [0, 2, 3, 5] and lengths.tolist() == [2, 1, 2, 1]
    with pytest.raises(ValueError, match="differ in size"):
        runs(a, b[:1])


def test_contingency_by_runs_equals_voxelwise_table():
    rng = np.random.default_rng(0)
    seg = np.repeat(rng.integers(0, 5, size=(6, 7, 3)), 4, axis=2).astype(np.uint64)
    gt = np.repeat(rng.integers(0, 4, size=(6, 7, 6)), 2, axis=2).astype(np.uint64)
    table = metrics.contingency(seg, gt, ignore_label=0)
    keep = gt.reshape(-1) != 0
    pairs, counts = np.unique(
        np.stack([seg.reshape(-1)[keep], gt.reshape(-1)[keep]]), axis=1, return_counts=True
    )
    np.testing.assert_array_equal(table.seg, pairs[0])
    np.testing.assert_array_equal(table.gt, pairs[1])
    np.testing.assert_array_equal(table.count, counts)


def _brute_force_scores(u, v, history):
    """Reference: replay the history with a plain union-find, one edge at a time."""
    nodes = set(u.tolist()) | set(v.tolist())
    out = []
    for x, y in zip(u.tolist(), v.tolist()):
        parent: dict[int, int] = {}

        def find(k, parent=parent):
            while parent.get(k, k) != k:
                k = parent[k]
            return k

        level, score = 0.0, W.UNMERGED
        for e in history:
            if e["a"] not in nodes or e["b"] not in nodes:
                continue  # as merge_scores: regions without edges are not ours to score
            ra, rb = find(e["a"]), find(e["b"])
            if ra == rb:
                continue
            level = max(level, e["score"])
            parent[ra] = rb
            if find(x) == find(y):
                score = level
                break
        out.append(min(max(score, 0.0), 1.0))
    return np.asarray(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_scores_match_a_brute_force_replay(seed):
    """Random single-linkage-like histories (scores not monotone, regions named after either
    side, some merges of ids that are not RAG nodes, some regions never merged)."""
    rng = np.random.default_rng(seed)
    n = 40
    ids = np.sort(rng.choice(10**6, size=n, replace=False)).astype(np.uint64) + 1
    pairs = {tuple(sorted(rng.choice(n, size=2, replace=False))) for _ in range(120)}
    u = ids[[p[0] for p in pairs]]
    v = ids[[p[1] for p in pairs]]
    name = {int(i): int(i) for i in ids}  # fragment -> the name of its region
    history = []
    for _ in range(30):
        x, y = rng.choice(n, size=2, replace=False)
        a, b = name[int(ids[x])], name[int(ids[y])]
        if a == b:
            continue
        c = a if rng.random() < 0.5 else b
        for k, r in name.items():
            if r in (a, b):
                name[k] = c
        history.append({"a": a, "b": b, "c": c, "score": float(rng.uniform(-0.05, 0.9))})
    history.insert(1, {"a": 7, "b": 8, "c": 7, "score": 0.95})  # ids that are not nodes
    scores = W.merge_scores(u, v, history)
    np.testing.assert_allclose(scores, _brute_force_scores(u, v, history))
    assert (scores == W.UNMERGED).any() and (scores < 0.95).any()


def test_merge_scores_small_history():
    u, v = np.array([1, 2, 1, 4], np.uint64), np.array([2, 3, 3, 5], np.uint64)
    history = [
        {"a": 7, "b": 8, "c": 7, "score": 0.9},  # not nodes: ignored
        {"a": 1, "b": 2, "c": 2, "score": 0.2},
        {"a": 2, "b": 3, "c": 3, "score": 0.1},  # running maximum: 0.2
    ]
    np.testing.assert_allclose(W.merge_scores(u, v, history), [0.2, 0.2, 0.2, 1.0])
