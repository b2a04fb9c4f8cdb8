"""Reads from the RAG: ROI queries, chunked ``$in`` reads, the array API's reads and counts.

:class:`Reader` turns a ROI into node queries (whole on a real mongod, as ``cell`` ranges on
the embedded server, see :mod:`marlseg.db.cells`), reads the edges owned by a set of nodes
as range and ``$in`` queries, and returns numpy columns (:mod:`marlseg.db.columns`). Which
query shapes the server gets is the :class:`~marlseg.db.backend.Backend`'s to say. May import
pymongo, numpy, funlib and the modules of :mod:`marlseg.db` below it (base, cells, columns).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from funlib.geometry import Roi
from funlib.persistence.graphs.graph_database import AttributeType
from pymongo.collection import Collection

from .base import GraphBase
from .cells import cell_queries, roi_bounds
from .columns import Columns, as_ids, chunks, to_columns

MIN_RUN = 8
"""Consecutive ids read with one range query instead of ``$in``."""


class Reader(GraphBase):
    """Queries and the array API's reads (numpy out, no networkx)."""

    # ------------------------------------------------------------------ reading (core)
    def _find_nodes(
        self, roi: Roi | None, attr_filter: Mapping[str, Any] | None, fields: list[str]
    ) -> list[dict[str, Any]]:
        """Node documents (``fields`` only) whose position lies in ``roi`` (half-open) and
        whose attributes equal ``attr_filter``'s values.

        A real mongod gets the whole query and answers it from the compound position index.
        The embedded server's planner uses an index only for a query on a single field (a
        second field makes it scan the whole collection: seconds per block on a large RAG).
        There the ROI is read as ranges of the one-field ``cell`` key, one per (z, y) row of
        cells it touches (or, for a huge ROI, as its slab of ``center_z``, the position
        index's prefix), and the exact bounds and ``attr_filter`` are checked here."""
        conds: dict[str, dict[str, Any]] = {}
        for field, (b, e) in zip(self.position_fields, roi_bounds(roi)):
            cond: dict[str, Any] = {}
            if b is not None:
                cond["$gte"] = b
            if e is not None:
                cond["$lt"] = e
            if cond:
                conds[field] = cond
        attr_filter = dict(attr_filter or {})
        if self.backend.multi_field_queries or len(conds) + len(attr_filter) <= 1:
            return self._find(self.nodes, {**conds, **attr_filter}, fields)
        wanted = list(dict.fromkeys([*fields, *conds, *attr_filter]))
        docs: list[dict[str, Any]] = []
        for query in cell_queries(roi, conds, self.cell_nm):
            docs.extend(self._find(self.nodes, query, wanted))
        keep = []
        for d in docs:
            ok = all(d.get(k) == v for k, v in attr_filter.items())
            for f, cond in conds.items():
                if not ok:
                    break
                p = d.get(f)
                ok = p is not None and p >= cond.get("$gte", p) and p < cond.get("$lt", math.inf)
            if ok:
                keep.append({f: d[f] for f in fields if f in d})
        return keep

    def _node_fields(self, attrs: Iterable[str] | None) -> list[str]:
        names = list(self._node_specs) if attrs is None else list(attrs)
        fields = ["id", *self.position_fields]
        for a in names:
            if a == self.position_attribute:
                continue
            fields.append(a)
        return fields

    def _edge_fields(self, attrs: Iterable[str] | None) -> list[str]:
        names = list(self._edge_specs) if attrs is None else list(attrs)
        return ["u", "v", *[a for a in names if a not in ("u", "v")]]

    def _find(
        self, coll: Collection, query: Mapping[str, Any], fields: list[str]
    ) -> list[dict[str, Any]]:
        proj = {"_id": 0, **dict.fromkeys(fields, 1)}
        with self._errors(f"reading {coll.name}"):
            return list(coll.find(query, proj, batch_size=max(1000, self.batch_ops)))

    def _find_in(
        self,
        coll: Collection,
        field: str,
        ids: np.ndarray,
        fields: list[str],
        extra: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Rows whose ``field`` is in ``ids`` (and whose attributes equal ``extra``'s values).

        Runs of at least ``MIN_RUN`` consecutive ids become one range query each (a block's
        fragment ids are consecutive, so a block's edges are usually one query); the other
        ids go ``in_chunk`` per ``$in`` query. On the embedded server ``extra`` is checked
        here, as one more queried field would make it scan the whole collection."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        extra = dict(extra or {})
        server_extra, here = (extra, {}) if self.backend.multi_field_queries else ({}, extra)
        wanted = list(dict.fromkeys([*fields, *here]))
        queries: list[dict[str, Any]] = []
        breaks = np.flatnonzero(np.diff(ids) != 1) + 1
        loose: list[np.ndarray] = []
        for run in np.split(ids, breaks) if ids.size else []:
            if run.size >= MIN_RUN:
                queries.append({field: {"$gte": int(run[0]), "$lte": int(run[-1])}})
            else:
                loose.append(run)
        rest = np.concatenate(loose) if loose else ids[:0]
        for part in chunks(rest.size, self.backend.in_chunk):
            queries.append({field: {"$in": rest[part].tolist()}})
        out: list[dict[str, Any]] = []
        for query in queries:
            docs = self._find(coll, {**query, **server_extra}, wanted)
            if here:
                docs = [
                    {f: d[f] for f in fields if f in d}
                    for d in docs
                    if all(d.get(k) == v for k, v in here.items())
                ]
            out.extend(docs)
        return out

    def _node_specs_with_position(self) -> dict[str, AttributeType]:
        return {**self._node_specs, **dict.fromkeys(self.position_fields, float)}

    # ------------------------------------------------------------------ array API: reads
    def read_nodes_in_roi(self, roi: Roi | None, attrs: Iterable[str] | None = None) -> Columns:
        """Nodes whose centre lies in ``roi`` (half-open; ``None``: all) as columns: ``id``
        (uint64), ``center_z``, ``center_y``, ``center_x`` (nm), and ``attrs`` (default: all
        stored node attributes, e.g. ``size``)."""
        fields = self._node_fields(attrs)
        docs = self._find_nodes(roi, None, fields)
        return to_columns(docs, fields, self._node_specs_with_position())

    def read_node_ids(self, roi: Roi | None = None) -> np.ndarray:
        """All node ids (or those in ``roi``), uint64, sorted."""
        if roi is None:  # streamed: 8 bytes per node, never a list of documents
            with self._errors("reading nodes"):
                cursor = self.nodes.find({}, {"_id": 0, "id": 1}, batch_size=100_000)
                try:
                    ids = np.fromiter((d["id"] for d in cursor), dtype=np.int64)
                finally:
                    cursor.close()
            return np.sort(ids.astype(np.uint64))
        docs = self._find_nodes(roi, None, ["id"])
        return np.sort(np.asarray([d["id"] for d in docs], dtype=np.int64).astype(np.uint64))

    def read_edges_for_nodes(self, ids: Any, attrs: Iterable[str] | None = None) -> Columns:
        """Edges whose ``u`` is among ``ids`` (the ownership rule) as columns ``u``, ``v``
        (uint64) and ``attrs`` (default: all stored edge attributes; missing values NaN)."""
        fields = self._edge_fields(attrs)
        docs = self._find_in(self.edges, "u", as_ids(ids, "node ids"), fields)
        return to_columns(docs, fields, self._edge_specs)

    def read_edges_in_roi(self, roi: Roi | None, attrs: Iterable[str] | None = None) -> Columns:
        """Edges owned by ``roi``: those whose ``u`` lies in it."""
        if roi is None:
            fields = self._edge_fields(attrs)
            return to_columns(self._find(self.edges, {}, fields), fields, self._edge_specs)
        return self.read_edges_for_nodes(self.read_node_ids(roi), attrs)

    def iter_edges(
        self, batch_size: int = 100_000, attrs: Iterable[str] | None = ("merge_score",)
    ) -> Iterator[Columns]:
        """All edges, each exactly once, as column batches of at most ``batch_size`` rows
        (``u``, ``v`` uint64 and ``attrs``; a missing attribute is NaN).

        One server cursor in storage order, fetched ``batch_size`` rows at a time, so memory
        stays bounded however large the graph. (Paging by ``_id`` ranges would survive a
        server restart, but the embedded server answers an ``_id`` range with a collection
        scan per page: quadratic in the number of edges.) Run it when no stage is writing
        edges; the cursor is closed when the iterator is."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        fields = self._edge_fields(attrs)
        proj = {"_id": 0, **dict.fromkeys(fields, 1)}
        with self._errors("reading edges"):
            cursor = self.edges.find({}, proj, batch_size=batch_size)
            try:
                buf: list[dict[str, Any]] = []
                for doc in cursor:
                    buf.append(doc)
                    if len(buf) == batch_size:
                        yield to_columns(buf, fields, self._edge_specs)
                        buf = []
                if buf:
                    yield to_columns(buf, fields, self._edge_specs)
            finally:
                cursor.close()

    def count_nodes(self, roi: Roi | None = None) -> int:
        with self._errors("counting nodes"):
            if roi is None:
                return int(self.nodes.estimated_document_count())
            return len(self._find_nodes(roi, None, ["id"]))

    def count_edges(self) -> int:
        with self._errors("counting edges"):
            return int(self.edges.estimated_document_count())
