"""The RAG's schema: attribute types, the ``meta`` document, the indexes, the schema version.

The ``meta`` collection holds one document (``_id`` :data:`META_ID`): schema version,
attribute specs, position fields, total ROI and voxel size (when known), cell size -- and the
owning run (see :mod:`marlseg.ownership`). :class:`Schema` creates it on first open (safe for
many workers at once), refuses a database of another schema version or geometry, and
registers attribute specs (adding is free, a changed type is an error). May import
funlib, pymongo, numpy and the modules of :mod:`marlseg.db` below it (base, cells, errors).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from contextlib import suppress
from typing import Any, Literal

import numpy as np
from funlib.geometry import Roi
from funlib.persistence.graphs.graph_database import AttributeType
from funlib.persistence.types import Vec, type_to_str
from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from .base import GraphBase
from .cells import AXES, CELL_FIELD
from .errors import DbError

SCHEMA_VERSION = 1
"""Bumped whenever the stored layout changes; a database of another version is refused."""

META_ID = "marlseg_rag"
DEFAULT_POSITION_ATTRIBUTE = "center"
DEFAULT_NODE_ATTRS: dict[str, AttributeType] = {"size": int}
DEFAULT_EDGE_ATTRS: dict[str, AttributeType] = {"merge_score": float, "agglomerated": bool}


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


def infer_type(values: np.ndarray) -> AttributeType:
    """The attribute type of a column written through the array API."""
    kind = values.dtype.kind
    base: type = float if kind == "f" else int if kind in "iu" else bool if kind == "b" else str
    if values.ndim == 2:
        return Vec(base, int(values.shape[1]))
    return base


def dtype_of(spec: AttributeType) -> Any:
    """The numpy dtype a column of attribute type ``spec`` is read as."""
    base = spec.dtype if isinstance(spec, Vec) else spec
    return {int: np.int64, float: np.float64, bool: np.bool_}.get(base, object)  # type: ignore[call-overload]


# ------------------------------------------------------------------------------ meta, indexes
class Schema(GraphBase):
    """The meta document and the indexes of one opened RAG database."""

    def _open(
        self, node_attrs: Mapping[str, AttributeType], edge_attrs: Mapping[str, AttributeType]
    ) -> None:
        if self.mode == "w":
            self.meta.delete_many({})
            self.backend.empty(self.nodes)
            self.backend.empty(self.edges)
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

    # ------------------------------------------------------------------ attribute specs
    @property
    def node_attrs(self) -> dict[str, AttributeType]:
        """Node attribute specs, the position attribute (``Vec(float, 3)``) first."""
        return {self.position_attribute: Vec(float, len(AXES)), **self._node_specs}

    @property
    def edge_attrs(self) -> dict[str, AttributeType]:
        return dict(self._edge_specs)
