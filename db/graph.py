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
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Literal

import bson
import numpy as np
from funlib.geometry import Roi
from funlib.persistence.graphs.graph_database import AttributeType, GraphDataBase
from funlib.persistence.types import Vec, type_to_str
from networkx import Graph
from pymongo import ASCENDING, InsertOne, MongoClient, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import (
    BulkWriteError,
    DuplicateKeyError,
    InvalidName,
    OperationFailure,
    PyMongoError,
)

from .connection import DEFAULT_TIMEOUT_MS, connect, db_error, mask_uri
from .errors import DbError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Bumped whenever the stored layout changes; a database of another version is refused."""

META_ID = "marlseg_rag"
AXES = ("z", "y", "x")
DEFAULT_POSITION_ATTRIBUTE = "center"
DEFAULT_NODE_ATTRS: dict[str, AttributeType] = {"size": int}
DEFAULT_EDGE_ATTRS: dict[str, AttributeType] = {"merge_score": float, "agglomerated": bool}

MAX_BATCH_OPS = 10_000
"""Rows per bulk request: well under MongoDB's 100,000-operation limit, and small enough that
a failed batch is cheap to resend."""
MAX_BATCH_BYTES = 8 * 1024 * 1024
"""Bytes per bulk request (estimated from the first row): half of the 16 MB BSON limit."""
IN_CHUNK = 100
"""Ids per ``$in`` query on a real mongod (bounded request size)."""
IN_CHUNK_EMBEDDED = 20
"""Ids per ``$in`` query on the embedded server, whose ``$in`` cost grows faster than the
list: 300 ids as 30 queries of 10 took 0.29 s, as 3 of 100 0.77 s, as 1 of 300 1.8 s."""
MIN_RUN = 8
"""Consecutive ids read with one range query instead of ``$in``."""
CELL_FIELD = "cell"
DEFAULT_CELL_NM = (500, 500, 500)
"""Edge of the spatial cells behind the ``cell`` key, nm (about a fragments block)."""
CELL_BITS = 20
MAX_CELL_QUERIES = 64
"""More (z, y) cell rows than this in one ROI: read its z slab instead."""
"""Consecutive ids read with one range query instead of ``$in``."""
TXN_ATTEMPTS = 3
"""Tries of one transaction that failed with a transient error (see ``_in_transaction``)."""

TXN_OPS = 1000
"""Update statements per transaction (see ``MongoDbGraphDatabase._bulk``): one commit per
chunk, and a chunk small enough to stay far from transaction time and size limits."""
DUPLICATE_KEY = 11000
ILLEGAL_OPERATION = 20

Columns = dict[str, np.ndarray]


# ------------------------------------------------------------------------------ type specs
_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}
_VEC = re.compile(r"^Vec\((\w+),\s*(\d+)\)$")


def str_to_type(spec: str) -> AttributeType:
    """Inverse of funlib's ``type_to_str`` without ``eval`` (the meta document is data)."""
    spec = spec.strip()
    if spec in _TYPES:
        return _TYPES[spec]
    m = _VEC.match(spec)
    if m and m.group(1) in _TYPES:
        return Vec(_TYPES[m.group(1)], int(m.group(2)))
    raise DbError(f"unknown attribute type {spec!r} in the RAG meta document")


def _infer_type(values: np.ndarray) -> AttributeType:
    """The attribute type of a column written through the array API."""
    kind = values.dtype.kind
    base: type = float if kind == "f" else int if kind in "iu" else bool if kind == "b" else str
    if values.ndim == 2:
        return Vec(base, int(values.shape[1]))
    return base


def _dtype(spec: AttributeType) -> Any:
    base = spec.dtype if isinstance(spec, Vec) else spec
    return {int: np.int64, float: np.float64, bool: np.bool_}.get(base, object)  # type: ignore[call-overload]


