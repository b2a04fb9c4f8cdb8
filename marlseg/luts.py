"""Fragment -> segment lookup tables (LUTs): computing, storing, reading and applying them.

A LUT is the aligned arrays ``fragment_ids`` (sorted, every RAG node) and ``segment_ids``;
a segment's id is the smallest fragment id in it. :func:`connected_luts` makes one per
threshold from a stream of edge batches (what ``04_find_segments.py`` and the tuner run);
``run.dir/luts/<edge_score>_<t>.npz`` holds them (:func:`lut_path`, :func:`save_lut`,
:func:`load_lut`, :func:`find_lut`, :func:`lut_thresholds`; :class:`Lut` for readers that
look at sections), and :func:`apply_lut` relabels fragments through one (``05``, ``06``, the
tuner).

The union-find is vectorised: a batch's endpoints are mapped to their current roots, the
graph among those roots is solved with ``scipy.sparse.csgraph.connected_components``, and each
root points at its component's smallest root. Trees are flattened whenever they get deep.

May import: marlseg's library modules (config, errors, labels); never a stage.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from marlseg.config import Config
from marlseg.errors import ConfigError
from marlseg.labels import unique_inverse


class Components:
    """Connected components over a fixed set of node ids, fed edges batch by batch."""

    def __init__(self, node_ids: np.ndarray):
        self.ids = np.unique(np.asarray(node_ids, dtype=np.uint64))
        dtype = np.int32 if self.ids.size < 2**31 else np.int64
        self.parent = np.arange(self.ids.size, dtype=dtype)
        self._depth = 0

    def index(self, ids: np.ndarray) -> np.ndarray:
        """Dense indices of ``ids`` (which must all be nodes)."""
        ids = np.asarray(ids, dtype=np.uint64)
        idx = np.searchsorted(self.ids, ids)
        idx = np.minimum(idx, max(self.ids.size - 1, 0))
        if ids.size and (self.ids.size == 0 or not np.array_equal(self.ids[idx], ids)):
            missing = ids[(self.ids.size == 0) | (self.ids[idx] != ids)][:3]
            raise KeyError(f"edges name fragments that are not RAG nodes, e.g. {missing.tolist()}")
        return idx.astype(self.parent.dtype)

    def _find(self, x: np.ndarray) -> np.ndarray:
        r = self.parent[x]
        depth = 0
        while True:
            rr = self.parent[r]
            if np.array_equal(rr, r):
                self._depth = max(self._depth, depth)
                return r
            r = rr
            depth += 1

    def add_edges(self, u: np.ndarray, v: np.ndarray) -> None:
        """Join the components of ``u[i]`` and ``v[i]`` for every ``i``."""
        if len(u) == 0:
            return
        a = self._find(self.index(u))
        b = self._find(self.index(v))
        join = a != b
        a, b = a[join], b[join]
        if a.size == 0:
            return
        roots, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
        inverse = inverse.reshape(-1)
        m = roots.size
        graph = coo_matrix(
            (np.ones(a.size, dtype=np.int8), (inverse[: a.size], inverse[a.size :])), shape=(m, m)
        )
        n_comp, label = connected_components(graph, directed=False)
        # every root is the smallest index of its component, so the smallest root of a joined
        # component is its smallest node: the representative never depends on edge order
        rep = np.full(n_comp, np.iinfo(self.parent.dtype).max, dtype=self.parent.dtype)
        np.minimum.at(rep, label, roots)
        self.parent[roots] = rep[label]
        if self._depth > 8:
            self.flatten()

    def flatten(self) -> None:
        self.parent = self._find(np.arange(self.parent.size, dtype=self.parent.dtype))
        self._depth = 0

    def lut(self) -> tuple[np.ndarray, np.ndarray]:
        """``(fragment_ids, segment_ids)``: each node and the smallest node id of its
        component."""
        self.flatten()
        return self.ids.copy(), self.ids[self.parent]


def connected_luts(
    node_ids: np.ndarray,
    edge_batches,
    thresholds: Sequence[float],
) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """One LUT per threshold from a stream of ``(u, v, score)`` batches (one pass)."""
    comps = {float(t): Components(node_ids) for t in thresholds}
    for u, v, score in edge_batches:
        score = np.asarray(score, dtype=np.float64)
        for t, comp in comps.items():
            keep = score <= t
            comp.add_edges(np.asarray(u)[keep], np.asarray(v)[keep])
    return {t: comp.lut() for t, comp in comps.items()}


# --------------------------------------------------------------------------- LUT files


def lut_path(config: Config, threshold: float) -> Path:
    """``run.dir/luts/<edge_score>_<threshold>.npz`` (threshold with three decimals)."""
    return Path(config.run.dir) / "luts" / f"{config.segments.edge_score}_{threshold:.3f}.npz"


def save_lut(path: Path, fragment_ids: np.ndarray, segment_ids: np.ndarray) -> None:
    """Write atomically: a killed run leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            fragment_ids=fragment_ids.astype(np.uint64),
            segment_ids=segment_ids.astype(np.uint64),
        )
    os.replace(tmp, path)


