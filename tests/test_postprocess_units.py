"""Unit tests of the post-processing algorithms (no database, no workers): affinities from a
boundary map, fragment ids, fragment statistics, merge scores against waterz, edge ownership
over a block grid, connected-component LUTs and the metrics against scikit-image."""

from __future__ import annotations

import itertools
from pathlib import Path

import h5py
import numpy as np
import pytest
import waterz
from scipy.ndimage import center_of_mass
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.metrics import adapted_rand_error, variation_of_information

from marlseg import metrics
from marlseg import watershed as W
from marlseg.affinities import (
    NEAREST,
    AffinitySource,
    boundary_to_affinities,
    long_range_affinities,
)
from marlseg.config import DatasetRef
from marlseg.luts import Components, apply_lut, connected_luts

DATA = Path(__file__).parents[1] / "data" / "fib_train.h5"
BOUNDARY = DatasetRef(path=DATA, dataset="volumes/predictions/boundary_p1")


@pytest.fixture(scope="module")
def boundary() -> np.ndarray:
    with h5py.File(DATA, "r") as f:
        return f["volumes/predictions/boundary_p1"][:20, :50, :60]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to relabelling: the pairs (a, b) are a bijection."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()], axis=1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


# --------------------------------------------------------------------------- affinities


def test_boundary_to_affinities_matches_definition():
    rng = np.random.default_rng(0)
    b = rng.random((4, 5, 6)).astype(np.float32)
    affs = boundary_to_affinities(b)
    assert affs.shape == (3, 4, 5, 6) and affs.dtype == np.float32
    for c, d in enumerate(NEAREST):
        for x in itertools.product(*(range(n) for n in b.shape)):
            y = tuple(i + o for i, o in zip(x, d))
            if all(0 <= i < n for i, n in zip(y, b.shape)):
                want = 1.0 - max(b[x], b[y])
            else:
                want = 0.0  # the neighbour is outside: nothing known
            assert affs[(c, *x)] == pytest.approx(want)