# ------------------------------------------------------------------------------ helpers
def _as_ids(values: Any, what: str) -> np.ndarray:
    """Ids as int64 (what BSON stores). Fragment ids are uint64 in the volumes; ones that do
    not fit a signed 64-bit integer cannot be stored and are refused, not wrapped."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size and arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{what} must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{what} must be < 2**63 to be stored in MongoDB")
    return arr.astype(np.int64, copy=False)


def _column(values: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = np.full(n, arr.item())
    if arr.shape[0] != n:
        raise ValueError(f"attribute {name!r} has {arr.shape[0]} values for {n} rows")
    return arr


def _rows(columns: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Row documents from equally long columns (``tolist`` makes plain Python scalars, which
    is what BSON encodes -- and much faster than per-element conversion)."""
    names = list(columns)
    lists = [np.asarray(c).tolist() for c in columns.values()]
    return [dict(zip(names, row)) for row in zip(*lists)]


def _roi_bounds(roi: Roi | None) -> list[tuple[float | None, float | None]]:
    if roi is None:
        return [(None, None)] * len(AXES)
    begin, end = roi.begin, roi.end
    return [(begin[d], end[d]) for d in range(len(AXES))]


def _in_roi(pos: Sequence[float] | None, roi: Roi | None) -> bool:
    """Half-open containment on world coordinates (floats; funlib's Coordinate would cast)."""
    if roi is None:
        return True
    if pos is None:
        return False
    for p, (b, e) in zip(pos, _roi_bounds(roi)):
        if p is None or (b is not None and p < b) or (e is not None and p >= e):
            return False
    return True


def _cell_coords(values: np.ndarray, cell_nm: float) -> np.ndarray:
    """Cell index along one axis, offset so that negative positions work, clipped to
    ``CELL_BITS`` bits."""
    c = np.floor(np.asarray(values, dtype=np.float64) / cell_nm) + (1 << (CELL_BITS - 1))
    return np.clip(np.nan_to_num(c, nan=0.0), 0, (1 << CELL_BITS) - 1).astype(np.int64)