def load_lut(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["fragment_ids"], data["segment_ids"]


def apply_lut(
    fragments: np.ndarray, fragment_ids: np.ndarray, segment_ids: np.ndarray
) -> np.ndarray:
    """Relabel ``fragments`` through a LUT; 0 stays 0 and ids missing from the LUT (not RAG
    nodes) keep their own id."""
    ids, inverse = unique_inverse(fragments)
    if fragment_ids.size == 0:
        mapped = ids.astype(np.uint64)
    else:
        idx = np.minimum(np.searchsorted(fragment_ids, ids), fragment_ids.size - 1)
        mapped = np.where(fragment_ids[idx] == ids, segment_ids[idx], ids).astype(np.uint64)
    mapped[ids == 0] = 0
    return mapped.astype(np.uint64)[inverse.reshape(-1)].reshape(fragments.shape)


def check_threshold(config: Config, field: str, threshold: float) -> float:
    """``threshold`` must be one of ``segments.thresholds`` (the ones that have LUTs)."""
    for t in config.segments.thresholds:
        if abs(t - threshold) < 1e-9:
            return t
    raise ConfigError(
        field,
        f"{threshold} is not one of segments.thresholds {config.segments.thresholds}",
    )


def check_lut(config: Config, field: str, threshold: float) -> Path:
    path = lut_path(config, check_threshold(config, field, threshold))
    if not path.is_file():
        raise ConfigError(
            field, f"no LUT for threshold {threshold} ({path}): run 04_find_segments.py first"
        )
    return path


@dataclass
class Lut:
    """A fragment -> segment lookup table (one threshold)."""

    fragment_ids: np.ndarray
    segment_ids: np.ndarray
    path: Path

    @classmethod
    def load(cls, path: Path) -> Lut:
        try:
            with np.load(path) as f:
                frags, segs = f["fragment_ids"], f["segment_ids"]
        except (OSError, KeyError, ValueError) as e:
            raise ConfigError(str(path), f"not a LUT (fragment_ids, segment_ids): {e}") from None
        if frags.shape != segs.shape or frags.ndim != 1:
            raise ConfigError(
                str(path), f"fragment_ids {frags.shape} and segment_ids {segs.shape} differ"
            )
        order = np.argsort(frags, kind="stable")
        return cls(frags[order].astype(np.uint64), segs[order].astype(np.uint64), Path(path))

    def apply(self, fragments: np.ndarray) -> np.ndarray:
        """Relabel ``fragments`` as :func:`apply_lut` does (0 and ids the table does not list
        keep their value)."""
        return apply_lut(np.asarray(fragments), self.fragment_ids, self.segment_ids)


def find_lut(config: Config, threshold: float) -> Path | None:
    """The LUT of ``threshold`` for ``segments.edge_score`` under ``run.dir/luts``. The
    threshold part of the name is compared as a number, so ``0.5``, ``0.50`` and ``0.500`` all
    match."""
    luts = Path(config.run.dir) / "luts"
    prefix = f"{config.segments.edge_score}_"
    if not luts.is_dir():
        return None
    for path in sorted(luts.glob(f"{prefix}*.npz")):
        try:
            t = float(path.stem[len(prefix) :])
        except ValueError:
            continue
        if math.isclose(t, threshold, abs_tol=1e-6):
            return path
    return None


def lut_thresholds(config: Config) -> list[float]:
    """Thresholds that have a LUT under ``run.dir/luts``."""
    luts = Path(config.run.dir) / "luts"
    prefix = f"{config.segments.edge_score}_"
    found = []
    for path in sorted(luts.glob(f"{prefix}*.npz")) if luts.is_dir() else []:
        try:
            found.append(float(path.stem[len(prefix) :]))
        except ValueError:
            continue
    return sorted(found)
