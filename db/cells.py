"""Positions and ROIs: half-open ROI containment and the ``cell`` key of a node.

``cell`` packs a position's ``cell_nm`` grid cell into one integer (z most significant), so
that the cells of one (z, y) row are one integer range: the embedded server answers only
one-field queries from an index, so it reads a ROI as ranges of ``cell``
(:func:`cell_queries`). May import numpy and funlib.geometry only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from funlib.geometry import Roi

AXES = ("z", "y", "x")
CELL_FIELD = "cell"
DEFAULT_CELL_NM = (500, 500, 500)
"""Edge of the spatial cells behind the ``cell`` key, nm (about a fragments block)."""
CELL_BITS = 20
MAX_CELL_QUERIES = 64
"""More (z, y) cell rows than this in one ROI: read its z slab instead."""


def roi_bounds(roi: Roi | None) -> list[tuple[float | None, float | None]]:
    if roi is None:
        return [(None, None)] * len(AXES)
    begin, end = roi.begin, roi.end
    return [(begin[d], end[d]) for d in range(len(AXES))]


def in_roi(pos: Sequence[float] | None, roi: Roi | None) -> bool:
    """Half-open containment on world coordinates (floats; funlib's Coordinate would cast)."""
    if roi is None:
        return True
    if pos is None:
        return False
    for p, (b, e) in zip(pos, roi_bounds(roi)):
        if p is None or (b is not None and p < b) or (e is not None and p >= e):
            return False
    return True


def cell_coords(values: np.ndarray, cell_nm: float) -> np.ndarray:
    """Cell index along one axis, offset so that negative positions work, clipped to
    ``CELL_BITS`` bits."""
    c = np.floor(np.asarray(values, dtype=np.float64) / cell_nm) + (1 << (CELL_BITS - 1))
    return np.clip(np.nan_to_num(c, nan=0.0), 0, (1 << CELL_BITS) - 1).astype(np.int64)


def cell_keys(centers_zyx: np.ndarray, cell_nm: Sequence[float]) -> np.ndarray:
    """The ``cell`` key of each position: z, y, x cell indices packed into one integer, z
    most significant, so that the cells of one (z, y) row are one integer range."""
    centers_zyx = np.asarray(centers_zyx, dtype=np.float64).reshape(-1, len(AXES))
    cz, cy, cx = (cell_coords(centers_zyx[:, d], cell_nm[d]) for d in range(len(AXES)))
    return (cz << (2 * CELL_BITS)) | (cy << CELL_BITS) | cx


def cell_queries(
    roi: Roi | None, conds: Mapping[str, dict[str, Any]], cell_nm: Sequence[float]
) -> list[dict[str, Any]]:
    """One-field queries whose union holds every node of ``roi``: one ``cell`` range per
    (z, y) row of cells it touches, or (a huge or unbounded ROI) the first of ``conds``, the
    position conditions (``center_z``: the position index's prefix)."""
    bounds = roi_bounds(roi)
    if roi is not None and all(b is not None and e is not None for b, e in bounds):
        lo = [int(cell_coords(np.array([b]), c)[0]) for (b, _), c in zip(bounds, cell_nm)]
        hi = [
            int(cell_coords(np.array([np.nextafter(float(e), -math.inf)]), c)[0])
            for (_, e), c in zip(bounds, cell_nm)
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
