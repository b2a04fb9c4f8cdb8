"""Write and read rates of the RAG store against raw ``insert_many``, on one fresh server.

A synthetic RAG of ``--nodes`` N nodes and about 6N edges on a grid of blocks is written block
by block, as the fragments and agglomerate workers write it, twice in the same run on the same
server: through :class:`marlseg.db.MongoDbGraphDatabase` (idempotent upserts, insert-first)
and through raw ``insert_many`` into collections with the schema's indexes (the fastest possible
load, not idempotent). Store and raw writes alternate block by block so that both see the same
machine load. Then: re-writing blocks (the upsert path a resumed block takes), the pure
``UpdateOne(upsert=True)`` strategy, ``write_edge_attrs``, streaming all edges, and reading
random block ROIs (nodes in the ROI and the edges they own).

    python benchmarks/rag_store.py                  # N = 20000: minutes on the embedded server
    python benchmarks/rag_store.py --nodes 2000     # a quick look
    python benchmarks/rag_store.py --uri mongodb://host:27017   # another server

The embedded server is a fresh ``secantusd-py --sync-on-commit`` in a temporary directory, as
marlseg runs it. The goal: the store writes at >= 60% of the raw rate.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from funlib.geometry import Roi

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from marlseg.db import EmbeddedServer, MongoDbGraphDatabase  # noqa: E402

BLOCK_NM = 1000
GOAL = 0.60


def synthetic_rag(n_nodes: int, blocks: int, edges_per_node: int, seed: int = 0) -> dict[str, Any]:
    """Nodes uniform in a ``blocks``^3 grid of 1 um blocks, ids block-major (as the fragment
    ids are), and ~``edges_per_node`` * N edges between nearby ids, u < v."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, blocks * BLOCK_NM, size=(n_nodes, 3))
    block = (pos // BLOCK_NM).astype(np.int64)
    flat = (block[:, 0] * blocks + block[:, 1]) * blocks + block[:, 2]
    order = np.argsort(flat, kind="stable")
    pos, flat = pos[order], flat[order]
    ids = np.arange(1, n_nodes + 1, dtype=np.uint64)
    sizes = rng.integers(10, 5000, n_nodes)
    want = edges_per_node * n_nodes
    i = rng.integers(0, n_nodes, 2 * want)
    j = np.clip(i + rng.integers(1, 40, 2 * want), 0, n_nodes - 1)
    pairs = np.unique(np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = pairs[rng.permutation(len(pairs))[:want]]
    pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
    return {
        "ids": ids,
        "pos": pos,
        "sizes": sizes,
        "block_of_node": flat,
        "u": ids[pairs[:, 0]],
        "v": ids[pairs[:, 1]],
        "block_of_edge": flat[pairs[:, 0]],  # an edge belongs to the block owning u
        "score": rng.random(len(pairs)),
        "n_blocks": blocks**3,
    }


def block_rows(rag: dict[str, Any], b: int) -> tuple[np.ndarray, np.ndarray]:
    return rag["block_of_node"] == b, rag["block_of_edge"] == b


def raw_docs(rag: dict[str, Any], nsel: np.ndarray, esel: np.ndarray) -> tuple[list, list]:
    """The same rows as plain documents (built outside the timed region: the raw baseline
    is the bare ``insert_many``)."""
    p = rag["pos"][nsel]
    nodes = [
        {"id": i, "center_z": z, "center_y": y, "center_x": x, "size": s}
        for i, (z, y, x), s in zip(
            rag["ids"][nsel].astype(np.int64).tolist(), p.tolist(), rag["sizes"][nsel].tolist()
        )
    ]
    edges = [
        {"u": a, "v": b, "merge_score": s, "agglomerated": True}
        for a, b, s in zip(
            rag["u"][esel].astype(np.int64).tolist(),
            rag["v"][esel].astype(np.int64).tolist(),
            rag["score"][esel].tolist(),
        )
    ]
    return nodes, edges


def store_write(db: MongoDbGraphDatabase, rag: dict[str, Any], b: int) -> int:
    nsel, esel = block_rows(rag, b)
    db.write_nodes(rag["ids"][nsel], rag["pos"][nsel], rag["sizes"][nsel])
    db.write_edges(
        rag["u"][esel],
        rag["v"][esel],
        merge_score=rag["score"][esel],
        agglomerated=np.ones(int(esel.sum()), dtype=bool),
    )
    return int(nsel.sum() + esel.sum())


def rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:8.0f} rows/s ({rows} rows in {seconds:.1f} s)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", type=int, default=20000, help="nodes N (edges: ~6N)")
    ap.add_argument("--edges-per-node", type=int, default=6)
    ap.add_argument("--blocks", type=int, default=4, help="blocks per side of the grid")
    ap.add_argument(
        "--rois",
        type=int,
        default=50,
        help="random grid blocks to read (and 1/5 as many unaligned)",
    )
    ap.add_argument("--rewrite-blocks", type=int, default=2, help="blocks written again")
    ap.add_argument("--attr-edges", type=int, default=2000, help="edges for write_edge_attrs")
    ap.add_argument("--batch-ops", type=int, default=None, help="the store's rows per bulk")
    ap.add_argument("--uri", default=None, help="use this server instead of a fresh embedded one")
    args = ap.parse_args()

    rag = synthetic_rag(args.nodes, args.blocks, args.edges_per_node)
    n_rows = len(rag["ids"]) + len(rag["u"])
    print(
        f"synthetic RAG: {len(rag['ids'])} nodes, {len(rag['u'])} edges, "
        f"{rag['n_blocks']} blocks of {BLOCK_NM} nm"
    )
    with tempfile.TemporaryDirectory(prefix="rag_store_bench_") as tmp:
        server = None
        uri = args.uri
        if uri is None:
            server = EmbeddedServer(Path(tmp) / "db")
            t = time.perf_counter()
            server.start()
            print(f"embedded server (--sync-on-commit) up in {time.perf_counter() - t:.1f} s")
        try:
            run(uri or server.uri, rag, n_rows, args)  # type: ignore[union-attr]
        finally:
            if server is not None:
                server.stop()


def run(uri: str, rag: dict[str, Any], n_rows: int, args: argparse.Namespace) -> None:
    tag = uuid.uuid4().hex[:8]
    kw = {} if args.batch_ops is None else {"batch_ops": args.batch_ops}
    store = MongoDbGraphDatabase(uri, f"bench_store_{tag}", mode="w", **kw)
    raw_db = store.client[f"bench_raw_{tag}"]
    raw_nodes, raw_edges = raw_db["nodes"], raw_db["edges"]
    # the schema's indexes (the store has these and its one-field `cell` key), created
    # before loading as the store does
    raw_nodes.create_index("id", unique=True)
    raw_nodes.create_index([("center_z", 1), ("center_y", 1), ("center_x", 1)])
    raw_edges.create_index([("u", 1), ("v", 1)], unique=True)

    # ---------------------------------------------------------------- fresh writes
    t_store = t_raw = 0.0
    for b in range(rag["n_blocks"]):
        nsel, esel = block_rows(rag, b)
        nodes, edges = raw_docs(rag, nsel, esel)
        t = time.perf_counter()
        store_write(store, rag, b)
        t_store += time.perf_counter() - t
        t = time.perf_counter()
        if nodes:
            raw_nodes.insert_many(nodes, ordered=False)
        if edges:
            raw_edges.insert_many(edges, ordered=False)
        t_raw += time.perf_counter() - t
    assert store.count_nodes() == len(rag["ids"]) and store.count_edges() == len(rag["u"])
    assert raw_nodes.count_documents({}) == len(rag["ids"])
    r_store, r_raw = n_rows / t_store, n_rows / t_raw
    print("\nwrites, block by block (nodes + edges):")
    print(f"  store (idempotent upsert) {rate(n_rows, t_store)}")
    print(f"  raw insert_many           {rate(n_rows, t_raw)}")
    verdict = "meets" if r_store >= GOAL * r_raw else "BELOW"
    print(f"  ratio store / raw         {r_store / r_raw:8.2f}   ({verdict} the {GOAL:.0%} goal)")

    # ---------------------------------------------------------------- the upsert paths
    rows = 0
    t = time.perf_counter()
    for b in range(min(args.rewrite_blocks, rag["n_blocks"])):
        rows += store_write(store, rag, b)
    t_re = time.perf_counter() - t
    assert store.count_nodes() == len(rag["ids"]) and store.count_edges() == len(rag["u"])
    print(f"  store, blocks written again (all rows exist)   {rate(rows, t_re)}")
    ups = MongoDbGraphDatabase(uri, f"bench_upsert_{tag}", mode="w", write_strategy="upsert")
    rows = 0
    t = time.perf_counter()
    for b in range(min(args.rewrite_blocks, rag["n_blocks"])):
        rows += store_write(ups, rag, b)
    print(
        f"  write_strategy='upsert', fresh blocks           {rate(rows, time.perf_counter() - t)}"
    )
    ups.close()

    k = min(args.attr_edges, len(rag["u"]))
    t = time.perf_counter()
    matched = store.write_edge_attrs(rag["u"][:k], rag["v"][:k], "rl_weight", np.ones(k))
    assert matched == k
    print(f"  write_edge_attrs                                {rate(k, time.perf_counter() - t)}")

    # ---------------------------------------------------------------- reads
    t = time.perf_counter()
    streamed = sum(batch["u"].size for batch in store.iter_edges(batch_size=10_000))
    t_it = time.perf_counter() - t
    assert streamed == len(rag["u"])
    print(f"\nstreaming all edges (iter_edges, 10k/batch)     {rate(streamed, t_it)}")

    rng = np.random.default_rng(1)
    world = args.blocks * BLOCK_NM
    aligned = [
        Roi(tuple(int(c) * BLOCK_NM for c in rng.integers(0, args.blocks, 3)), (BLOCK_NM,) * 3)
        for _ in range(args.rois)
    ]
    unaligned = [
        Roi(tuple(int(o) for o in rng.integers(0, world - BLOCK_NM + 1, 3)), (BLOCK_NM,) * 3)
        for _ in range(max(1, args.rois // 5))
    ]
    for label, rois in (("random grid blocks", aligned), ("random offsets", unaligned)):
        lat_nodes, lat_all, n_nodes, n_edges = [], [], [], []
        for roi in rois:
            t = time.perf_counter()
            nodes = store.read_nodes_in_roi(roi)
            t_n = time.perf_counter() - t
            edges = store.read_edges_for_nodes(nodes["id"])
            lat_all.append(time.perf_counter() - t)
            lat_nodes.append(t_n)
            n_nodes.append(nodes["id"].size)
            n_edges.append(edges["u"].size)
        print(
            f"read by ROI, {len(rois)} {label} of {BLOCK_NM} nm (~{np.mean(n_nodes):.0f} nodes "
            f"+ ~{np.mean(n_edges):.0f} owned edges each):"
        )
        for what, lat in (("nodes only", lat_nodes), ("nodes + edges", lat_all)):
            print(
                f"  {what:14s} median {1000 * statistics.median(lat):7.1f} ms   "
                f"p90 {1000 * np.percentile(lat, 90):7.1f} ms"
            )
    store.close()


if __name__ == "__main__":
    main()
