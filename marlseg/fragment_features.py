"""Per-fragment and per-contact features pooled from the volumes, for the edge-weight learner.

:func:`pool_fragment_features` streams z-slabs of the fragments (and raw / boundary) volumes,
so memory holds one slab at a time; :func:`shape_features` turns a graph's moments into the
actor's shape inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from funlib.geometry import Coordinate, Roi

if TYPE_CHECKING:
    from funlib.persistence import Array

    from marlseg.priors import RagGraph

__all__ = ["FragmentStats", "pool_fragment_features", "shape_features"]


@dataclass
class FragmentStats:
    """Per-fragment (and per-edge contact) statistics pooled from the volumes."""

    counts: np.ndarray
    """(N,) voxels found per fragment."""
    centers: np.ndarray
    """(N, 3) centre of mass, nm."""
    moments: np.ndarray
    """(N, 6) central second moments, nm² (zz, yy, xx, zy, zx, yx)."""
    at_border: np.ndarray
    """(N,) touches the volume border."""
    features: dict[str, np.ndarray]
    """Named (N,) features: ``raw_mean``, ``raw_std``, ``boundary_mean``, ``boundary_std``."""
    contact_area: np.ndarray
    """(E,) face-adjacent voxel pairs between the two fragments."""
    contact_boundary: np.ndarray
    """(E,) mean boundary value along the contact (max of the two voxels), NaN if none."""


def pool_fragment_features(
    fragments: Array,
    node_ids: np.ndarray,
    edges: np.ndarray,
    raw: Array | None = None,
    boundary: Array | None = None,
    boundary_from_affs: bool = False,
    slab_sections: int = 32,
) -> FragmentStats:
    """Stream z-slabs of ``slab_sections`` sections through the volumes and pool per fragment.

    ``boundary``: a boundary map (1 = membrane), or affinities with ``boundary_from_affs``
    (boundary = 1 - mean over channels). ``raw`` and ``boundary`` must share the fragments'
    voxel size; they are read over the fragments' ROI (zero outside their own). Only one slab
    (plus one section of overlap for contacts across slabs) is in memory at a time.
    """
    from marlseg.volumes import read

    node_ids = np.asarray(node_ids, dtype=np.uint64)
    order = np.argsort(node_ids)
    sorted_ids = node_ids[order]
    n = len(node_ids)
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    ekey = np.minimum(edges[:, 0], edges[:, 1]) * n + np.maximum(edges[:, 0], edges[:, 1])
    eorder = np.argsort(ekey)
    ekey_sorted = ekey[eorder]

    vs = Coordinate(fragments.voxel_size)
    roi = fragments.roi
    shape = roi.shape / vs
    sums: dict[str, np.ndarray] = {
        k: np.zeros(n)
        for k in ("count", "z", "y", "x", "zz", "yy", "xx", "zy", "zx", "yx", "border")
    }
    for k in ("raw", "raw2", "bnd", "bnd2"):
        sums[k] = np.zeros(n)
    area = np.zeros(len(edges))
    bsum = np.zeros(len(edges))
    # shift coordinates to the ROI centre: second moments stay well conditioned in float64
    origin = np.asarray(roi.center, dtype=np.float64)

    def index_of(ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(sorted_ids, ids)
        pos = np.minimum(pos, max(n - 1, 0))
        ok = (sorted_ids[pos] == ids) & (ids != 0) if n else np.zeros(ids.shape, bool)
        return np.where(ok, order[pos], -1)

    def contacts(a: np.ndarray, b: np.ndarray, bval: np.ndarray | None) -> None:
        m = (a != b) & (a >= 0) & (b >= 0)
        if not m.any():
            return
        a, b = a[m], b[m]
        key = np.minimum(a, b) * n + np.maximum(a, b)
        pos = np.searchsorted(ekey_sorted, key)
        pos = np.minimum(pos, len(ekey_sorted) - 1)
        hit = ekey_sorted[pos] == key
        e = eorder[pos[hit]]
        area[:] += np.bincount(e, minlength=len(edges))
        if bval is not None:
            bsum[:] += np.bincount(e, weights=bval[m][hit], minlength=len(edges))

    def load_boundary(r: Roi) -> np.ndarray | None:
        if boundary is None:
            return None
        data = read(boundary, r)
        scale = 255.0 if data.dtype == np.uint8 else 1.0
        data = data.astype(np.float32) / scale
        if boundary_from_affs:
            data = 1.0 - data.reshape(-1, *data.shape[-3:]).mean(axis=0)
        return data

    prev_ids = prev_b = None
    for z0 in range(0, int(shape[0]), slab_sections):
        z1 = min(int(shape[0]), z0 + slab_sections)
        sroi = Roi(
            roi.begin + Coordinate(z0 * vs[0], 0, 0), Coordinate((z1 - z0) * vs[0], *roi.shape[1:])
        )
        ids = index_of(read(fragments, sroi).astype(np.uint64))
        b = load_boundary(sroi)
        flat = ids.ravel()
        valid = flat >= 0
        f = flat[valid]

        def add(key: str, values: np.ndarray | float, f=f, valid=valid) -> None:
            w = np.full(len(f), values) if np.isscalar(values) else np.ravel(values)[valid]
            sums[key] += np.bincount(f, weights=w, minlength=n)

        zz, yy, xx = np.meshgrid(
            (np.arange(z0, z1) + 0.5) * vs[0] + roi.begin[0] - origin[0],
            (np.arange(shape[1]) + 0.5) * vs[1] + roi.begin[1] - origin[1],
            (np.arange(shape[2]) + 0.5) * vs[2] + roi.begin[2] - origin[2],
            indexing="ij",
        )
        add("count", 1.0)
        for name, c in (("z", zz), ("y", yy), ("x", xx)):
            add(name, c)
        for name, c1, c2 in (
            ("zz", zz, zz),
            ("yy", yy, yy),
            ("xx", xx, xx),
            ("zy", zz, yy),
            ("zx", zz, xx),
            ("yx", yy, xx),
        ):
            add(name, c1 * c2)
        edge_mask = np.zeros(ids.shape, dtype=np.float64)
        edge_mask[:, [0, -1], :] = 1
        edge_mask[:, :, [0, -1]] = 1
        if z0 == 0:
            edge_mask[0] = 1
        if z1 == int(shape[0]):
            edge_mask[-1] = 1
        add("border", edge_mask)
        if raw is not None:
            r = read(raw, sroi).astype(np.float64)
            r = r.reshape(-1, *r.shape[-3:]).mean(axis=0)
            add("raw", r)
            add("raw2", r * r)
        if b is not None:
            add("bnd", b)
            add("bnd2", b.astype(np.float64) ** 2)
        # contacts: within the slab along z, y and x, and across the previous slab along z
        for axis in range(3):
            lo = tuple(slice(None, -1) if d == axis else slice(None) for d in range(3))
            hi = tuple(slice(1, None) if d == axis else slice(None) for d in range(3))
            contacts(ids[hi], ids[lo], None if b is None else np.maximum(b[hi], b[lo]))
        if prev_ids is not None:
            contacts(
                ids[0],
                prev_ids,
                None if b is None or prev_b is None else np.maximum(b[0], prev_b),
            )
        prev_ids = ids[-1].copy()
        prev_b = None if b is None else b[-1].copy()

    cnt = sums["count"]
    safe = np.maximum(cnt, 1.0)
    mean = np.stack([sums["z"], sums["y"], sums["x"]], axis=1) / safe[:, None]
    mom = np.stack(
        [
            sums["zz"] / safe - mean[:, 0] ** 2,
            sums["yy"] / safe - mean[:, 1] ** 2,
            sums["xx"] / safe - mean[:, 2] ** 2,
            sums["zy"] / safe - mean[:, 0] * mean[:, 1],
            sums["zx"] / safe - mean[:, 0] * mean[:, 2],
            sums["yx"] / safe - mean[:, 1] * mean[:, 2],
        ],
        axis=1,
    )
    # a voxel is a cube, not a point: add its own variance (s²/12 per axis)
    mom[:, :3] += (np.asarray(vs, dtype=np.float64) ** 2 / 12.0)[None]
    feats: dict[str, np.ndarray] = {}
    if raw is not None:
        m = sums["raw"] / safe
        feats["raw_mean"] = m
        feats["raw_std"] = np.sqrt(np.maximum(sums["raw2"] / safe - m * m, 0))
    if boundary is not None:
        m = sums["bnd"] / safe
        feats["boundary_mean"] = m
        feats["boundary_std"] = np.sqrt(np.maximum(sums["bnd2"] / safe - m * m, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        cb = np.where(area > 0, bsum / np.maximum(area, 1), np.nan)
    if boundary is None:
        cb[:] = np.nan
    return FragmentStats(
        counts=cnt,
        centers=mean + origin[None],
        moments=mom,
        at_border=sums["border"] > 0,
        features=feats,
        contact_area=area,
        contact_boundary=cb,
    )


def shape_features(graph: RagGraph) -> np.ndarray:
    """(N, 4) shape features of each fragment: log volume, log principal axis lengths."""
    ev = np.linalg.eigvalsh(graph.node_covariances())
    ev = np.maximum(ev, 1e-6)
    return np.column_stack([np.log(np.maximum(graph.sizes, 1.0)), 0.5 * np.log(ev)])
