"""Stateless actor-critic (issue 9): sub-graphs, partitioner, priors, networks, feature
pooling, training on a synthetic RAG, and the ``edge_rl`` stage against a real MongoDB."""

from __future__ import annotations

import json
import uuid

import networkx as nx
import numpy as np
import pytest
import torch
from skimage.metrics import variation_of_information

from marlseg.config import Config, EdgeRlConfig, load_config
from marlseg.edge_rl import EdgeRlEnv, EdgeRlTrainer, bfs_crops
from marlseg.errors import ConfigError
from marlseg.fragment_features import pool_fragment_features
from marlseg.networks.gnn import GnnActor, GnnCritic, SigmoidNormal
from marlseg.partition import mutex_partition, partition, threshold_partition
from marlseg.priors import (
    CompositePrior,
    ElongationPrior,
    MembranePrior,
    Objects,
    RagGraph,
    SizePrior,
    TinySegmentsPrior,
    build_priors,
    max_to_edges,
)
from marlseg.subgraphs import extract_subgraphs, subgraph_sets

torch.set_num_threads(1)


# --------------------------------------------------------------------------- helpers


def grid_edges(shape: tuple[int, int, int]) -> np.ndarray:
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    out = []
    for ax in range(3):
        a = np.moveaxis(idx, ax, 0)
        out.append(np.stack([a[:-1].ravel(), a[1:].ravel()], 1))
    return np.sort(np.concatenate(out), axis=1)


