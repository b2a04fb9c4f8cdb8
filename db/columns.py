"""Numpy columns <-> BSON documents: the conversions of the array API and the funlib adapter.

Ids are int64 in the database (what BSON stores) and uint64 when read (the fragments'
dtype); rows are plain Python scalars; a column read with missing values is float64 with NaN
there. May import numpy, funlib and :mod:`marlseg.db.schema` (the attribute types).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from funlib.persistence.graphs.graph_database import AttributeType
from funlib.persistence.types import Vec

from .schema import dtype_of

Columns = dict[str, np.ndarray]


def as_ids(values: Any, what: str) -> np.ndarray:
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


def as_column(values: Any, n: int, name: str) -> np.ndarray:
    """``values`` as a column of ``n`` rows (a scalar is repeated)."""
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = np.full(n, arr.item())
    if arr.shape[0] != n:
        raise ValueError(f"attribute {name!r} has {arr.shape[0]} values for {n} rows")
    return arr


def to_rows(columns: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Row documents from equally long columns (``tolist`` makes plain Python scalars, which
    is what BSON encodes -- and much faster than per-element conversion)."""
    names = list(columns)
    lists = [np.asarray(c).tolist() for c in columns.values()]
    return [dict(zip(names, row)) for row in zip(*lists)]


def to_columns(
    docs: list[dict[str, Any]], fields: list[str], specs: Mapping[str, AttributeType]
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
            dtype = dtype_of(spec)
        arr = np.asarray(values, dtype=dtype)
        if isinstance(spec, Vec) and arr.ndim == 1:
            arr = arr.reshape(len(values), spec.size)
        out[f] = arr
    return out


def plain(data: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
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


def chunks(n: int, size: int) -> Iterator[slice]:
    """Slices of ``range(n)`` of at most ``size`` each."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
