"""The region adjacency graph (RAG) in MongoDB, on funlib.persistence's ``GraphDataBase``.

funlib.persistence 0.6 ships SQLite and PostgreSQL graph databases; this is the MongoDB one,
with the schema of the lsd experiments so that existing tools read it:

* ``nodes``: ``{id, center_z, center_y, center_x, size, cell, ...}`` -- positions in world
  units (nm); unique index on ``id``, compound index on ``(center_z, center_y, center_x)``.
  ``cell`` (indexed) packs the position's ``cell_nm`` grid cell into one integer: the embedded
  server answers only one-field queries from an index, so it reads a ROI by ``cell`` ranges
  (a real mongod uses the compound index; lsd tools ignore the extra field).
* ``edges``: ``{u, v, merge_score, agglomerated, ...}`` with ``u < v`` enforced on write;
  unique index on ``(u, v)``.
* ``meta``: one document -- schema version, attribute specs, position fields, total ROI and
  voxel size (when known).

Two APIs over one implementation:

* the **array API** the pipeline stages use (numpy in, numpy out, no networkx on the hot
  path): :meth:`~MongoDbGraphDatabase.write_nodes`, :meth:`~MongoDbGraphDatabase.write_edges`,
  :meth:`~MongoDbGraphDatabase.read_nodes_in_roi`,
  :meth:`~MongoDbGraphDatabase.read_edges_for_nodes`, :meth:`~MongoDbGraphDatabase.iter_edges`,
  :meth:`~MongoDbGraphDatabase.write_edge_attrs`, counts;
* **funlib's interface** (``read_graph`` / ``write_graph`` / ``write_attrs`` / ``read_nodes``
  / ``read_edges`` and the attribute specs), so this class stands in where funlib's graph
  databases do. There the position is one node attribute (``center``, a ``Vec(float, 3)``,
  ``(z, y, x)``), stored as the three ``center_*`` fields.

**Ownership rule (who writes what, what a ROI read returns).** A node belongs to the block
whose ROI contains its position (half-open: ``begin <= p < end`` on every axis). An edge
belongs to the block that owns its ``u`` (the smaller id): a block writes the edges whose ``u``
it owns, and reading a ROI returns the nodes inside it and the edges whose ``u`` is among them.
Every edge is therefore written by exactly one block and read back with exactly one ROI.

**Idempotency.** Rows are keyed by ``id`` and ``(u, v)`` and written as unordered bulk
upserts, so writing a block twice (a retried or resumed block) leaves exactly one row per key,
holding the latest values; several workers may write overlapping rows at once. The unique
indexes arbitrate. For speed the upsert is done *insert-first*: the batch goes in with one
unordered ``insert_many`` (the server's fast, batched path) and only the rows the unique index
rejected as already present are sent again as ``UpdateOne(key, {"$set": row}, upsert=True)``.
The outcome is exactly that of upserting every row (see ``benchmarks/rag_store.py`` for why:
a per-row upsert costs one durable commit each on the embedded server).
``write_strategy="upsert"`` sends every row as an upsert instead.

The class is put together from one module per idea: :mod:`~marlseg.db.schema` (attribute
types, the meta document, indexes, schema version), :mod:`~marlseg.db.writes` (bulk writes,
transactions, retries), :mod:`~marlseg.db.reads` (ROI and ``$in`` queries, numpy columns),
:mod:`~marlseg.db.funlib_api` (funlib's interface) and :mod:`~marlseg.db.backend` (what
differs on the embedded server, decided once at open). This module opens and closes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from funlib.geometry import Roi
from funlib.persistence.graphs.graph_database import AttributeType
from funlib.persistence.types import Vec
from pymongo import MongoClient
from pymongo.errors import InvalidName

from .backend import Backend
from .cells import AXES, DEFAULT_CELL_NM
from .connection import DEFAULT_TIMEOUT_MS, connect, mask_uri
from .errors import DbError
from .funlib_api import FunlibGraph
from .schema import DEFAULT_POSITION_ATTRIBUTE
from .writes import MAX_BATCH_OPS


class MongoDbGraphDatabase(FunlibGraph):
    """The RAG in MongoDB database ``db_name`` on ``uri``.

    ``mode``: ``"r"`` (must exist, no writes), ``"r+"`` (open; create the collections, indexes
    and meta document if the database has none -- safe for many workers at once), ``"w"``
    (drop and recreate; never from workers). ``node_attrs`` / ``edge_attrs`` add attribute
    specs to the stored ones (the defaults: ``size``; ``merge_score``, ``agglomerated``);
    attributes written through the array API are added automatically.

    Raises :class:`DbError` (one line, password masked) if the server cannot be reached or
    authentication fails, or if the database was written by another schema version.

    A ``MongoClient`` must not cross a ``fork``: open the database in each worker.
    """

    read_modes = ("r", "r+")
    write_modes = ("r+", "w")
    valid_modes = ("r", "r+", "w")

    def __init__(
        self,
        uri: str,
        db_name: str = "marlseg",
        mode: str = "r+",
        *,
        position_attribute: str = DEFAULT_POSITION_ATTRIBUTE,
        node_attrs: Mapping[str, AttributeType] | None = None,
        edge_attrs: Mapping[str, AttributeType] | None = None,
        total_roi: Roi | None = None,
        voxel_size: Sequence[int] | None = None,
        directed: bool = False,
        nodes_collection: str = "nodes",
        edges_collection: str = "edges",
        meta_collection: str = "meta",
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        write_strategy: Literal["insert_first", "upsert"] = "insert_first",
        batch_ops: int = MAX_BATCH_OPS,
        in_chunk: int | None = None,
        cell_nm: Sequence[float] | None = None,
        transactions: bool | None = None,
        client: MongoClient | None = None,
    ) -> None:
        if mode not in self.valid_modes:
            raise ValueError(f"mode must be one of {self.valid_modes}, got {mode!r}")
        if directed:
            raise ValueError("the RAG is undirected (edges are stored with u < v)")
        if write_strategy not in ("insert_first", "upsert"):
            raise ValueError(f"unknown write_strategy {write_strategy!r}")
        if position_attribute in (node_attrs or {}):
            spec = (node_attrs or {})[position_attribute]
            if not (isinstance(spec, Vec) and spec.size == len(AXES)):
                raise ValueError(f"position attribute {position_attribute!r} must be Vec(float, 3)")
        self.uri = uri
        self.db_name = db_name
        self.mode = mode
        self.directed = False
        self.position_attribute = position_attribute
        self.position_fields = [f"{position_attribute}_{a}" for a in AXES]
        self.endpoint_names = ["u", "v"]
        self.write_strategy = write_strategy
        self.batch_ops = int(batch_ops)
        self.cell_nm = tuple(float(c) for c in (cell_nm or DEFAULT_CELL_NM))
        self.total_roi = total_roi
        self.voxel_size = tuple(int(v) for v in voxel_size) if voxel_size is not None else None
        self._own_client = client is None
        self.client = client if client is not None else connect(uri, timeout_ms=timeout_ms)
        try:
            self.db = self.client[db_name]
            self.nodes = self.db[nodes_collection]
            self.edges = self.db[edges_collection]
            self.meta = self.db[meta_collection]
        except InvalidName as e:
            self.close()
            raise DbError(
                f"invalid database name {db_name!r} for MongoDB at {mask_uri(uri)}: {e}"
            ) from None
        self._node_specs = {}
        self._edge_specs = {}
        try:
            with self._errors("opening the RAG"):
                self.backend = Backend.probe(
                    self.client, transactions=transactions, in_chunk=in_chunk
                )
                self._open(node_attrs or {}, edge_attrs or {})
        except BaseException:
            self.close()
            raise

    @property
    def in_chunk(self) -> int:
        """Ids per ``$in`` query."""
        return self.backend.in_chunk

    def clear(self) -> None:
        """Remove all nodes and edges (keep the meta document); indexes are recreated."""
        self._check_writable()
        with self._errors("clearing the RAG"):
            self.backend.empty(self.nodes)
            self.backend.empty(self.edges)
        self.ensure_indexes()

    def close(self) -> None:
        if self._own_client and getattr(self, "client", None) is not None:
            self.client.close()

    def __enter__(self) -> MongoDbGraphDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MongoDbGraphDatabase({self._where()}, mode={self.mode!r})"
