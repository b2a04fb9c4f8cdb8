"""``04_find_segments.py``: fragment -> segment lookup tables (LUTs), one per threshold.

For each ``segments.thresholds`` value ``t``, the fragments joined by RAG edges whose
``segments.edge_score`` (``merge_score`` from ``03_agglomerate.py``, or a learned weight) is
``<= t`` form one segment: its connected components. The result is one LUT per threshold,
``run.dir/luts/<edge_score>_<t>.npz`` with the aligned arrays ``fragment_ids`` (sorted, every
RAG node) and ``segment_ids``; a segment's id is the smallest fragment id in it, so the LUT
does not depend on the order edges come in, and a fragment without merges keeps its own id.

Memory model. The whole volume is one problem here (a component can span it), but the
edges are never held: they are streamed from MongoDB in batches (``iter_edges``) and folded
into a union-find per threshold. What stays in memory is

* the sorted node ids (8 bytes per fragment) and, per threshold, a parent array (4 bytes per
  fragment while there are fewer than 2^31, else 8);
* one batch of edges (``BATCH`` of them: ~300 bytes each as pymongo documents, then 20 as
  ``u``, ``v``, score).

The union-find is :class:`marlseg.luts.Components` (vectorised, see :mod:`marlseg.luts`).

Scale: 10^9 edges come with ~10^8 fragments (a RAG has ~5-10 edges per node), i.e. 0.8 GB of
ids plus 0.4 GB per threshold (3.6 GB for nine) and ~30 MB per batch: one machine,
one pass over the edge collection (the cost is MongoDB's read throughput, ~10^6 edges/s per
cursor, so ~20 min). Past that, process thresholds in groups (one pass each) or shard the
edge stream by ``u`` range over workers that each emit (root, root) pairs, and union those.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from marlseg.errors import ConfigError, MarlsegError
from marlseg.luts import connected_luts, lut_path, save_lut
from marlseg.segment_methods import mutex_luts, segments_method
from marlseg.stage import Stage

BATCH = 100_000
"""Edges per batch read from the database. A batch passes through pymongo as documents
(~300 bytes per edge), so this bounds the stage's transient memory (~30 MB); larger batches
buy no throughput (``benchmarks/segments_memory.py``)."""


# --------------------------------------------------------------------------- the stage


class SegmentsStage(Stage):
    """Fragment-to-segment lookup tables per threshold (connected components of the RAG)."""

    name = "segments"

    def check(self) -> None:
        super().check()
        from marlseg.rag import check_graph_db

        if not self.config.segments.thresholds:
            raise ConfigError("segments.thresholds", "at least one threshold is needed")
        segments_method(self.config)
        check_graph_db(self.config)

    def run(self, restart: bool = False) -> dict[float, Path]:
        from marlseg.rag import graph_service, open_rag

        cfg = self.config
        attr = cfg.segments.edge_score
        t0 = time.perf_counter()
        with graph_service(cfg) as uri:
            rag = open_rag(cfg, uri)
            try:
                node_ids = rag.read_node_ids()
                if node_ids.size == 0:
                    raise ConfigError(
                        "db",
                        f"the RAG in {cfg.db.name!r} has no nodes: run 02_extract_fragments.py first",
                    )
                n_edges = 0
                n_scored = 0

                def batches():
                    nonlocal n_edges, n_scored
                    for batch in rag.iter_edges(batch_size=BATCH, attrs=[attr]):
                        u, v, score = batch["u"], batch["v"], batch[attr]
                        score = np.asarray(score, dtype=np.float64)
                        n_edges += len(u)
                        # an edge without the attribute (NaN) never merges
                        n_scored += int(np.count_nonzero(~np.isnan(score)))
                        yield u, v, np.nan_to_num(score, nan=np.inf)

                method = segments_method(cfg)
                try:
                    if method == "mutex":
                        luts = mutex_luts(node_ids, batches(), cfg.segments.thresholds)
                    else:
                        luts = connected_luts(node_ids, batches(), cfg.segments.thresholds)
                except KeyError as e:  # an edge to a fragment without a node
                    raise MarlsegError(
                        "db",
                        f"the RAG {cfg.db.name!r} is inconsistent: {e.args[0]}; rerun "
                        "02_extract_fragments.py and 03_agglomerate.py with --restart",
                    ) from None
            finally:
                rag.close()
        if n_edges and not n_scored:
            raise ConfigError(
                "segments.edge_score",
                f"no edge has the attribute {attr!r} (run the stage that writes it)",
            )
        paths: dict[float, Path] = {}
        rows = []
        for t, (frag, seg) in luts.items():
            path = lut_path(cfg, t)
            save_lut(path, frag, seg)
            paths[t] = path
            rows.append((t, int(np.unique(seg).size)))
        wall = time.perf_counter() - t0
        print(f"\nsegments: {node_ids.size} fragments, {n_edges} edges ({attr}), {wall:.1f} s")
        print(f"  partitioned by {method}")
        print(f"  {'threshold':>9}  {'segments':>9}")
        for t, n in rows:
            print(f"  {t:>9.3f}  {n:>9}")
        print(f"  LUTs in {lut_path(cfg, 0).parent}", flush=True)
        return paths
