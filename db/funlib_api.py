"""funlib.persistence's ``GraphDataBase`` interface over the RAG, in networkx graphs and dicts.

:class:`FunlibGraph` is what funlib-style callers use (``read_graph`` / ``write_graph`` /
``write_attrs`` / ``read_nodes`` / ``read_edges`` / ``num_nodes`` / ``has_edges``): the
position is one node attribute (``center``, a ``Vec(float, 3)``, ``(z, y, x)``), stored as
the three ``center_*`` fields, and the ownership rule of :mod:`marlseg.db.graph` decides what
a ROI reads and writes. It is built on the reads and writes of the array API. May import
networkx, funlib, numpy and the modules of :mod:`marlseg.db` below it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from funlib.geometry import Roi
from funlib.persistence.graphs.graph_database import GraphDataBase
from networkx import Graph
from pymongo.collection import Collection

from .cells import CELL_FIELD, cell_keys, in_roi
from .columns import chunks, plain
from .reads import Reader
from .writes import Writer


class FunlibGraph(Writer, Reader, GraphDataBase):
    """funlib's graph database interface (dicts and networkx in and out)."""

    def read_nodes(
        self,
        roi: Roi | None = None,
        attr_filter: Mapping[str, Any] | None = None,
        read_attrs: list[str] | None = None,
        join_collection: str | None = None,
    ) -> list[dict[str, Any]]:
        """funlib: nodes in ``roi`` as dicts ``{"id", <position attribute>: (z, y, x), ...}``."""
        if join_collection is not None:
            raise NotImplementedError("join_collection is not supported")
        fields = self._node_fields(read_attrs)
        docs = self._find_nodes(roi, attr_filter, fields)
        pos = self.position_fields
        out = []
        for d in docs:
            node = {"id": d["id"], self.position_attribute: tuple(d.get(f) for f in pos)}
            for f in fields[1 + len(pos) :]:
                node[f] = d.get(f)
            out.append(node)
        return out

    def num_nodes(self, roi: Roi) -> int:
        return self.count_nodes(roi)

    def has_edges(self, roi: Roi) -> bool:
        return self.read_edges_in_roi(roi, attrs=[])["u"].size > 0

    def read_edges(
        self,
        roi: Roi | None = None,
        nodes: list[dict[str, Any]] | None = None,
        attr_filter: Mapping[str, Any] | None = None,
        read_attrs: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """funlib: edges whose ``u`` is among ``nodes`` (default: the nodes in ``roi``)."""
        fields = self._edge_fields(read_attrs)
        if nodes is None and roi is None:
            docs = self._find(self.edges, dict(attr_filter or {}), fields)
        else:
            if nodes is None:
                ids = self.read_node_ids(roi)
            else:
                ids = np.asarray([n["id"] for n in nodes], dtype=np.int64)
            docs = self._find_in(self.edges, "u", ids, fields, attr_filter)
        return [{f: d.get(f) for f in fields} for d in docs]

    def read_graph(
        self,
        roi: Roi | None = None,
        read_edges: bool = True,
        node_attrs: list[str] | None = None,
        edge_attrs: list[str] | None = None,
        nodes_filter: Mapping[str, Any] | None = None,
        edges_filter: Mapping[str, Any] | None = None,
    ) -> Graph:
        """funlib: the nodes in ``roi`` and the edges they own, as a networkx ``Graph``."""
        graph = Graph()
        nodes = self.read_nodes(roi, attr_filter=nodes_filter, read_attrs=node_attrs)
        graph.add_nodes_from((n["id"], {k: x for k, x in n.items() if k != "id"}) for n in nodes)
        if read_edges:
            edges = self.read_edges(
                roi, nodes=nodes, attr_filter=edges_filter, read_attrs=edge_attrs
            )
            graph.add_edges_from(
                (e["u"], e["v"], {k: x for k, x in e.items() if k not in ("u", "v")}) for e in edges
            )
        return graph

    def _graph_node_rows(
        self, graph: Graph, roi: Roi | None, attrs: list[str] | None
    ) -> list[dict[str, Any]]:
        names = [
            a
            for a in (list(self._node_specs) if attrs is None else attrs)
            if a != self.position_attribute
        ]
        rows = []
        for node, data in graph.nodes(data=True):
            pos = data.get(self.position_attribute)
            if roi is not None and not in_roi(pos, roi):
                continue
            row: dict[str, Any] = {"id": int(node)}
            if pos is not None:
                row.update(zip(self.position_fields, (float(p) for p in pos)))
                row[CELL_FIELD] = int(cell_keys(np.asarray(pos), self.cell_nm)[0])
            row.update(plain(data, names))
            rows.append(row)
        return rows

    def _graph_edge_rows(
        self, graph: Graph, roi: Roi | None, attrs: list[str] | None
    ) -> list[dict[str, Any]]:
        names = list(self._edge_specs) if attrs is None else attrs
        rows = []
        for a, b, data in graph.edges(data=True):
            u, v = (int(a), int(b)) if int(a) < int(b) else (int(b), int(a))
            if u == v:
                raise ValueError("self loops (u == v) are not edges of a RAG")
            if roi is not None and not in_roi(graph.nodes[u].get(self.position_attribute), roi):
                continue  # owned by the block that owns u
            rows.append({"u": u, "v": v, **plain(data, names)})
        return rows

    def write_graph(
        self,
        graph: Graph,
        roi: Roi | None = None,
        write_nodes: bool = True,
        write_edges: bool = True,
        node_attrs: list[str] | None = None,
        edge_attrs: list[str] | None = None,
        fail_if_exists: bool = False,
        delete: bool = False,
    ) -> None:
        """funlib: write the nodes of ``graph`` inside ``roi`` and the edges whose ``u`` is
        inside it (upserts). Attributes are those of the specs (or ``node_attrs`` /
        ``edge_attrs``); a ``None`` value is left out rather than stored. ``delete`` first
        removes the nodes in ``roi`` and their edges; ``fail_if_exists`` refuses rows that
        are already stored (plain insert) instead of updating them."""
        self._check_writable()
        if delete:
            ids = self.read_node_ids(roi)
            with self._errors("deleting the ROI"):
                for part in chunks(ids.size, self.backend.in_chunk):
                    chunk = ids[part].astype(np.int64).tolist()
                    self.edges.delete_many({"u": {"$in": chunk}})
                    self.nodes.delete_many({"id": {"$in": chunk}})
        jobs: list[tuple[Collection, list[dict[str, Any]], tuple[str, ...]]] = []
        if write_nodes:
            jobs.append((self.nodes, self._graph_node_rows(graph, roi, node_attrs), ("id",)))
        if write_edges:
            jobs.append((self.edges, self._graph_edge_rows(graph, roi, edge_attrs), ("u", "v")))
        for coll, rows, key in jobs:
            if fail_if_exists:
                with self._errors(f"inserting {coll.name}"):
                    for part in chunks(len(rows), self.batch_ops):
                        coll.insert_many(rows[part], ordered=False)
            else:
                self._write_rows(coll, rows, key)

    def write_attrs(
        self,
        graph: Graph,
        roi: Roi | None = None,
        node_attrs: list[str] | None = None,
        edge_attrs: list[str] | None = None,
    ) -> None:
        """funlib: update only the named attributes of existing nodes (in ``roi``) and edges
        (whose ``u`` is in ``roi``); nothing is created. ``None`` means no attribute."""
        self._check_writable()
        for coll, rows, key, names in (
            (self.nodes, self._graph_node_rows(graph, roi, node_attrs or []), ("id",), node_attrs),
            (
                self.edges,
                self._graph_edge_rows(graph, roi, edge_attrs or []),
                ("u", "v"),
                edge_attrs,
            ),
        ):
            if not names:
                continue
            keys, sets = [], []
            for r in rows:
                values = {a: r[a] for a in names if a in r and a not in key}
                if values:  # an empty $set is an error, and there is nothing to do
                    keys.append({k: r[k] for k in key})
                    sets.append(values)
            self._update_rows(coll, keys, sets)
