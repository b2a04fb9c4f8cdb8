"""The RAG store against a real server: round trips by ROI, idempotency, streaming, specs."""

from __future__ import annotations

import itertools
import multiprocessing as mp

import networkx as nx
import numpy as np
import pytest
from funlib.geometry import Roi
from funlib.persistence.graphs.graph_database import GraphDataBase
from funlib.persistence.types import Vec

from marlseg.db import DbError, MongoDbGraphDatabase
from marlseg.db.schema import META_ID

BLOCK = 100  # nm; a 2 x 2 x 2 grid of blocks covers [0, 200)^3
BLOCKS = [Roi((z, y, x), (BLOCK,) * 3) for z, y, x in itertools.product((0, BLOCK), repeat=3)]


def make_rag(n_nodes: int = 120, n_edges: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.arange(1, n_nodes + 1, dtype=np.uint64) * np.uint64(1000)  # not 0..n
    centers = rng.integers(0, 2 * BLOCK, size=(n_nodes, 3)).astype(np.float64)
    centers[:8] = [[b.begin[0], b.begin[1], b.begin[2]] for b in BLOCKS]  # on block corners
    sizes = rng.integers(1, 1000, size=n_nodes)
    pairs = set()
    while len(pairs) < n_edges:
        a, b = rng.choice(n_nodes, 2, replace=False)
        pairs.add((min(a, b), max(a, b)))
    pairs_arr = np.array(sorted(pairs))
    u, v = ids[pairs_arr[:, 0]], ids[pairs_arr[:, 1]]
    score = rng.random(n_edges)
    return ids, centers, sizes, u, v, score


def in_roi(centers: np.ndarray, roi: Roi) -> np.ndarray:
    return np.all((centers >= np.array(roi.begin)) & (centers < np.array(roi.end)), axis=1)


def test_array_round_trip_by_roi(graph_db: MongoDbGraphDatabase) -> None:
    ids, centers, sizes, u, v, score = make_rag()
    graph_db.write_nodes(ids, centers, sizes, label=np.arange(ids.size) % 3)
    # v-first on purpose: the store orders every edge as u < v
    graph_db.write_edges(v, u, merge_score=score, agglomerated=np.ones(u.size, dtype=bool))
    assert graph_db.count_nodes() == ids.size
    assert graph_db.count_edges() == u.size
    assert graph_db.node_attrs["label"] is int

    seen_nodes, seen_edges = [], []
    for roi in BLOCKS:
        nodes = graph_db.read_nodes_in_roi(roi)
        expect = in_roi(centers, roi)
        order = np.argsort(nodes["id"])
        assert nodes["id"].dtype == np.uint64
        np.testing.assert_array_equal(nodes["id"][order], ids[expect])
        got_centers = np.stack([nodes[f"center_{a}"] for a in "zyx"], axis=1)[order]
        np.testing.assert_array_equal(got_centers, centers[expect])
        np.testing.assert_array_equal(nodes["size"][order], sizes[expect])
        np.testing.assert_array_equal(nodes["label"][order], (np.arange(ids.size) % 3)[expect])

        edges = graph_db.read_edges_for_nodes(nodes["id"])
        owned = np.isin(u, ids[expect])  # the edges whose u lies in this block
        assert np.all(edges["u"] < edges["v"])
        got = {(a, b): s for a, b, s in zip(edges["u"], edges["v"], edges["merge_score"])}
        want = {(a, b): s for a, b, s in zip(u[owned], v[owned], score[owned])}
        assert got == want
        assert edges["agglomerated"].dtype == bool and edges["agglomerated"].all()
        by_roi = graph_db.read_edges_in_roi(roi, attrs=["merge_score"])
        assert set(zip(by_roi["u"], by_roi["v"])) == set(want)
        seen_nodes.extend(nodes["id"].tolist())
        seen_edges.extend(got)

    # the blocks partition the graph: every node and every edge read back exactly once
    assert sorted(seen_nodes) == ids.tolist()
    assert sorted(seen_edges) == sorted(zip(u.tolist(), v.tolist()))
    np.testing.assert_array_equal(graph_db.read_node_ids(), ids)


@pytest.mark.parametrize("cell_nm", [(1000, 1000, 1000), (30, 20, 40), (3, 3, 3)])
def test_roi_reads_match_brute_force(mongo_uri: str, graph_db, cell_nm) -> None:
    """Any ROI (unaligned, negative, on cell borders, unbounded) returns exactly the nodes
    inside it, whatever the spatial cell size (the last one forces the slab fallback)."""
    db = MongoDbGraphDatabase(mongo_uri, graph_db.db_name + "_c", mode="w", cell_nm=cell_nm)
    rng = np.random.default_rng(4)
    n = 300
    centers = rng.integers(-150, 150, size=(n, 3)).astype(np.float64) + rng.choice([0, 0.5], (n, 3))
    ids = np.arange(1, n + 1)
    db.write_nodes(ids, centers, np.ones(n))
    rois = [
        Roi(tuple(rng.integers(-160, 100, 3).tolist()), tuple(rng.integers(1, 120, 3).tolist()))
        for _ in range(8)
    ]
    rois += [Roi((-60, -60, -60), (60, 60, 60)), Roi((0, None, -10), (30, None, 20))]
    for roi in rois:
        got = np.sort(db.read_nodes_in_roi(roi, attrs=[])["id"].astype(np.int64))
        begin = np.array([-np.inf if b is None else b for b in roi.begin])
        end = np.array([np.inf if e is None else e for e in roi.end])
        want = ids[np.all((centers >= begin) & (centers < end), axis=1)]
        np.testing.assert_array_equal(got, want)
        assert db.count_nodes(roi) == want.size
    db.close()


def test_funlib_interface_round_trip(graph_db: MongoDbGraphDatabase) -> None:
    assert isinstance(graph_db, GraphDataBase)
    assert graph_db.node_attrs["center"] == Vec(float, 3)
    ids, centers, sizes, u, v, score = make_rag(40, 80, seed=1)
    graph = nx.Graph()
    for i, c, s in zip(ids.tolist(), centers, sizes.tolist()):
        graph.add_node(i, center=tuple(c.tolist()), size=s, ignored="not in the specs")
    for a, b, s in zip(v.tolist(), u.tolist(), score.tolist()):
        graph.add_edge(a, b, merge_score=s, agglomerated=False)
    for roi in BLOCKS:  # written block by block, as the workers do
        graph_db.write_graph(graph, roi)
    assert graph_db.count_nodes() == len(ids) and graph_db.count_edges() == len(u)

    for roi in BLOCKS:
        sub = graph_db[roi]  # GraphDataBase.__getitem__ -> read_graph
        inside = {n for n, d in graph.nodes(data=True) if in_roi(np.array([d["center"]]), roi)[0]}
        assert {n for n, d in sub.nodes(data=True) if "center" in d} == inside
        for n in inside:
            assert sub.nodes[n]["center"] == graph.nodes[n]["center"]
            assert sub.nodes[n]["size"] == graph.nodes[n]["size"]
            assert "ignored" not in sub.nodes[n]
        owned = {(min(a, b), max(a, b)) for a, b in graph.edges() if min(a, b) in inside}
        assert {(min(a, b), max(a, b)) for a, b in sub.edges()} == owned
        for a, b in owned:
            assert sub.edges[a, b]["merge_score"] == graph.edges[a, b]["merge_score"]

    # write_attrs: only the named attribute changes, nothing is created
    for a, b in graph.edges():
        graph.edges[a, b]["merge_score"] = -1.0
        graph.edges[a, b]["agglomerated"] = True
    a, b = next(p for p in itertools.combinations(ids.tolist(), 2) if not graph.has_edge(*p))
    graph.add_edge(a, b, merge_score=5.0)  # not stored: must stay absent
    graph_db.write_attrs(graph, edge_attrs=["merge_score"])
    edges = graph_db.read_edges(read_attrs=["merge_score", "agglomerated"])
    assert len(edges) == len(u)
    assert [e for e in edges if not (e["merge_score"] == -1.0 and e["agglomerated"] is False)] == []

    nodes = graph_db.read_nodes(BLOCKS[0], read_attrs=["size"])
    assert nodes and all(set(n) == {"id", "center", "size"} for n in nodes)
    some = nodes[0]
    found = graph_db.read_nodes(BLOCKS[0], attr_filter={"size": some["size"]})
    assert some["id"] in [n["id"] for n in found]
    assert all(n["size"] == some["size"] for n in found)
    assert all(in_roi(np.array([n["center"]]), BLOCKS[0])[0] for n in found)


@pytest.mark.parametrize(
    ("strategy", "transactions"), [("insert_first", None), ("upsert", None), ("upsert", False)]
)
def test_double_write_is_idempotent(
    mongo_uri: str, graph_db, strategy: str, transactions: bool | None
) -> None:
    db = MongoDbGraphDatabase(
        mongo_uri, graph_db.db_name, write_strategy=strategy, transactions=transactions
    )
    assert db.backend.transactions is (transactions is None)  # the test server is a replica set
    ids, centers, sizes, u, v, score = make_rag(60, 150, seed=2)
    block = in_roi(centers, BLOCKS[0])
    own = np.isin(u, ids[block])
    for rep in range(2):  # a block retried after a crash writes everything again
        db.write_nodes(ids[block], centers[block], sizes[block] + rep)
        db.write_edges(u[own], v[own], merge_score=score[own] + rep)
    # and a neighbour overlapping it: one shared node, one shared edge
    db.write_nodes(ids[~block][:5], centers[~block][:5], sizes[~block][:5])
    db.write_nodes(ids[block][:1], centers[block][:1], [7])
    db.write_edges(u[own][:1], v[own][:1], merge_score=[0.5], rl_weight=[2.0])

    assert db.count_nodes() == block.sum() + 5
    assert db.count_edges() == own.sum()
    nodes = db.read_nodes_in_roi(None)
    assert len(np.unique(nodes["id"])) == len(nodes["id"]) == block.sum() + 5
    got = dict(zip(nodes["id"].tolist(), nodes["size"].tolist()))
    assert got[int(ids[block][0])] == 7  # the latest write wins
    assert got[int(ids[block][1])] == int(sizes[block][1]) + 1
    edges = db.read_edges_for_nodes(ids, attrs=["merge_score", "rl_weight"])
    assert len(set(zip(edges["u"], edges["v"]))) == len(edges["u"]) == own.sum()
    first = (edges["u"] == u[own][0]) & (edges["v"] == v[own][0])
    assert edges["merge_score"][first] == [0.5] and edges["rl_weight"][first] == [2.0]
    assert np.isnan(edges["rl_weight"][~first]).all()  # never written: NaN
    db.close()


def test_edges_are_normalised_and_validated(graph_db: MongoDbGraphDatabase) -> None:
    graph_db.write_edges([5, 2], [3, 9], merge_score=[0.1, 0.2])
    graph_db.write_edges([3], [5], merge_score=[0.3])  # the same edge, other way round
    edges = graph_db.read_edges_in_roi(None)
    assert sorted(zip(edges["u"].tolist(), edges["v"].tolist(), edges["merge_score"])) == [
        (2, 9, 0.2),
        (3, 5, 0.3),
    ]
    with pytest.raises(ValueError, match="self loops"):
        graph_db.write_edges([4], [4])
    with pytest.raises(ValueError, match="2\\*\\*63"):
        graph_db.write_nodes(np.array([2**63], dtype=np.uint64), [[0, 0, 0]], [1])


def test_iter_edges_streams_every_edge_once(graph_db: MongoDbGraphDatabase) -> None:
    n = 1000
    rng = np.random.default_rng(3)
    u = np.arange(1, n + 1, dtype=np.uint64)
    v = u + np.uint64(1) + rng.integers(0, 50, n).astype(np.uint64)
    score = rng.random(n)
    graph_db.write_edges(u[:700], v[:700], merge_score=score[:700])
    graph_db.write_edges(u[700:], v[700:])  # no score: must stream as NaN
    sizes, seen = [], []
    for batch in graph_db.iter_edges(batch_size=64, attrs=["merge_score"]):
        assert set(batch) == {"u", "v", "merge_score"}
        sizes.append(batch["u"].size)
        seen.extend(zip(batch["u"].tolist(), batch["v"].tolist(), batch["merge_score"].tolist()))
    assert max(sizes) <= 64 and sum(sizes) == n and len(sizes) == -(-n // 64)
    assert len({(a, b) for a, b, _ in seen}) == n
    got = {(a, b): s for a, b, s in seen}
    for a, b, s in zip(u.tolist()[:700], v.tolist()[:700], score[:700]):
        assert got[a, b] == s
    assert all(np.isnan(got[a, b]) for a, b in zip(u.tolist()[700:], v.tolist()[700:]))
    assert list(graph_db.iter_edges(batch_size=n)) and len(list(graph_db.iter_edges(n))) == 1


def test_write_edge_attrs(graph_db: MongoDbGraphDatabase) -> None:
    graph_db.write_edges([1, 2, 3], [2, 3, 4], merge_score=[0.1, 0.2, 0.3])
    matched = graph_db.write_edge_attrs([3, 2, 9], [2, 1, 10], "rl_weight", [0.5, 0.25, 9.0])
    assert matched == 2  # (9, 10) does not exist and is not created
    assert graph_db.count_edges() == 3
    assert graph_db.edge_attrs["rl_weight"] is float
    edges = graph_db.read_edges_for_nodes([1, 2, 3], attrs=["rl_weight", "merge_score"])
    got = dict(zip(zip(edges["u"].tolist(), edges["v"].tolist()), edges["rl_weight"].tolist()))
    assert got[1, 2] == 0.25 and got[2, 3] == 0.5 and np.isnan(got[3, 4])
    # a new process sees the spec the first one registered
    again = MongoDbGraphDatabase(graph_db.uri, graph_db.db_name, mode="r")
    assert again.edge_attrs["rl_weight"] is float
    again.close()


def test_in_lists_are_chunked(mongo_uri: str, graph_db: MongoDbGraphDatabase) -> None:
    """Consecutive ids are read as ranges, scattered ones in chunked $in lists; both exact."""
    db = MongoDbGraphDatabase(mongo_uri, graph_db.db_name, in_chunk=7, batch_ops=13)
    u = np.concatenate([np.arange(1, 101), np.arange(1000, 1400, 7), [5000, 5001, 5002]])
    db.write_edges(u, u + 100_000, merge_score=u / 100, agglomerated=u % 2 == 0)
    asked = np.concatenate([u[::2], u[::2], [99_999]])  # duplicates and a stranger
    edges = db.read_edges_for_nodes(asked)
    assert sorted(edges["u"].tolist()) == sorted(set(u[::2].tolist()))
    found = db.read_edges(nodes=[{"id": int(i)} for i in u], attr_filter={"agglomerated": True})
    assert sorted(e["u"] for e in found) == sorted(u[u % 2 == 0].tolist())
    db.close()


def test_open_modes_and_schema_version(mongo_uri: str, graph_db: MongoDbGraphDatabase) -> None:
    graph_db.write_nodes([1], [[1.0, 2.0, 3.0]], [4])
    reader = MongoDbGraphDatabase(mongo_uri, graph_db.db_name, mode="r")
    with pytest.raises(RuntimeError, match="read-only"):
        reader.write_nodes([2], [[0, 0, 0]], [1])
    reader.close()

    with pytest.raises(DbError, match="has no RAG") as info:
        MongoDbGraphDatabase(mongo_uri, graph_db.db_name + "_none", mode="r")
    assert "\n" not in str(info.value)

    with pytest.raises(DbError, match="stored as int, not float"):
        MongoDbGraphDatabase(mongo_uri, graph_db.db_name, node_attrs={"size": float})

    graph_db.meta.update_one({"_id": META_ID}, {"$set": {"schema_version": 99}})
    with pytest.raises(DbError) as info:
        MongoDbGraphDatabase(mongo_uri, graph_db.db_name)
    msg = str(info.value)
    assert "\n" not in msg and "schema version 99" in msg and graph_db.db_name in msg
    host = mongo_uri.split("//")[1].split("/")[0].split("@")[-1]
    assert host in msg


def test_geometry_is_stored_and_checked(mongo_uri: str, graph_db: MongoDbGraphDatabase) -> None:
    roi = Roi((0, 0, 0), (400, 800, 800))
    db = MongoDbGraphDatabase(mongo_uri, graph_db.db_name, total_roi=roi, voxel_size=(40, 8, 8))
    db.close()
    db = MongoDbGraphDatabase(mongo_uri, graph_db.db_name, mode="r")
    assert db.total_roi == roi and db.voxel_size == (40, 8, 8)
    db.close()
    with pytest.raises(DbError, match="voxel size"):
        MongoDbGraphDatabase(mongo_uri, graph_db.db_name, voxel_size=(4, 4, 4))


def test_clear_keeps_meta_and_indexes(graph_db: MongoDbGraphDatabase) -> None:
    graph_db.write_nodes([1, 2], [[0, 0, 0], [1, 1, 1]], [1, 1], label=[1, 2])
    graph_db.write_edges([1], [2])
    graph_db.clear()
    assert graph_db.count_nodes() == 0 and graph_db.count_edges() == 0
    assert "label" in graph_db.node_attrs
    names = {ix["name"] for ix in graph_db.edges.list_indexes()}
    assert "u_v_unique" in names
    graph_db.write_edges([1, 1], [2, 2])  # a duplicate within one call: one row
    assert graph_db.count_edges() == 1


# ------------------------------------------------------------------------ concurrent writers
WRITERS = 4
OWN, SHARED = 40, 20  # per writer: its own nodes, and nodes every writer also writes


def _concurrent_writer(uri: str, name: str, k: int) -> None:
    db = MongoDbGraphDatabase(uri, name)
    own = np.arange(OWN) + 1000 * (k + 1)
    shared = np.arange(1, SHARED + 1)
    ids = np.concatenate([shared, own])
    # the halves are written in opposite orders by odd and even writers, and twice
    for part in (np.array_split(ids, 2) * 2)[:: 1 if k % 2 else -1]:
        db.write_nodes(part, np.full((part.size, 3), float(k)), np.full(part.size, k))
        db.write_edges(part, part + 100_000, merge_score=np.full(part.size, float(k)))
    db.close()


@pytest.mark.slow
def test_concurrent_writers_land_every_row_once(mongo_uri: str, graph_db) -> None:
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_concurrent_writer, args=(mongo_uri, graph_db.db_name, k))
        for k in range(WRITERS)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    n = SHARED + WRITERS * OWN
    assert graph_db.count_nodes() == n and graph_db.count_edges() == n
    nodes = graph_db.read_nodes_in_roi(None)
    want = np.concatenate(
        [np.arange(1, SHARED + 1)] + [np.arange(OWN) + 1000 * (k + 1) for k in range(WRITERS)]
    )
    np.testing.assert_array_equal(np.sort(nodes["id"]), np.sort(want).astype(np.uint64))
    edges = graph_db.read_edges_in_roi(None)
    assert len(set(zip(edges["u"].tolist(), edges["v"].tolist()))) == n
    # an own row carries its writer's values; a shared one those of one of the writers
    size = dict(zip(nodes["id"].tolist(), nodes["size"].tolist()))
    assert all(size[1000 * (k + 1)] == k for k in range(WRITERS))
    assert {size[i] for i in range(1, SHARED + 1)} <= set(range(WRITERS))
