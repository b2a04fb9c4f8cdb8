"""Bulk writes to the RAG: batched insert-first upserts, transactions and their retries.

:class:`Writer` has the one write path (:meth:`~Writer._write_rows`: batches sized by
operations and bytes, insert-first or plain upserts, losers of a race on the unique index
sent again) and the array API's writes (:meth:`~Writer.write_nodes`,
:meth:`~Writer.write_edges`, :meth:`~Writer.write_edge_attrs`). Whether update chunks go in
transactions, and how large they are, is the :class:`~marlseg.db.backend.Backend`'s to say.
May import pymongo, bson, numpy and the modules of :mod:`marlseg.db` below it (schema,
columns, cells).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import bson
import numpy as np
from funlib.persistence.graphs.graph_database import AttributeType
from pymongo import InsertOne, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from .cells import AXES, CELL_FIELD, cell_keys
from .columns import as_column, as_ids, chunks, to_rows
from .schema import Schema, infer_type

logger = logging.getLogger(__name__)

MAX_BATCH_OPS = 10_000
"""Rows per bulk request: well under MongoDB's 100,000-operation limit, and small enough that
a failed batch is cheap to resend."""
MAX_BATCH_BYTES = 8 * 1024 * 1024
"""Bytes per bulk request (estimated from the first row): half of the 16 MB BSON limit."""
TXN_ATTEMPTS = 3
"""Tries of one transaction that failed with a transient error (see ``_in_transaction``)."""
DUPLICATE_KEY = 11000
ILLEGAL_OPERATION = 20


class Writer(Schema):
    """Idempotent bulk writes (see the module doc of :mod:`marlseg.db.graph`)."""

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
            for part in chunks(len(rows), step):
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
        for part in chunks(len(ops), self.backend.update_chunk(self.batch_ops)):
            chunk = ops[part]
            if self.backend.transactions:
                try:
                    matched += self._in_transaction(coll, chunk)
                    continue
                except OperationFailure as e:
                    if e.code != ILLEGAL_OPERATION:  # "transactions not supported here"
                        raise
                    self.backend.no_transactions(self._where())
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
                if not self.backend.transactions:
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
        ids_ = as_ids(ids, "node ids")
        n = ids_.size
        centers = np.asarray(centers_zyx_nm, dtype=np.float64).reshape(n, len(AXES))
        columns: dict[str, np.ndarray] = {"id": ids_}
        for d, field in enumerate(self.position_fields):
            columns[field] = centers[:, d]
        columns[CELL_FIELD] = cell_keys(centers, self.cell_nm)
        if sizes is not None:
            columns["size"] = as_ids(as_column(sizes, n, "size"), "sizes")
        new: dict[str, AttributeType] = {}
        for name, values in extra_attr_arrays.items():
            if name in columns or name == "_id":
                raise ValueError(f"{name!r} cannot be an extra node attribute")
            columns[name] = as_column(values, n, name)
            if name not in self._node_specs:
                new[name] = infer_type(columns[name])
        with self._errors("registering node attributes"):
            self._register("node", new)
        self._write_rows(self.nodes, to_rows(columns), ("id",))

    def write_edges(self, u: Any, v: Any, **attr_arrays: Any) -> None:
        """Upsert edges ``(u, v)`` with per-edge attribute columns (``merge_score=...``,
        ``agglomerated=...``). Endpoints are swapped where needed so that ``u < v``; self
        loops are refused. The caller writes the edges whose ``u`` its block owns."""
        u_, v_ = as_ids(u, "u"), as_ids(v, "v")
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
            columns[name] = as_column(values, lo.size, name)
            if name not in self._edge_specs:
                new[name] = infer_type(columns[name])
        with self._errors("registering edge attributes"):
            self._register("edge", new)
        self._write_rows(self.edges, to_rows(columns), ("u", "v"))

    def write_edge_attrs(self, u: Any, v: Any, name: str, values: Any) -> int:
        """Set attribute ``name`` on existing edges (e.g. a learned ``rl_weight``); returns
        how many edges matched. Edges that do not exist are not created."""
        u_, v_ = as_ids(u, "u"), as_ids(v, "v")
        lo, hi = np.minimum(u_, v_), np.maximum(u_, v_)
        vals = as_column(values, lo.size, name)
        if name not in self._edge_specs:
            with self._errors("registering edge attributes"):
                self._register("edge", {name: infer_type(vals)})
        keys = to_rows({"u": lo, "v": hi})
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