def cell_keys(centers_zyx: np.ndarray, cell_nm: Sequence[float]) -> np.ndarray:
    """The ``cell`` key of each position: z, y, x cell indices packed into one integer, z
    most significant, so that the cells of one (z, y) row are one integer range."""
    centers_zyx = np.asarray(centers_zyx, dtype=np.float64).reshape(-1, len(AXES))
    cz, cy, cx = (_cell_coords(centers_zyx[:, d], cell_nm[d]) for d in range(len(AXES)))
    return (cz << (2 * CELL_BITS)) | (cy << CELL_BITS) | cx


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class MongoDbGraphDatabase(GraphDataBase):
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
        self._in_chunk = in_chunk
        self.cell_nm = tuple(float(c) for c in (cell_nm or DEFAULT_CELL_NM))
        self.total_roi = total_roi
        self.voxel_size = tuple(int(v) for v in voxel_size) if voxel_size is not None else None
        self._own_client = client is None
        self.client: MongoClient = (
            client if client is not None else connect(uri, timeout_ms=timeout_ms)
        )
        try:
            self.db = self.client[db_name]
            self.nodes: Collection = self.db[nodes_collection]
            self.edges: Collection = self.db[edges_collection]
            self.meta: Collection = self.db[meta_collection]
        except InvalidName as e:
            self.close()
            raise DbError(
                f"invalid database name {db_name!r} for MongoDB at {mask_uri(uri)}: {e}"
            ) from None
        self._embedded_server = False
        self._transactions = bool(transactions)
        self._node_specs: dict[str, AttributeType] = {}
        self._edge_specs: dict[str, AttributeType] = {}
        try:
            with self._errors("opening the RAG"):
                self._probe_server(transactions)
                self._open(node_attrs or {}, edge_attrs or {})
        except BaseException:
            self.close()
            raise

    def _probe_server(self, transactions: bool | None) -> None:
        """What the server can do: the embedded SecantusDB server gets its own query and
        write shapes (see :meth:`_empty`, :meth:`_bulk`, :meth:`_find_nodes`,
        :meth:`_find_in`); transactions need a replica set member or a mongos."""
        self._embedded_server = "secantusVersion" in self.client.admin.command("buildInfo")
        if transactions is None:
            hello = self.client.admin.command("hello")
            transactions = "setName" in hello or hello.get("msg") == "isdbgrid"
        self._transactions = transactions
        if self._in_chunk is None:
            self._in_chunk = IN_CHUNK_EMBEDDED if self._embedded_server else IN_CHUNK

    @property
    def in_chunk(self) -> int:
        """Ids per ``$in`` query."""
        return int(self._in_chunk or IN_CHUNK)

    # ------------------------------------------------------------------ setup
    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Driver errors become one-line :class:`DbError` with the URI masked."""
        try:
            yield
        except BulkWriteError as e:
            errors = e.details.get("writeErrors") or [{}]
            first = errors[0].get("errmsg", str(e))
            raise DbError(
                f"{action} on MongoDB at {mask_uri(self.uri)}: {len(errors)} rows refused, "
                f"first: {first}"
            ) from None
        except PyMongoError as e:
            raise db_error(action, self.uri, e) from None

    def _where(self) -> str:
        return f"database {self.db_name!r} at {mask_uri(self.uri)}"

    def _open(
        self, node_attrs: Mapping[str, AttributeType], edge_attrs: Mapping[str, AttributeType]
    ) -> None:
        if self.mode == "w":
            self.meta.delete_many({})
            self._empty(self.nodes)
            self._empty(self.edges)
        meta = self.meta.find_one({"_id": META_ID})
        if meta is None and self.mode == "r":
            names = set(self.db.list_collection_names())
            if names & {self.nodes.name, self.edges.name}:
                raise DbError(
                    f"{self._where()} has a RAG without a marlseg meta document (not written by "
                    "marlseg, or by a version before schema 1): use another db.name"
                )
            raise DbError(f"{self._where()} has no RAG: run 02_extract_fragments.py first")
        if meta is None:
            self.ensure_indexes()  # before any row is loaded
            doc = {
                "schema_version": SCHEMA_VERSION,
                "position_attribute": self.position_attribute,
                "position_fields": self.position_fields,
                "endpoint_names": self.endpoint_names,
                "directed": False,
                "ndims": len(AXES),
                "nodes_collection": self.nodes.name,
                "edges_collection": self.edges.name,
                "units": "nm",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "node_attrs": {},
                "edge_attrs": {},
                "total_roi_offset": None,
                "total_roi_shape": None,
                "voxel_size": None,
                "cell_nm": list(self.cell_nm),
            }
            # $setOnInsert: when many workers open a fresh database at once, one creates it
            # (a loser of the race on the _id index finds the winner's document below)
            with suppress(DuplicateKeyError):
                self.meta.update_one({"_id": META_ID}, {"$setOnInsert": doc}, upsert=True)
            meta = self.meta.find_one({"_id": META_ID})
            assert meta is not None
        self._load_meta(meta)
        wanted_nodes = {**DEFAULT_NODE_ATTRS, **node_attrs}
        wanted_nodes.pop(self.position_attribute, None)
        self._register("node", wanted_nodes)
        self._register("edge", {**DEFAULT_EDGE_ATTRS, **edge_attrs})
        self._register_geometry()

    def _load_meta(self, meta: Mapping[str, Any]) -> None:
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DbError(
                f"{self._where()} holds a RAG of schema version {version}, this marlseg reads "
                f"version {SCHEMA_VERSION}: set another db.name, or drop database "
                f"{self.db_name!r} and rerun from 02_extract_fragments.py"
            )
        if meta.get("position_attribute") != self.position_attribute:
            raise DbError(
                f"{self._where()} stores positions as {meta.get('position_attribute')!r}, "
                f"not {self.position_attribute!r}"
            )
        self._node_specs = {k: str_to_type(v) for k, v in (meta.get("node_attrs") or {}).items()}
        self._edge_specs = {k: str_to_type(v) for k, v in (meta.get("edge_attrs") or {}).items()}
        if meta.get("total_roi_offset") is not None and self.total_roi is None:
            self.total_roi = Roi(meta["total_roi_offset"], meta["total_roi_shape"])
        if meta.get("voxel_size") is not None and self.voxel_size is None:
            self.voxel_size = tuple(meta["voxel_size"])
        if meta.get("cell_nm") is not None:
            self.cell_nm = tuple(float(c) for c in meta["cell_nm"])
        self._stored_geometry = (
            meta.get("total_roi_offset"),
            meta.get("total_roi_shape"),
            meta.get("voxel_size"),
        )

    def _register(self, kind: Literal["node", "edge"], specs: Mapping[str, AttributeType]) -> None:
        """Add attribute specs to the meta document (and this object). Adding is free; a
        type that disagrees with the stored one is an error (the data would not round-trip)."""
        known = self._node_specs if kind == "node" else self._edge_specs
        new: dict[str, str] = {}
        for name, spec in specs.items():
            if name in known:
                if type_to_str(known[name]) != type_to_str(spec):
                    raise DbError(
                        f"{self._where()}: {kind} attribute {name!r} is stored as "
                        f"{type_to_str(known[name])}, not {type_to_str(spec)}"
                    )
                continue
            new[f"{kind}_attrs.{name}"] = type_to_str(spec)
            known[name] = spec
        if new and self.mode != "r":
            self.meta.update_one({"_id": META_ID}, {"$set": new})

    def _register_geometry(self) -> None:
        offset, shape, vs = self._stored_geometry
        updates: dict[str, Any] = {}
        if self.total_roi is not None and self.total_roi.offset is not None:
            mine = (list(self.total_roi.offset), list(self.total_roi.shape))
            if offset is None:
                updates["total_roi_offset"], updates["total_roi_shape"] = mine
            elif (list(offset), list(shape)) != mine:
                raise DbError(f"{self._where()} covers ROI {offset}+{shape}, not {self.total_roi}")
        if self.voxel_size is not None:
            if vs is None:
                updates["voxel_size"] = list(self.voxel_size)
            elif tuple(vs) != self.voxel_size:
                raise DbError(f"{self._where()} has voxel size {vs}, not {self.voxel_size}")
        if updates and self.mode != "r":
            self.meta.update_one({"_id": META_ID}, {"$set": updates})

    def ensure_indexes(self) -> None:
        """Create the indexes (idempotent). Done before rows are loaded: building a unique
        index over existing duplicates would fail, and the upsert key needs it from the start."""
        self._check_writable()
        with self._errors("creating indexes"):
            self.nodes.create_index([("id", ASCENDING)], name="id_unique", unique=True)
            self.nodes.create_index([(f, ASCENDING) for f in self.position_fields], name="position")
            # one-field spatial key: the embedded server plans only one-field queries well
            self.nodes.create_index([(CELL_FIELD, ASCENDING)], name=CELL_FIELD)
            self.edges.create_index(
                [("u", ASCENDING), ("v", ASCENDING)], name="u_v_unique", unique=True
            )

    def clear(self) -> None:
        """Remove all nodes and edges (keep the meta document); indexes are recreated."""
        self._check_writable()
        with self._errors("clearing the RAG"):
            self._empty(self.nodes)
            self._empty(self.edges)
        self.ensure_indexes()

    def _empty(self, coll: Collection) -> None:
        """Remove every row of ``coll``. A real mongod drops the collection (instant); the
        embedded SecantusDB server drops row by row with a durable commit each (~20 ms per
        row, minutes for a real RAG) but deletes in batches, so there the rows are deleted
        and the collection and its indexes kept."""
        if self._embedded_server:
            coll.delete_many({})
        else:
            coll.drop()

    def close(self) -> None:
        if self._own_client and getattr(self, "client", None) is not None:
            self.client.close()

    def __enter__(self) -> MongoDbGraphDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_writable(self) -> None:
        if self.mode == "r":
            raise RuntimeError(f"the RAG in {self._where()} was opened read-only (mode 'r')")

    # ------------------------------------------------------------------ attribute specs
    @property
    def node_attrs(self) -> dict[str, AttributeType]:
        """Node attribute specs, the position attribute (``Vec(float, 3)``) first."""
        return {self.position_attribute: Vec(float, len(AXES)), **self._node_specs}

    @property
    def edge_attrs(self) -> dict[str, AttributeType]:
        return dict(self._edge_specs)

    # ------------------------------------------------------------------ writing (core)
    def _batch_len(self, first: Mapping[str, Any]) -> int:
        size = len(bson.encode(dict(first))) + 32  # + an ObjectId _id and slack
        return max(1, min(self.batch_ops, MAX_BATCH_BYTES // size))

    def _write_rows(
        self, coll: Collection, rows: list[dict[str, Any]], key: tuple[str, ...]
    ) -> None:
        """Upsert ``rows`` keyed by ``key``: the one write path of this class."""
        if not rows:
            return
        self._check_writable()
        step = self._batch_len(rows[0])
        with self._errors(f"writing {coll.name}"):
            for part in _chunks(len(rows), step):
                batch = rows[part]
                if self.write_strategy == "upsert":
                    self._upsert(coll, batch, key)
                    continue
                try:
                    coll.bulk_write([InsertOne(r) for r in batch], ordered=False)
                except BulkWriteError as e:
                    errors = e.details.get("writeErrors", [])
                    others = [w for w in errors if w.get("code") != DUPLICATE_KEY]
                    if others:
                        raise
                    self._upsert(coll, [batch[w["index"]] for w in errors], key)

    def _bulk(self, coll: Collection, ops: list[UpdateOne]) -> int:
        """Send update/upsert ``ops`` unordered; returns the matched count.

        On a server with transactions (a replica set, which the embedded server advertises)
        each chunk of ``TXN_OPS`` goes in one transaction: the embedded server makes every
        statement outside a transaction its own durable commit (an fsync each), so batching
        the commits is ~3x faster. Elsewhere (a standalone mongod) plain unordered bulk
        writes. Either way the outcome of each op is the same, so retrying is safe."""
        matched = 0
        for part in _chunks(len(ops), TXN_OPS if self._transactions else self.batch_ops):
            chunk = ops[part]
            if self._transactions:
                try:
                    matched += self._in_transaction(coll, chunk)
                    continue
                except OperationFailure as e:
                    if e.code != ILLEGAL_OPERATION:  # "transactions not supported here"
                        raise
                    logger.info("%s: no transactions, writing without", self._where())
                    self._transactions = False
            matched += coll.bulk_write(chunk, ordered=False).matched_count
        return matched

    def _in_transaction(self, coll: Collection, chunk: list[UpdateOne]) -> int:
        """``chunk`` in one transaction; returns the matched count. A transient error (a write
        conflict with another worker) is retried, at most ``TXN_ATTEMPTS`` times in all: not
        pymongo's ``with_transaction``, which retries for up to two minutes, so a worker whose
        server died would hang that long before its block is failed and retried."""
        for attempt in range(TXN_ATTEMPTS):
            try:
                with self.client.start_session() as session, session.start_transaction():
                    return coll.bulk_write(chunk, ordered=False, session=session).matched_count
            except PyMongoError as e:
                if attempt + 1 == TXN_ATTEMPTS or not e.has_error_label(
                    "TransientTransactionError"
                ):
                    raise
        raise AssertionError("unreachable")

    def _upsert(self, coll: Collection, rows: list[dict[str, Any]], key: tuple[str, ...]) -> None:
        ops = []
        for r in rows:
            fields = {k: v for k, v in r.items() if k != "_id"}
            ops.append(UpdateOne({k: fields[k] for k in key}, {"$set": fields}, upsert=True))
        for attempt in range(3):
            try:
                self._bulk(coll, ops)
                return
            except BulkWriteError as e:
                # two writers upserting the same new key: one insert loses on the unique
                # index. Run the losers again (now an update) -- all of the chunk if it ran
                # in a transaction, which the error aborted.
                errors = e.details.get("writeErrors", [])
                if attempt == 2 or any(w.get("code") != DUPLICATE_KEY for w in errors):
                    raise
                if not self._transactions:
                    ops = [ops[w["index"]] for w in errors]

    def _update_rows(
        self, coll: Collection, keys: list[dict[str, Any]], sets: list[dict[str, Any]]
    ) -> int:
        """``$set`` fields on existing rows (no upsert); returns how many rows matched."""
        if not keys:
            return 0
        self._check_writable()
        ops = [UpdateOne(k, {"$set": s}) for k, s in zip(keys, sets)]
        with self._errors(f"updating {coll.name}"):
            return self._bulk(coll, ops)

    # ------------------------------------------------------------------ array API: writes
    def write_nodes(
        self,
        ids: Any,
        centers_zyx_nm: Any,
        sizes: Any = None,
        **extra_attr_arrays: Any,
    ) -> None:
        """Upsert nodes: ``ids`` (n,), ``centers_zyx_nm`` (n, 3) world positions in nm,
        ``sizes`` (n,) voxel counts, and any further per-node columns (``(n,)`` or ``(n, k)``).
        A node belongs to the block whose ROI contains its centre (see the module doc)."""
        ids_ = _as_ids(ids, "node ids")
        n = ids_.size
        centers = np.asarray(centers_zyx_nm, dtype=np.float64).reshape(n, len(AXES))
        columns: dict[str, np.ndarray] = {"id": ids_}
        for d, field in enumerate(self.position_fields):
            columns[field] = centers[:, d]
        columns[CELL_FIELD] = cell_keys(centers, self.cell_nm)
        if sizes is not None:
            columns["size"] = _as_ids(_column(sizes, n, "size"), "sizes")
        new: dict[str, AttributeType] = {}
        for name, values in extra_attr_arrays.items():
            if name in columns or name == "_id":
                raise ValueError(f"{name!r} cannot be an extra node attribute")
            columns[name] = _column(values, n, name)
            if name not in self._node_specs:
                new[name] = _infer_type(columns[name])
        with self._errors("registering node attributes"):
            self._register("node", new)
        self._write_rows(self.nodes, _rows(columns), ("id",))

    def write_edges(self, u: Any, v: Any, **attr_arrays: Any) -> None:
        """Upsert edges ``(u, v)`` with per-edge attribute columns (``merge_score=...``,
        ``agglomerated=...``). Endpoints are swapped where needed so that ``u < v``; self
        loops are refused. The caller writes the edges whose ``u`` its block owns."""
        u_, v_ = _as_ids(u, "u"), _as_ids(v, "v")
        if u_.shape != v_.shape:
            raise ValueError(f"u and v differ in length ({u_.size} vs {v_.size})")
        if np.any(u_ == v_):
            raise ValueError("self loops (u == v) are not edges of a RAG")
        lo, hi = np.minimum(u_, v_), np.maximum(u_, v_)
        columns: dict[str, np.ndarray] = {"u": lo, "v": hi}
        new: dict[str, AttributeType] = {}
        for name, values in attr_arrays.items():
            if name in columns or name == "_id":
                raise ValueError(f"{name!r} cannot be an edge attribute")
            columns[name] = _column(values, lo.size, name)
            if name not in self._edge_specs:
                new[name] = _infer_type(columns[name])
        with self._errors("registering edge attributes"):
            self._register("edge", new)
        self._write_rows(self.edges, _rows(columns), ("u", "v"))

    def write_edge_attrs(self, u: Any, v: Any, name: str, values: Any) -> int:
        """Set attribute ``name`` on existing edges (e.g. a learned ``rl_weight``); returns
        how many edges matched. Edges that do not exist are not created."""
        u_, v_ = _as_ids(u, "u"), _as_ids(v, "v")
        lo, hi = np.minimum(u_, v_), np.maximum(u_, v_)
        vals = _column(values, lo.size, name)
        if name not in self._edge_specs:
            with self._errors("registering edge attributes"):
                self._register("edge", {name: _infer_type(vals)})
        keys = _rows({"u": lo, "v": hi})
        sets = [{name: x} for x in vals.tolist()]
        matched = self._update_rows(self.edges, keys, sets)
        if matched < len(keys):
            logger.warning(
                "write_edge_attrs(%r): %d of %d edges not found",
                name,
                len(keys) - matched,
                len(keys),
            )
        return matched

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
        for field, (b, e) in zip(self.position_fields, _roi_bounds(roi)):
            cond: dict[str, Any] = {}
            if b is not None:
                cond["$gte"] = b
            if e is not None:
                cond["$lt"] = e
            if cond:
                conds[field] = cond
        attr_filter = dict(attr_filter or {})
        if not self._embedded_server or len(conds) + len(attr_filter) <= 1:
            return self._find(self.nodes, {**conds, **attr_filter}, fields)
        wanted = list(dict.fromkeys([*fields, *conds, *attr_filter]))
        docs: list[dict[str, Any]] = []
        for query in self._spatial_queries(roi, conds):
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

    def _spatial_queries(
        self, roi: Roi | None, conds: Mapping[str, dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """One-field queries whose union holds every node of ``roi`` (embedded server)."""
        bounds = _roi_bounds(roi)
        if roi is not None and all(b is not None and e is not None for b, e in bounds):
            lo = [int(_cell_coords(np.array([b]), c)[0]) for (b, _), c in zip(bounds, self.cell_nm)]
            hi = [
                int(_cell_coords(np.array([np.nextafter(float(e), -math.inf)]), c)[0])
                for (_, e), c in zip(bounds, self.cell_nm)
            ]
            rows = (hi[0] - lo[0] + 1) * (hi[1] - lo[1] + 1)
            if 0 < rows <= MAX_CELL_QUERIES and hi[2] >= lo[2]:
                queries = []
                for cz in range(lo[0], hi[0] + 1):
                    for cy in range(lo[1], hi[1] + 1):
                        row = (cz << (2 * CELL_BITS)) | (cy << CELL_BITS)
                        queries.append({CELL_FIELD: {"$gte": row | lo[2], "$lte": row | hi[2]}})
                return queries
        first = next(iter(conds.items()), None)
        return [dict([first])] if first else [{}]

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
        here = extra if self._embedded_server else {}
        server_extra = {} if self._embedded_server else extra
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
        for part in _chunks(rest.size, self.in_chunk):
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

    def _to_columns(
        self, docs: list[dict[str, Any]], fields: list[str], specs: Mapping[str, AttributeType]
    ) -> Columns:
        """Documents to numpy columns. Ids are uint64 (the fragments' dtype); a column with
        missing values is float64 with NaN there (so a missing score never passes a
        threshold)."""
        out: Columns = {}
        for f in fields:
            values = [d.get(f) for d in docs]
            if f in ("id", "u", "v"):
                out[f] = np.asarray(values, dtype=np.int64).astype(np.uint64)
                continue
            spec = specs.get(f, float)
            missing = any(x is None for x in values)
            if missing:
                if isinstance(spec, Vec):
                    k = spec.size
                    values = [x if x is not None else [math.nan] * k for x in values]
                else:
                    values = [x if x is not None else math.nan for x in values]
                dtype: Any = np.float64 if spec is not str else object
            else:
                dtype = _dtype(spec)
            arr = np.asarray(values, dtype=dtype)
            if isinstance(spec, Vec) and arr.ndim == 1:
                arr = arr.reshape(len(values), spec.size)
            out[f] = arr
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
        return self._to_columns(docs, fields, self._node_specs_with_position())

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
        docs = self._find_in(self.edges, "u", _as_ids(ids, "node ids"), fields)
        return self._to_columns(docs, fields, self._edge_specs)

    def read_edges_in_roi(self, roi: Roi | None, attrs: Iterable[str] | None = None) -> Columns:
        """Edges owned by ``roi``: those whose ``u`` lies in it."""
        if roi is None:
            fields = self._edge_fields(attrs)
            return self._to_columns(self._find(self.edges, {}, fields), fields, self._edge_specs)
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
                        yield self._to_columns(buf, fields, self._edge_specs)
                        buf = []
                if buf:
                    yield self._to_columns(buf, fields, self._edge_specs)
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

    # ------------------------------------------------------------------ funlib interface
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
            if roi is not None and not _in_roi(pos, roi):
                continue
            row: dict[str, Any] = {"id": int(node)}
            if pos is not None:
                row.update(zip(self.position_fields, (float(p) for p in pos)))
                row[CELL_FIELD] = int(cell_keys(np.asarray(pos), self.cell_nm)[0])
            row.update(_plain(data, names))
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
            if roi is not None and not _in_roi(graph.nodes[u].get(self.position_attribute), roi):
                continue  # owned by the block that owns u
            rows.append({"u": u, "v": v, **_plain(data, names)})
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
                for part in _chunks(ids.size, self.in_chunk):
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
                    for part in _chunks(len(rows), self.batch_ops):
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

    def __repr__(self) -> str:
        return f"MongoDbGraphDatabase({self._where()}, mode={self.mode!r})"


def _plain(data: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Attribute values BSON can store (numpy scalars and arrays to Python); ``None`` is
    left out so that a partial write never blanks a stored value."""
    out: dict[str, Any] = {}
    for name in names:
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray | tuple):
            value = np.asarray(value).tolist()
        out[name] = value
    return out