def tube_rag(
    grid=(4, 6, 12),
    tube=(2, 2),
    length=None,
    sv=8,
    vs=10.0,
    noise=0.1,
    feat_noise=1.0,
    seed=0,
):
    """A 3D grid of cubic supervoxels (``sv`` voxels a side) whose true objects are tubes along
    x of ``tube`` supervoxels in cross-section and ``length`` along x (default: all of it).

    Node features: a random colour per tube plus noise of the same size (informative but
    noisy); edge evidence (and the only edge feature): 0.3 inside a tube, 0.7 between, plus
    Gaussian noise. Returns the graph, the true object per node and the tube volume (µm³)."""
    rng = np.random.default_rng(seed)
    z, y, x = grid
    length = length or x
    zz, yy, xx = np.meshgrid(np.arange(z), np.arange(y), np.arange(x), indexing="ij")
    gt = ((zz // tube[0]) * (y // tube[1]) + yy // tube[1]) * (x // length) + xx // length
    gt = gt.ravel()
    edges = grid_edges(grid)
    same = gt[edges[:, 0]] == gt[edges[:, 1]]
    ev = np.clip(np.where(same, 0.3, 0.7) + noise * rng.standard_normal(len(edges)), 0, 1)
    colors = rng.standard_normal((gt.max() + 1, 4))
    features = colors[gt] + feat_noise * rng.standard_normal((len(gt), 4))
    n = len(gt)
    moments = np.zeros((n, 6))
    moments[:, :3] = (sv * vs) ** 2 / 12  # a cube's variance per axis
    graph = RagGraph(
        node_ids=np.arange(1, n + 1),
        edges=edges,
        sizes=np.full(n, sv**3),
        centers=(np.stack([zz, yy, xx], -1).reshape(-1, 3) + 0.5) * sv * vs,
        voxel_size=(vs, vs, vs),
        node_features=features,
        edge_features=ev[:, None],
        evidence=ev,
        moments=moments,
    )
    tube_um3 = tube[0] * tube[1] * length * sv**3 * vs**3 * 1e-9
    return graph, gt, tube_um3


def tube_priors(tube_um3: float) -> CompositePrior:
    return CompositePrior(
        [
            SizePrior(0.8 * tube_um3, 1.25 * tube_um3, softness=0.5),
            ElongationPrior(min_ratio=3.0),
            MembranePrior(merge_above=0.5, split_below=0.5),
        ]
    )


def voi(graph: RagGraph, gt: np.ndarray, labels: np.ndarray) -> float:
    """VOI over node labels, each node weighted by its size."""
    w = graph.sizes.astype(int)
    split, merge = variation_of_information(np.repeat(gt, w), np.repeat(labels, w))
    return float(split + merge)


def true_cut(graph: RagGraph, gt: np.ndarray) -> np.ndarray:
    return (gt[graph.edges[:, 0]] != gt[graph.edges[:, 1]]).astype(float)


def line_graph(n: int, spacing: float = 100.0, size: int = 1000) -> RagGraph:
    """``n`` nodes in a row along x."""
    centers = np.zeros((n, 3))
    centers[:, 2] = np.arange(n) * spacing
    return RagGraph(
        node_ids=np.arange(1, n + 1),
        edges=np.stack([np.arange(n - 1), np.arange(1, n)], 1),
        sizes=np.full(n, size),
        centers=centers,
        voxel_size=(10.0, 10.0, 10.0),
    )


# --------------------------------------------------------------------------- sub-graphs


@pytest.mark.parametrize("k", [6, 12, 32, 128])
def test_subgraphs_exact_connected_covering_overlapping(k):
    g = nx.convert_node_labels_to_integers(nx.grid_graph(dim=[12, 6, 4]))
    edges = np.array(sorted(tuple(sorted(e)) for e in g.edges()))
    sg = extract_subgraphs(g.number_of_nodes(), edges, k, rng=0)
    assert sg.shape[1] == k and sg.shape[0] >= 1
    for row in sg:
        assert len(set(row.tolist())) == k  # exactly k distinct edges (the graph is connected)
        sub = nx.Graph([tuple(edges[e]) for e in row])
        assert nx.is_connected(sub)
    counts = np.bincount(sg.ravel(), minlength=len(edges))
    assert counts.min() >= 1  # every edge covered ...
    assert set(np.unique(edges[sg.ravel()])) == set(g.nodes())  # ... and so every node
    if len(edges) % k:
        assert counts.max() >= 2  # sub-graphs overlap where the sizes do not tile the graph


def test_subgraphs_growth_is_dense_and_reproducible():
    # a complete graph on 5 nodes has 10 edges: a 6-edge sub-graph must close cycles
    # (a tree of 6 edges would need 7 nodes)
    edges = np.array([(i, j) for i in range(5) for j in range(i + 1, 5)] + [(4, 5), (5, 6)])
    a = extract_subgraphs(7, edges, 6, rng=1)
    b = extract_subgraphs(7, edges, 6, rng=1)
    assert np.array_equal(a, b)
    for row in a:
        if row[0] < 10:  # seeded inside the complete graph: cycles come before new nodes
            assert len(np.unique(edges[row])) <= 5


def test_subgraphs_small_components_are_padded():
    # two components: a path of 3 edges and a single edge; k = 4 exceeds both
    edges = np.array([(0, 1), (1, 2), (2, 3), (5, 6)])
    sg = extract_subgraphs(7, edges, 4, rng=0)
    assert sg.shape == (2, 4)
    covered = set(sg.ravel().tolist())
    assert covered == {0, 1, 2, 3}
    for row in sg:  # each sub-graph stays inside one component
        assert len({0 if e < 3 else 1 for e in row}) == 1
    sets = subgraph_sets(7, edges, [2, 4], rng=0)
    assert set(sets) == {2, 4} and sets[2].shape[1] == 2
    assert extract_subgraphs(3, np.zeros((0, 2)), 6).shape == (0, 6)


# --------------------------------------------------------------------------- partition


def test_mutex_partition_respects_order_and_mutexes():
    # square 0-1-2-3-0: 0-1, 1-2, 2-3 attractive; the strong repulsion 0-3 comes first and
    # keeps 0 and 3 apart although the path 0-1-2-3 is attractive
    edges = np.array([(0, 1), (1, 2), (2, 3), (0, 3)])
    labels = mutex_partition(4, edges, np.array([0.1, 0.3, 0.2, 0.99]))
    assert labels[0] != labels[3]
    assert len(np.unique(labels)) == 2
    # a weak repulsion comes last: everything merged by then
    labels = mutex_partition(4, edges, np.array([0.1, 0.3, 0.2, 0.6]))
    assert len(np.unique(labels)) == 1
    # isolated node 4 stays alone; labels are 0..K-1
    labels = mutex_partition(5, edges, np.array([0.1, 0.3, 0.2, 0.6]))
    assert sorted(np.unique(labels)) == [0, 1] and labels[4] != labels[0]


def test_threshold_partition_is_connected_components():
    edges = np.array([(0, 1), (1, 2), (2, 3), (0, 3)])
    w = np.array([0.1, 0.3, 0.7, 0.99])
    labels = partition(4, edges, w, "threshold", 0.5)
    assert labels[0] == labels[1] == labels[2] != labels[3]
    raw = threshold_partition(4, edges, w, 0.2)
    assert raw[0] == raw[1] and len(np.unique(raw)) == 3
    with pytest.raises(ValueError):
        partition(4, edges, w, "multicut")


# --------------------------------------------------------------------------- priors


def test_size_prior_range_border_and_edges():
    g = line_graph(6, size=1000)  # 1000 voxels of 10 nm: 0.001 µm³ per node
    prior = SizePrior(min_um3=0.0025, max_um3=0.0035, softness=0.5)
    objects = Objects(g, np.array([0, 0, 0, 1, 2, 2]))  # 3 nodes, 1 node, 2 nodes
    r = prior.object_rewards(objects)
    assert r[0] == pytest.approx(1.0)
    assert r[1] < r[2] < 1.0  # smaller is worse
    big = prior.object_rewards(Objects(g, np.zeros(6, int)))
    # 0.006 µm³ is too large: a Gaussian in log-volume beyond the upper bound
    assert big[0] == pytest.approx(np.exp(-0.5 * (np.log(0.006 / 0.0035) / 0.5) ** 2))
    g.at_border = np.array([False, False, False, True, False, False])
    at_border = Objects(g, objects.labels)
    assert prior.object_rewards(at_border)[1] == pytest.approx(1.0)  # cut at the border
    # edges take the larger reward of their two objects
    e = max_to_edges(objects, r)
    assert e[0] == e[1] == pytest.approx(1.0)  # inside object 0
    assert e[2] == pytest.approx(max(r[0], r[1]))  # between objects 0 and 1


def test_object_covariance_is_exact_and_elongation_prior():
    # 8 voxel-cubes: each node is one voxel (10 nm) with its own variance 100/12 nm²
    vs = 10.0
    coords = np.array([(0, 0, x) for x in range(8)], float) * vs
    g = RagGraph(
        node_ids=np.arange(1, 9),
        edges=np.stack([np.arange(7), np.arange(1, 8)], 1),
        sizes=np.ones(8),
        centers=coords,
        voxel_size=(vs, vs, vs),
        moments=np.tile([vs**2 / 12] * 3 + [0, 0, 0], (8, 1)),
    )
    objects = Objects(g, np.zeros(8, int))
    expected = np.cov(coords.T, bias=True) + np.eye(3) * vs**2 / 12
    assert np.allclose(objects.covariances[0], expected)
    assert objects.axis_ratio[0] == pytest.approx(np.sqrt(expected[2, 2] / expected[0, 0]))
    prior = ElongationPrior(min_ratio=3.0)
    assert prior.object_rewards(objects)[0] == pytest.approx(1.0)  # a rod
    blob = RagGraph(
        node_ids=np.arange(1, 9),
        edges=g.edges,
        sizes=np.ones(8),
        centers=np.array([(z, y, x) for z in (0, 1) for y in (0, 1) for x in (0, 1)], float) * vs,
        voxel_size=(vs, vs, vs),
    )
    assert prior.object_rewards(Objects(blob, np.zeros(8, int)))[0] == pytest.approx(0.0)
    small = ElongationPrior(min_ratio=3.0, min_um3=1.0)  # everything here is "too small"
    assert small.object_rewards(Objects(blob, np.zeros(8, int)))[0] == 1.0


def test_membrane_prior_edge_and_object_levels():
    g = line_graph(4)
    g.evidence = np.array([0.9, 0.05, 0.5])  # strong membrane, none, neutral
    labels = np.array([0, 0, 0, 1])  # merges across edge 0 (bad), 1 (good); cuts edge 2
    objects = Objects(g, labels)
    edge_level = MembranePrior(merge_above=0.7, split_below=0.1, level="edge")
    r = edge_level.edge_rewards(objects)
    assert r[0] == pytest.approx(1 - (0.9 - 0.7) / 0.3)
    assert r[1] == pytest.approx(1.0) and r[2] == pytest.approx(1.0)
    split = Objects(g, np.array([0, 1, 1, 1]))  # cuts edge 0 (good), merges 1 and 2
    assert edge_level.edge_rewards(split).tolist() == pytest.approx([1.0, 1.0, 1.0])
    bad_split = Objects(g, np.array([0, 0, 1, 1]))  # cuts edge 1, which has no membrane
    assert edge_level.edge_rewards(bad_split)[1] == pytest.approx(0.5)
    obj_level = MembranePrior(merge_above=0.7, split_below=0.1, level="object")
    o = obj_level.object_rewards(objects)
    assert o[0] == pytest.approx(1 - (0.9 - 0.7) / 0.3) and o[1] == pytest.approx(1.0)
    ob = obj_level.object_rewards(bad_split)
    # the bad cut (violation 0.5) hurts both sides; object 0 also holds the merge across 0.9
    assert ob.tolist() == pytest.approx([1 - (0.9 - 0.7) / 0.3, 0.5])
    with pytest.raises(ValueError):
        MembranePrior(level="voxel")


def test_tiny_prior_and_composite():
    g = line_graph(6, size=10)  # 1e-5 µm³ per node
    labels = np.arange(6)  # six tiny objects
    tiny = TinySegmentsPrior(max_um3=1e-4, max_count=3)
    assert tiny.object_rewards(Objects(g, labels)) == pytest.approx(np.full(6, 0.5))
    assert tiny.object_rewards(Objects(g, np.zeros(6, int)))[0] == 1.0  # one tiny: allowed
    g.evidence = np.full(5, 0.9)
    comp = CompositePrior(
        [SizePrior(min_um3=5e-5, weight=1.0), MembranePrior(0.5, 0.5, "edge", weight=3.0)]
    )
    objects = Objects(g, labels)
    size_edges = max_to_edges(objects, SizePrior(min_um3=5e-5).object_rewards(objects))
    expected = (1.0 * size_edges + 3.0 * np.ones(5)) / 4.0  # all cut: membrane is satisfied
    assert comp.edge_rewards(objects) == pytest.approx(expected)
    built = build_priors({"size": {"min_um3": 1.0}, "tiny": None, "membrane": {"level": "edge"}})
    assert [p.name for p in built.priors] == ["size", "membrane"]
    with pytest.raises(ValueError):
        build_priors({"colour": {}})


def test_env_rewards_gt_best_and_subgraph_means():
    graph, gt, tube_um3 = tube_rag(grid=(2, 4, 8), tube=(1, 1), length=4)
    env = EdgeRlEnv(graph, tube_priors(tube_um3), [6, 12], partitioner="mutex", rng=0)
    truth = env.step(true_cut(graph, gt), diagnostics=True)
    assert voi(graph, gt, truth.labels) == pytest.approx(0.0, abs=1e-9)
    assert truth.reward > 0.99
    assert set(truth.prior_means) == {"size", "elongation", "membrane"}
    for k, sg in env.subgraphs.items():
        assert truth.subgraph_rewards[k] == pytest.approx(truth.edge_rewards[sg].mean(1))
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert env.step(rng.random(graph.n_edges)).reward < truth.reward
    assert env.step(np.ones(graph.n_edges)).reward < truth.reward  # all split
    assert env.step(np.zeros(graph.n_edges)).reward < truth.reward  # all merged


def test_crops_mark_their_border():
    graph, _, _ = tube_rag(grid=(2, 4, 8), tube=(1, 2))
    crops = bfs_crops(graph, 20, 3, rng=0)
    assert all(len(c) == 20 for c in crops)
    sub = graph.subgraph(crops[0])
    assert sub.n_nodes == 20 and sub.at_border.any() and not sub.at_border.all()
    assert nx.is_connected(nx.Graph(sub.edges.tolist()))
    assert np.allclose(sub.evidence, graph.evidence[sub.extra["parent_edges"]])


# --------------------------------------------------------------------------- networks


def test_actor_is_symmetric_and_log_prob_is_right():
    torch.manual_seed(0)
    x = torch.randn(10, 3)
    edges = torch.tensor([(0, 1), (1, 2), (2, 3), (4, 5), (5, 9)])
    ef = torch.randn(5, 2)
    actor = GnnActor(3, 2, hidden=8, layers=2)
    for p in actor.parameters():  # leave the zero init: outputs must depend on the inputs
        torch.nn.init.normal_(p, std=0.3)
    d1 = actor(x, edges, ef)
    d2 = actor(x, edges.flip(1), ef)
    assert torch.allclose(d1.loc, d2.loc, atol=1e-5) and torch.allclose(d1.scale, d2.scale)
    assert d1.loc.shape == (5,) and (d1.scale > 0).all()
    logit = d1.rsample_logit()
    ref = SigmoidNormal(d1.loc, d1.scale).log_prob(torch.sigmoid(logit))
    assert torch.allclose(d1.log_prob_logit(logit), ref, atol=1e-4)
    base = torch.full((5,), 2.0)
    fresh = GnnActor(3, 2, hidden=8, layers=2, init_scale=0.7)
    d = fresh(x, edges, ef, base)  # a fresh actor starts exactly at the base
    assert torch.allclose(d.loc, base) and torch.allclose(d.scale, torch.full((5,), 0.7))


def test_critic_shapes_and_action_gradient():
    torch.manual_seed(0)
    x = torch.randn(10, 3)
    edges = torch.tensor([(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 9), (2, 9)])
    sg = {2: torch.tensor([[0, 1], [2, 3], [4, 5], [5, 6]]), 3: torch.tensor([[0, 1, 6]])}
    critic = GnnCritic(3, 1, [2, 3], hidden=8, layers=1, action_layers=2)
    for p in critic.parameters():
        torch.nn.init.normal_(p, std=0.3)
    a = torch.rand(4, 7, requires_grad=True)
    q, v = critic(x, edges, torch.randn(7, 1), a, sg, return_edge_values=True)
    assert q[2].shape == (4, 4) and q[3].shape == (4, 1) and v.shape == (4, 7)
    q[2].sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    single = critic(x, edges, torch.randn(7, 1), torch.rand(7), sg)
    assert single[2].shape == (4,)


# --------------------------------------------------------------------------- features


def test_pool_fragment_features_streams_slabs_exactly(tmp_path):
    from funlib.geometry import Coordinate, Roi

    from marlseg.config import DatasetRef
    from marlseg.volumes import prepare_volume

    rng = np.random.default_rng(0)
    shape = (10, 12, 14)
    frag = np.zeros(shape, np.uint64)
    frag[:, :, :7] = 5
    frag[:, :, 7:] = 9
    frag[6:, :6, 7:] = 12  # a third fragment touching 9 across z and 5 across x
    frag[0, 0, 0] = 0  # background voxel
    raw = rng.integers(0, 255, shape).astype(np.uint8)
    bnd = rng.random(shape).astype(np.float32)
    vs = (8, 4, 4)
    roi = Roi((0, 0, 0), Coordinate(shape) * Coordinate(vs))
    arrays = {}
    for name, data in (("frag", frag), ("raw", raw), ("bnd", bnd)):
        ref = DatasetRef(path=tmp_path / "v.zarr", dataset=name)
        a = prepare_volume(ref, roi, vs, data.dtype, roi.shape)
        a._source_data[:] = data
        arrays[name] = a
    node_ids = np.array([12, 5, 9], np.uint64)
    edges = np.array([(1, 2), (0, 2), (0, 1)])  # 5-9, 12-9, 12-5 (node indices)
    stats = pool_fragment_features(
        arrays["frag"], node_ids, edges, arrays["raw"], arrays["bnd"], slab_sections=3
    )
    zz, yy, xx = np.meshgrid(*[(np.arange(s) + 0.5) * v for s, v in zip(shape, vs)], indexing="ij")
    for i, fid in enumerate(node_ids):
        m = frag == fid
        assert stats.counts[i] == m.sum()
        c = np.array([zz[m].mean(), yy[m].mean(), xx[m].mean()])
        assert np.allclose(stats.centers[i], c)
        pts = np.stack([zz[m], yy[m], xx[m]], 1)
        cov = np.cov(pts.T, bias=True) + np.diag(np.array(vs, float) ** 2 / 12)
        got = stats.moments[i]
        assert np.allclose(got[:3], np.diag(cov)) and np.allclose(
            got[3:], cov[[0, 0, 1], [1, 2, 2]]
        )
        assert stats.features["raw_mean"][i] == pytest.approx(raw[m].mean())
        assert stats.features["boundary_mean"][i] == pytest.approx(bnd[m].mean(), rel=1e-5)
        assert stats.at_border[i]
    # contacts counted over face-adjacent voxel pairs, including those across slabs
    for e, (a, b) in enumerate(edges):
        ia, ib = node_ids[a], node_ids[b]
        area, bsum = 0, 0.0
        for ax in range(3):
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[ax], hi[ax] = slice(None, -1), slice(1, None)
            f1, f2 = frag[tuple(lo)], frag[tuple(hi)]
            m = ((f1 == ia) & (f2 == ib)) | ((f1 == ib) & (f2 == ia))
            area += m.sum()
            bsum += np.maximum(bnd[tuple(lo)], bnd[tuple(hi)])[m].sum()
        assert stats.contact_area[e] == area
        assert stats.contact_boundary[e] == pytest.approx(bsum / area, rel=1e-5)


# --------------------------------------------------------------------------- training


def _train(graph, priors, iterations, **kw):
    cfg = EdgeRlConfig(
        iterations=iterations,
        subgraph_sizes=[6, 12, 32],
        hidden=16,
        eval_every=10,
        **kw,
    )
    trainer = EdgeRlTrainer(graph, priors, cfg)
    trainer.train()
    return trainer


@pytest.mark.slow
def test_training_raises_reward_and_beats_random_small_tubes():
    """24 tubes of 6 supervoxels: from weights of 0.65 everywhere, the priors alone teach the
    actor which edges to cut (~150 iterations; 25-35 s on a free core, marked slow because
    it is training)."""
    graph, gt, tube_um3 = tube_rag(grid=(3, 4, 12), tube=(1, 1), length=6)
    priors = tube_priors(tube_um3)
    trainer = _train(graph, priors, 150)
    evals = trainer.history.evals["reward"]
    learned = trainer.eval_env.step(trainer.predict())
    rng = np.random.default_rng(1)
    random_runs = [trainer.eval_env.step(rng.random(graph.n_edges)) for _ in range(5)]
    assert learned.reward > evals[0] + 0.3  # the mean policy's reward rose
    assert learned.reward == pytest.approx(trainer.best_reward)  # the best model is kept
    assert learned.reward > max(r.reward for r in random_runs)
    random_voi = np.mean([voi(graph, gt, r.labels) for r in random_runs])
    assert voi(graph, gt, learned.labels) < 0.5 * random_voi


@pytest.mark.slow
def test_training_finds_a_few_long_tubes():
    """Six tubes of 48 supervoxels each (the objects are much larger than the sub-graphs;
    learning sets in after ~250 iterations, 60-90 s)."""
    graph, gt, tube_um3 = tube_rag()
    trainer = _train(graph, tube_priors(tube_um3), 400)
    learned = trainer.eval_env.step(trainer.predict())
    rng = np.random.default_rng(1)
    random_voi = np.mean(
        [voi(graph, gt, trainer.eval_env.step(rng.random(graph.n_edges)).labels) for _ in range(5)]
    )
    assert learned.reward > trainer.history.evals["reward"][0] + 0.3
    assert voi(graph, gt, learned.labels) < 0.25 * random_voi


def test_trainer_save_load_and_crops(tmp_path):
    graph, _, tube_um3 = tube_rag(grid=(2, 4, 8), tube=(1, 2), length=4)
    cfg = EdgeRlConfig(
        iterations=8,
        subgraph_sizes=[6],
        hidden=8,
        warmup=4,
        eval_every=4,
        crop_nodes=30,
        n_crops=3,
    )
    trainer = EdgeRlTrainer(graph, tube_priors(tube_um3), cfg)
    assert len(trainer.envs) == 3 and all(env.graph.n_nodes == 30 for env in trainer.envs)
    trainer.train()
    assert len(trainer.history.train["reward"]) == 8 and len(trainer.history.evals["reward"]) == 2
    w = trainer.predict()
    assert w.shape == (graph.n_edges,) and ((w > 0) & (w < 1)).all()
    trainer.save(tmp_path / "m.pt")
    other = EdgeRlTrainer(graph, tube_priors(tube_um3), cfg)
    other.load(tmp_path / "m.pt")
    assert np.allclose(other.predict(), w)
    from marlseg.edge_rl import plot_history

    plot_history(trainer.history, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


# --------------------------------------------------------------------------- the stage


def _write_volumes(tmp_path, frag: np.ndarray, vs=(10, 10, 10)):
    from funlib.geometry import Coordinate, Roi

    from marlseg.config import DatasetRef
    from marlseg.volumes import prepare_volume

    rng = np.random.default_rng(0)
    roi = Roi((0, 0, 0), Coordinate(frag.shape) * Coordinate(vs))
    refs = {}
    for name, data in (
        ("fragments", frag),
        ("raw", rng.integers(0, 255, frag.shape).astype(np.uint8)),
        ("boundary", rng.random(frag.shape).astype(np.float32)),
    ):
        ref = DatasetRef(path=tmp_path / "vol.zarr", dataset=name)
        a = prepare_volume(ref, roi, vs, data.dtype, roi.shape)
        a._source_data[:] = data
        refs[name] = ref
    return refs


def _stage_config(tmp_path, refs, uri, db_name, **edge_rl):
    return Config.model_validate(
        {
            "run": {"dir": str(tmp_path / "run")},
            "db": {"uri": uri, "name": db_name},
            "raw": refs["raw"].model_dump(mode="json"),
            "fragments": {
                "fragments": refs["fragments"].model_dump(mode="json"),
                "boundary": refs["boundary"].model_dump(mode="json"),
            },
            "edge_rl": {
                "iterations": 12,
                "warmup": 4,
                "eval_every": 4,
                "hidden": 8,
                "subgraph_sizes": [4, 8],
                "priors": {"size": {"min_um3": 1e-4, "max_um3": 1e-2}},
                **edge_rl,
            },
        }
    )


def test_stage_round_trip_rl_weight_in_mongodb(tmp_path, mongo_uri):
    from marlseg.db import MongoDbGraphDatabase
    from marlseg.stages.edge_rl import EdgeRlStage

    # a 4 x 4 grid of column fragments, 4 x 8 x 8 voxels each
    frag = np.zeros((4, 32, 32), np.uint64)
    for i in range(4):
        for j in range(4):
            frag[:, i * 8 : (i + 1) * 8, j * 8 : (j + 1) * 8] = 100 + 4 * i + j
    refs = _write_volumes(tmp_path, frag)
    ids = np.arange(100, 116, dtype=np.uint64)
    centers = np.array([(20.0, (i // 4) * 80 + 40.0, (i % 4) * 80 + 40.0) for i in range(16)])
    pairs = [(a, a + 1) for a in range(16) if a % 4 != 3] + [(a, a + 4) for a in range(12)]
    u = ids[[p[0] for p in pairs]]
    v = ids[[p[1] for p in pairs]]
    score = np.random.default_rng(0).random(len(pairs))
    name = f"test_edge_rl_{uuid.uuid4().hex[:8]}"
    db = MongoDbGraphDatabase(mongo_uri, name, mode="w")
    db.write_nodes(ids, centers, np.full(16, 256))
    db.write_edges(u, v, merge_score=score, agglomerated=np.ones(len(pairs), bool))
    db.close()

    cfg = _stage_config(tmp_path, refs, mongo_uri, name)
    stage = EdgeRlStage(cfg)
    stage.check()
    summary = stage.run()
    assert summary["edges_written"] == len(pairs) and summary["fragments"] == 16
    out = tmp_path / "run" / "edge_rl"
    for f in ("model.pt", "history.json", "rewards.png", "summary.json"):
        assert (out / f).exists(), f
    assert json.loads((out / "summary.json").read_text())["weight_attr"] == "rl_weight"

    db = MongoDbGraphDatabase(mongo_uri, name, mode="r")
    got = db.read_edges_for_nodes(ids, attrs=["rl_weight", "merge_score"])
    db.close()
    assert len(got["u"]) == len(pairs)
    w = got["rl_weight"]
    assert np.isfinite(w).all() and ((w > 0) & (w < 1)).all()
    # the weights in the database are the model's predictions
    first = dict(zip(zip(got["u"].tolist(), got["v"].tolist()), w.tolist()))

    # a second run reuses the model and writes the same weights
    again = EdgeRlStage(cfg).run()
    assert again["reused_model"]
    db = MongoDbGraphDatabase(mongo_uri, name, mode="r")
    got2 = db.read_edges_for_nodes(ids, attrs=["rl_weight"])
    db.close()
    second = dict(zip(zip(got2["u"].tolist(), got2["v"].tolist()), got2["rl_weight"].tolist()))
    assert second == pytest.approx(first)

    # a model trained elsewhere is applied without training (edge_rl.model)
    import shutil

    shutil.copy(out / "model.pt", tmp_path / "elsewhere.pt")
    applied = _stage_config(tmp_path, refs, mongo_uri, name, model=str(tmp_path / "elsewhere.pt"))
    EdgeRlStage(applied).check()
    assert EdgeRlStage(applied).run()["reused_model"]
    db = MongoDbGraphDatabase(mongo_uri, name, mode="r")
    got3 = db.read_edges_for_nodes(ids, attrs=["rl_weight"])
    db.close()
    third = dict(zip(zip(got3["u"].tolist(), got3["v"].tolist()), got3["rl_weight"].tolist()))
    assert third == pytest.approx(first)
    missing = _stage_config(tmp_path, refs, mongo_uri, name, model=str(tmp_path / "no.pt"))
    with pytest.raises(ConfigError, match="^edge_rl.model: no model"):
        EdgeRlStage(missing).check()

    # other settings without --restart are refused in one line; --restart retrains
    changed = _stage_config(tmp_path, refs, mongo_uri, name, seed=3)
    with pytest.raises(ConfigError, match="--restart"):
        EdgeRlStage(changed).run()
    assert not EdgeRlStage(changed).run(restart=True)["reused_model"]

    # 04 on rl_weight gives, at t = edge_rl.partition_threshold, exactly the partition the
    # policy was rewarded for (the training env's partitioner on the weights in the database)
    from marlseg.luts import load_lut
    from marlseg.partition import partition
    from marlseg.stages.segments import SegmentsStage

    db = MongoDbGraphDatabase(mongo_uri, name, mode="r")
    got = db.read_edges_for_nodes(ids, attrs=["rl_weight", "merge_score"])
    db.close()
    edges = np.stack([np.searchsorted(ids, got["u"]), np.searchsorted(ids, got["v"])], 1)

    def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
        return len(np.unique(np.stack([a, b], 1), axis=0)) == len(np.unique(a)) == len(np.unique(b))

    seg_cfg = cfg.model_copy(
        update={"segments": cfg.segments.model_copy(update={"edge_score": "rl_weight"})}
    )
    paths = SegmentsStage(seg_cfg).run()
    frag_ids, seg_ids = load_lut(paths[0.5])
    assert np.array_equal(frag_ids, ids) and "rl_weight" in paths[0.5].name
    trained_on = partition(16, edges, got["rl_weight"], cfg.edge_rl.partitioner, 0.5)
    assert same_partition(seg_ids, trained_on)
    # ... and not the one of merge_score (so a 04 that ignored rl_weight would fail above)
    assert not same_partition(trained_on, partition(16, edges, got["merge_score"], "mutex", 0.5))


def test_stage_check_errors(tmp_path):
    from marlseg.stages.edge_rl import EdgeRlStage

    cfg = load_config(None, [f"run.dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="02_extract_fragments"):
        EdgeRlStage(cfg).check()
    frag = np.ones((2, 8, 8), np.uint64)
    refs = _write_volumes(tmp_path, frag)
    cfg = _stage_config(tmp_path, refs, "mongodb://127.0.0.1:1", "x")
    no_raw = cfg.model_copy(update={"raw": None})
    with pytest.raises(ConfigError, match="^raw:"):
        EdgeRlStage(no_raw).check()
    with pytest.raises(ConfigError, match="edge_rl.subgraph_sizes"):
        load_config(None, ["edge_rl.subgraph_sizes=[6, 6]"])
    with pytest.raises(ConfigError, match="edge_rl.priors"):
        load_config(
            None,
            [
                'edge_rl.priors={"size": null, "elongation": null, "membrane": null, '
                '"tiny": null, "thickness": null, "bridge": null, "blob": null}'
            ],
        )
    with pytest.raises(ConfigError, match="edge_rl.priors.membrane.level"):
        load_config(None, ['edge_rl.priors.membrane={"level": "voxel"}'])