def test_boundary_source_blocks_agree_with_whole_volume():
    """A block's affinities (boundary read one voxel further) equal the whole volume's."""
    from funlib.geometry import Roi

    src = AffinitySource(None, BOUNDARY)
    with h5py.File(DATA, "r") as f:
        whole = boundary_to_affinities(f[BOUNDARY.dataset][:])
    roi = Roi((100, 200, 300), (120, 150, 170))
    got = src.read(roi)
    z, y, x = (np.array(roi.offset) // 10).tolist()
    dz, dy, dx = (np.array(roi.shape) // 10).tolist()
    np.testing.assert_array_equal(got, whole[:, z : z + dz, y : y + dy, x : x + dx])
    # partly outside the data: affinity 0 there, identical inside
    outside = src.read(Roi((-50, 0, 0), (100, 100, 100)))
    assert (outside[:, :5] == 0).all()
    np.testing.assert_array_equal(outside[:, 6:], whole[:, 1:5, :10, :10])


def test_long_range_is_weakest_step():
    rng = np.random.default_rng(1)
    affs = rng.random((3, 6, 7, 8)).astype(np.float32)
    long = long_range_affinities(affs, [[-3, 0, 0], [0, 0, -2]])
    z, y, x = 4, 3, 5
    assert long[0, z, y, x] == pytest.approx(min(affs[0, z - j, y, x] for j in range(3)))
    assert long[1, z, y, x] == pytest.approx(min(affs[2, z, y, x - j] for j in range(2)))
    assert (long[0, :2] == 0).all()  # the far end is outside


# --------------------------------------------------------------------------- fragments


@pytest.mark.parametrize("method", ["watershed", "mutex"])
def test_fragments_cover_every_voxel(boundary, method):
    affs = boundary_to_affinities(boundary)
    if method == "watershed":
        frags = W.seeded_watershed(affs, 0.5, 10)
    else:
        frags = W.mutex_watershed(affs)
    assert frags.dtype == np.uint64 and frags.shape == boundary.shape
    assert frags.min() >= 1  # every voxel belongs to a fragment
    assert 1 < len(np.unique(frags)) < frags.size // 20


def test_fragments_in_xy_never_span_sections(boundary):
    affs = boundary_to_affinities(boundary)
    for frags in (
        W.seeded_watershed(affs, 0.5, 10, fragments_in_xy=True),
        W.mutex_watershed(affs, fragments_in_xy=True),
    ):
        per_section = [set(np.unique(s).tolist()) for s in frags]
        for a, b in itertools.combinations(per_section, 2):
            assert not a & b


def test_fragment_ids_unique_across_blocks_and_deterministic():
    rng = np.random.default_rng(2)
    block_shape = (4, 5, 6)
    vpb = int(np.prod(block_shape))
    grid = (3, 2, 2)
    seen: set[int] = set()
    for i in range(int(np.prod(grid))):
        # worst cases: every voxel its own fragment, arbitrary local labels, zeros
        local = rng.integers(0, 10**12, size=block_shape, dtype=np.uint64)
        if i == 0:
            local = np.arange(1, vpb + 1, dtype=np.uint64).reshape(block_shape)
        local[0, 0, 0] = 0
        ids = W.block_fragment_ids(local, i, vpb)
        again = W.block_fragment_ids(local.copy(), i, vpb)
        np.testing.assert_array_equal(ids, again)
        assert same_partition(ids, local)
        assert ids[0, 0, 0] == 0
        nz = set(np.unique(ids[ids > 0]).tolist())
        assert min(nz) > i * vpb and max(nz) <= (i + 1) * vpb
        assert not nz & seen
        seen |= nz
    with pytest.raises(ValueError):
        W.block_fragment_ids(np.arange(1, 9, dtype=np.uint64).reshape(2, 2, 2), 0, 4)


def test_block_index_is_c_order():
    from funlib.geometry import Coordinate

    bs = Coordinate(10, 20, 30)
    grid = (2, 3, 4)
    idx = [
        W.block_index(Coordinate(z * 10 + 5, y * 20 - 7, x * 30), Coordinate(5, -7, 0), bs, grid)
        for z in range(2)
        for y in range(3)
        for x in range(4)
    ]
    assert idx == list(range(24))


def test_fragment_stats_centres_sizes():
    rng = np.random.default_rng(3)
    frags = rng.integers(0, 5, size=(6, 7, 8)).astype(np.uint64)
    offset, vs = (100, 200, 300), (40, 4, 4)
    ids, centers, sizes = W.fragment_stats(frags, offset, vs)
    assert ids.tolist() == [1, 2, 3, 4]
    for i, c, s in zip(ids, centers, sizes):
        assert s == (frags == i).sum()
        want = np.array(offset) + np.array(center_of_mass(frags == i)) * np.array(vs)
        np.testing.assert_allclose(c, want)
        # centres of voxel corners stay inside the ROI they were cut to
        assert all(o <= x < o + n * v for x, o, n, v in zip(c, offset, frags.shape, vs))


def test_filters():
    frags = np.array([[[1, 1, 2, 3, 3, 3]]], dtype=np.uint64)
    mean_affs = np.array([[[0.9, 0.9, 0.1, 0.8, 0.2, 0.9]]])
    out = W.filter_by_mean_affinity(frags, mean_affs, 0.5)
    assert out.tolist() == [[[1, 1, 0, 3, 3, 3]]]
    assert W.remove_small(frags, 2).tolist() == [[[1, 1, 0, 3, 3, 3]]]
    assert W.remove_small(frags, 3).tolist() == [[[0, 0, 0, 3, 3, 3]]]


# --------------------------------------------------------------------------- agglomeration


def test_adjacency():
    frags = np.zeros((1, 3, 4), dtype=np.uint64)
    frags[0] = [[1, 1, 2, 2], [3, 0, 2, 4], [3, 3, 4, 4]]
    u, v = W.adjacency(frags)
    assert list(zip(u.tolist(), v.tolist())) == [(1, 2), (1, 3), (2, 4), (3, 4)]


def test_merge_scores_known_history():
    u = np.array([1, 1, 2, 4], dtype=np.uint64)
    v = np.array([2, 3, 3, 5], dtype=np.uint64)
    history = [
        {"a": 1, "b": 3, "c": 1, "score": 0.4},
        {"a": 2, "b": 1, "c": 2, "score": 0.6},
        {"a": 4, "b": 2, "c": 2, "score": 0.5},  # lower than before: monotone running max
    ]
    s = W.merge_scores(u, v, history)
    # (4, 5) never merged
    np.testing.assert_allclose(s, [0.6, 0.4, 0.6, W.UNMERGED])


@pytest.mark.parametrize("function", ["hist_quant_75", "mean"])
def test_thresholded_merge_scores_reproduce_waterz(boundary, function):
    """Connected components of edges scored below t == waterz's own segmentation at t."""
    affs = boundary_to_affinities(boundary)
    frags = W.seeded_watershed(affs, 0.5, 10)
    fn = W.scoring_function(function)
    u, v, s = W.agglomerate_edges(affs, frags, fn)
    assert ((s >= 0) & (s <= 1)).all()
    ids = np.unique(frags)
    for t in (0.1001, 0.3001, 0.5001, 0.7001):
        keep = s < t
        n = ids.size
        graph = coo_matrix(
            (np.ones(keep.sum()), (np.searchsorted(ids, u[keep]), np.searchsorted(ids, v[keep]))),
            shape=(n, n),
        )
        _, label = connected_components(graph, directed=False)
        ours = label[np.searchsorted(ids, frags)]
        theirs = next(
            iter(waterz.agglomerate(affs, [t], fragments=frags.copy(), scoring_function=fn))
        )
        assert same_partition(ours, theirs.copy()), t


def test_edge_ownership_each_edge_scored_once(boundary):
    """Blocks own the edges of the fragments in their write ROI whose smaller id is theirs:
    over a grid, every adjacency edge of the whole volume is scored exactly once."""
    affs = boundary_to_affinities(boundary)
    shape = np.array(boundary.shape)
    block = np.array([10, 20, 25])
    grid = -(-shape // block)
    vpb = int(np.prod(block))
    # fragments cut at block faces, ids by block (what 02 writes)
    frags = np.zeros(boundary.shape, dtype=np.uint64)
    context = 3
    for i, pos in enumerate(itertools.product(*(range(g) for g in grid))):
        lo = np.array(pos) * block
        hi = np.minimum(lo + block, shape)
        rlo, rhi = np.maximum(lo - context, 0), np.minimum(hi + context, shape)
        read = tuple(slice(a, b) for a, b in zip(rlo, rhi))
        f = W.seeded_watershed(affs[(slice(None), *read)], 0.5, 10)
        crop = tuple(slice(a - r, b - r) for a, b, r in zip(lo, hi, rlo))
        frags[tuple(slice(a, b) for a, b in zip(lo, hi))] = W.block_fragment_ids(f[crop], i, vpb)
    want = set(zip(*(x.tolist() for x in W.adjacency(frags))))
    scored: list[tuple[int, int]] = []
    for pos in itertools.product(*(range(g) for g in grid)):
        lo = np.array(pos) * block
        hi = np.minimum(lo + block, shape)
        rlo, rhi = np.maximum(lo - 1, 0), np.minimum(hi + 1, shape)  # one voxel of context
        read = tuple(slice(a, b) for a, b in zip(rlo, rhi))
        f = frags[read]
        u, v, _ = W.agglomerate_edges(affs[(slice(None), *read)], f, W.scoring_function("mean"))
        owned = np.unique(frags[tuple(slice(a, b) for a, b in zip(lo, hi))])
        keep = np.isin(u, owned)
        scored += list(zip(u[keep].tolist(), v[keep].tolist()))
    assert len(scored) == len(set(scored)), "an edge was scored by two blocks"
    assert set(scored) == want
    crossing = [(a, b) for a, b in want if (a - 1) // vpb != (b - 1) // vpb]
    assert len(crossing) > 50


# --------------------------------------------------------------------------- LUTs


def test_components_match_scipy_and_ignore_edge_order():
    rng = np.random.default_rng(4)
    nodes = np.unique(rng.integers(1, 10**15, size=3000, dtype=np.uint64))
    n_edges = 2500
    u = nodes[rng.integers(0, nodes.size, n_edges)]
    v = nodes[rng.integers(0, nodes.size, n_edges)]
    score = rng.random(n_edges)
    thresholds = [0.2, 0.5, 0.9]

    def batches(order, size):
        for i in range(0, n_edges, size):
            sel = order[i : i + size]
            yield u[sel], v[sel], score[sel]

    luts = connected_luts(nodes, batches(np.arange(n_edges), 97), thresholds)
    shuffled = connected_luts(nodes, batches(rng.permutation(n_edges), 1000), thresholds)
    for t in thresholds:
        frag, seg = luts[t]
        np.testing.assert_array_equal(frag, nodes)
        np.testing.assert_array_equal(seg, shuffled[t][1])
        keep = score <= t
        graph = coo_matrix(
            (
                np.ones(keep.sum()),
                (np.searchsorted(nodes, u[keep]), np.searchsorted(nodes, v[keep])),
            ),
            shape=(nodes.size, nodes.size),
        )
        _, label = connected_components(graph, directed=False)
        assert same_partition(seg, label)
        # the segment id is the smallest fragment id of the segment
        for comp in np.unique(label)[:50]:
            members = nodes[label == comp]
            assert (seg[label == comp] == members.min()).all()


def test_components_deep_chain_flattens():
    nodes = np.arange(1, 2001, dtype=np.uint64)
    comp = Components(nodes)
    for i in range(1999, 0, -1):  # one edge per batch, worst case for depth
        comp.add_edges(nodes[i : i + 1], nodes[i - 1 : i])
    frag, seg = comp.lut()
    assert (seg == 1).all()
    with pytest.raises(KeyError):
        comp.add_edges(np.array([5000], np.uint64), np.array([1], np.uint64))


def test_apply_lut():
    frag_ids = np.array([3, 5, 9], dtype=np.uint64)
    seg_ids = np.array([3, 3, 9], dtype=np.uint64)
    fragments = np.array([[0, 3, 5], [9, 7, 5]], dtype=np.uint64)
    assert apply_lut(fragments, frag_ids, seg_ids).tolist() == [[0, 3, 3], [9, 7, 3]]


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ignore", [0, None, 3])
def test_metrics_match_skimage(seed, ignore):
    rng = np.random.default_rng(seed)
    shape = (7, 9, 11)
    gt = rng.integers(0, 6, size=shape).astype(np.uint64)
    seg = rng.integers(0, 4 + seed, size=shape).astype(np.uint64)
    if seed % 2:  # a structured segmentation: a coarsening of gt plus noise
        seg = (gt // 2 + (rng.random(shape) < 0.1)).astype(np.uint64)
    ours = metrics.evaluate(seg, gt, ignore_label=ignore)
    labels = [] if ignore is None else [ignore]
    split, merge = variation_of_information(gt, seg, ignore_labels=labels)
    are, _, _ = adapted_rand_error(gt, seg, ignore_labels=labels)
    assert ours["voi_split"] == pytest.approx(split, abs=1e-9)
    assert ours["voi_merge"] == pytest.approx(merge, abs=1e-9)
    assert ours["arand"] == pytest.approx(are, abs=1e-9)


def test_metrics_blockwise_tables_add_up():
    rng = np.random.default_rng(7)
    gt = rng.integers(0, 8, size=(12, 10, 10)).astype(np.uint64)
    seg = rng.integers(0, 5, size=(12, 10, 10)).astype(np.uint64) * np.uint64(10**12)
    tables = [
        metrics.contingency(seg[z : z + 5, :, x : x + 4], gt[z : z + 5, :, x : x + 4], 0)
        for z in range(0, 12, 5)
        for x in range(0, 10, 4)
    ]
    merged = metrics.merge_tables(tables)
    whole = metrics.contingency(seg, gt, 0)
    order = np.lexsort((merged.gt, merged.seg))
    order_w = np.lexsort((whole.gt, whole.seg))
    np.testing.assert_array_equal(merged.count[order], whole.count[order_w])
    assert metrics.scores(merged) == pytest.approx(metrics.scores(whole))
    # the ignore label removes voxels of gt 0 only, whatever their segment
    assert whole.count.sum() == (gt != 0).sum()


def test_metrics_of_relabelled_table():
    """A fragment-level table mapped through a LUT has several rows per (segment, body):
    scoring it, alone or merged, equals scoring the relabelled volume."""
    rng = np.random.default_rng(8)
    gt = rng.integers(0, 6, size=(10, 10, 10)).astype(np.uint64)
    frags = rng.integers(1, 40, size=(10, 10, 10)).astype(np.uint64)
    lut_f = np.arange(1, 40, dtype=np.uint64)
    lut_s = (lut_f // 7 + 1).astype(np.uint64)
    table = metrics.contingency(frags, gt, 0)
    mapped = metrics.Table(apply_lut(table.seg, lut_f, lut_s), table.gt, table.count)
    want = metrics.evaluate(apply_lut(frags, lut_f, lut_s), gt, 0)
    assert metrics.scores(mapped) == pytest.approx(want)
    assert metrics.scores(metrics.merge_tables([mapped])) == pytest.approx(want)
    assert len(metrics.merge_tables([mapped])) < len(mapped)


def test_metrics_perfect_and_all_ignored():
    gt = np.array([1, 1, 2, 2, 0], dtype=np.uint64)
    s = metrics.evaluate(gt * 7, gt)
    assert s == {"voi_split": 0.0, "voi_merge": 0.0, "arand": 0.0}
    with pytest.raises(ValueError):
        metrics.evaluate(gt, np.zeros_like(gt))


def test_epsilon_agglomerate_and_options(boundary):
    from marlseg.config import FragmentsConfig
    from marlseg.watershed import compute_fragments

    affs = boundary_to_affinities(boundary)
    plain = compute_fragments(affs, FragmentsConfig())
    merged = compute_fragments(affs, FragmentsConfig(epsilon_agglomerate=0.3))
    n_plain, n_merged = len(np.unique(plain)), len(np.unique(merged))
    assert n_merged < n_plain
    # merging only: every merged fragment is a union of plain ones
    pairs = np.unique(np.stack([plain.ravel(), merged.ravel()], axis=1), axis=0)
    assert len(np.unique(pairs[:, 0])) == len(pairs)
    cleaned = compute_fragments(
        affs, FragmentsConfig(filter_fragments=0.6, min_size=200), mask=boundary < 2
    )
    ids, counts = np.unique(cleaned[cleaned > 0], return_counts=True)
    assert (cleaned == 0).any() and ids.size > 0 and (counts >= 200).all()
    mask = np.zeros(boundary.shape, dtype=bool)
    mask[:, :, :30] = True
    masked = compute_fragments(affs * mask, FragmentsConfig(), mask=mask)
    assert (masked[~mask] == 0).all() and (masked[mask] > 0).all()
