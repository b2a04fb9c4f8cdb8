"""The state every part of :class:`~marlseg.db.graph.MongoDbGraphDatabase` shares, and its
error wrapping.

:class:`GraphBase` names the attributes that ``MongoDbGraphDatabase.__init__`` sets (the
collections, the :class:`~marlseg.db.backend.Backend`, the attribute specs, the geometry) and
holds the three helpers every part uses: :meth:`~GraphBase._errors` (driver errors become one
line :class:`DbError` with the URI masked), :meth:`~GraphBase._where` and
:meth:`~GraphBase._check_writable`. May import pymongo, funlib and the modules of
:mod:`marlseg.db` below it (backend, connection, errors).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from funlib.geometry import Roi
from funlib.persistence.graphs.graph_database import AttributeType
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, PyMongoError

from .backend import Backend
from .connection import db_error, mask_uri
from .errors import DbError


class GraphBase:
    """Attributes and helpers shared by the parts of the graph database (set at open)."""

    uri: str
    db_name: str
    mode: str
    position_attribute: str
    position_fields: list[str]
    endpoint_names: list[str]
    write_strategy: Literal["insert_first", "upsert"]
    batch_ops: int
    cell_nm: tuple[float, ...]
    total_roi: Roi | None
    voxel_size: tuple[int, ...] | None
    client: MongoClient
    db: Database
    nodes: Collection
    edges: Collection
    meta: Collection
    backend: Backend
    _node_specs: dict[str, AttributeType]
    _edge_specs: dict[str, AttributeType]

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

    def _check_writable(self) -> None:
        if self.mode == "r":
            raise RuntimeError(f"the RAG in {self._where()} was opened read-only (mode 'r')")
