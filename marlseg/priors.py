"""High-level priors: rewards for objects, without ground truth.

A prior looks at one partition of the RAG and gives every object a reward in ``[0, 1]``
(1 = plausible). Priors need not be differentiable: the critic learns what they reward. All
priors share one interface, :class:`Prior`, and read one value object, :class:`Objects`
(the partition with per-object statistics computed once, lazily), so a new prior is a small
class with an ``object_rewards(objects)`` method, registered in :data:`PRIORS`.

Object rewards become edge rewards by the larger reward of an edge's two objects
(:func:`max_to_edges`); a prior that is about edges may reward edges directly instead
(:meth:`Prior.edge_rewards`). The priors shipped fit neurons in EM:

- ``size``: a plausible range of segment volumes (µm³), soft in log-volume outside it; the
  lower bound is not applied to objects touching the volume or crop border (they are cut, so
  their true size is only known to be larger).
- ``elongation``: neurites are tubes: the ratio of the two largest principal axes of an object
  (from exact per-fragment voxel moments when available, else fragments as balls) should reach
  ``min_ratio``; objects too small to have a shape are not judged.
- ``membrane``: no merge across strong membrane evidence (an edge inside an object with
  evidence above ``merge_above``), and no split along an edge without membrane evidence
  (a cut edge below ``split_below``). Evidence is an edge attribute in ``[0, 1]``, high =
  membrane (``merge_score`` of waterz, or the mean boundary along the contact). It is about
  edges, so by default it rewards edges directly (``level="edge"``); ``level="object"``
  makes it a constraint on whole objects like the others.
- ``tiny``: a limited count of tiny segments: when more than ``max_count`` objects are smaller
  than ``max_um3``, each of them gets ``max_count / count``.

Priors on thickness and on an object's neighbours (``thickness``, ``bridge``, ``blob``) are in
:mod:`marlseg.context_priors`.

:class:`CompositePrior` is their weighted mean. Sub-graph rewards (means of edge rewards) are the
environment's business (:mod:`marlseg.edge_rl`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "RagGraph",
    "Objects",
    "Prior",
    "SizePrior",
    "ElongationPrior",
    "MembranePrior",
    "TinySegmentsPrior",
    "CompositePrior",
    "max_to_edges",
    "PRIORS",
    "build_priors",
]


@dataclass
class RagGraph:
    """A region adjacency graph with what the priors and the networks read.

    Node arrays are indexed ``0..N-1`` (``node_ids`` keeps the database ids); edges are
    ``(E, 2)`` index pairs with ``u < v``.
    """

    node_ids: np.ndarray
    """(N,) fragment ids as stored in the database."""
    edges: np.ndarray
    """(E, 2) node indices."""
    sizes: np.ndarray
    """(N,) voxel counts."""
    centers: np.ndarray
    """(N, 3) centres of mass, nm (z, y, x)."""
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """nm per voxel (z, y, x): voxel counts times its product are volumes."""
    node_features: np.ndarray | None = None
    """(N, F) features the actor and critic see (standardised by the environment)."""
    edge_features: np.ndarray | None = None
    """(E, G) edge features the networks see."""
    evidence: np.ndarray | None = None
    """(E,) membrane evidence in [0, 1] (high = boundary) for the ``membrane`` prior."""
    moments: np.ndarray | None = None
    """(N, 6) central second moments per fragment, nm² (zz, yy, xx, zy, zx, yx); ``None``:
    fragments are taken as balls of their volume."""
    at_border: np.ndarray | None = None
    """(N,) fragment touches the volume (or crop) border."""
    base_weights: np.ndarray | None = None
    """(E,) weights in [0, 1] the policy starts from (e.g. ``merge_score``); ``None``: 0.5."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.node_ids = np.asarray(self.node_ids)
        self.edges = np.asarray(self.edges, dtype=np.int64).reshape(-1, 2)
        self.sizes = np.asarray(self.sizes, dtype=np.float64)
        self.centers = np.asarray(self.centers, dtype=np.float64).reshape(-1, 3)
        n = len(self.node_ids)
        if len(self.sizes) != n or len(self.centers) != n:
            raise ValueError("node_ids, sizes and centers must have one row per node")
        if len(self.edges) and (self.edges.min() < 0 or self.edges.max() >= n):
            raise ValueError("edges must index nodes 0..N-1")
        if self.at_border is None:
            self.at_border = np.zeros(n, dtype=bool)

    @property
    def n_nodes(self) -> int:
        return len(self.node_ids)

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def voxel_um3(self) -> float:
        return float(np.prod(self.voxel_size)) * 1e-9

    def node_covariances(self) -> np.ndarray:
        """(N, 3, 3) spatial covariance of each fragment's voxels, nm²."""
        if self.moments is not None:
            return self._covariances(np.asarray(self.moments, dtype=np.float64))
        return self._covariances(self.ball_moments())

    @staticmethod
    def _covariances(m: np.ndarray) -> np.ndarray:
        cov = np.empty((len(m), 3, 3))
        cov[:, 0, 0], cov[:, 1, 1], cov[:, 2, 2] = m[:, 0], m[:, 1], m[:, 2]
        cov[:, 0, 1] = cov[:, 1, 0] = m[:, 3]
        cov[:, 0, 2] = cov[:, 2, 0] = m[:, 4]
        cov[:, 1, 2] = cov[:, 2, 1] = m[:, 5]
        return cov

    def ball_moments(self) -> np.ndarray:
        """(N, 6) moments of balls of the fragments' volumes (variance r²/5 per axis): the
        stand-in when a fragment's voxels were not seen."""
        vol = self.sizes * float(np.prod(self.voxel_size))
        r2 = (3.0 * vol / (4.0 * np.pi)) ** (2.0 / 3.0)
        m = np.zeros((self.n_nodes, 6))
        m[:, :3] = (r2 / 5.0)[:, None]
        return m

    def subgraph(self, nodes: np.ndarray) -> RagGraph:
        """The graph induced by ``nodes`` (indices); nodes that lose an edge are marked as at
        the border (their object continues outside)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        index = np.full(self.n_nodes, -1, dtype=np.int64)
        index[nodes] = np.arange(len(nodes))
        iu, iv = index[self.edges[:, 0]], index[self.edges[:, 1]]
        keep = (iu >= 0) & (iv >= 0)
        cut = (iu >= 0) ^ (iv >= 0)
        border = self.at_border.copy()
        border[self.edges[cut].ravel()] = True

        def rows(a: np.ndarray | None, sel: np.ndarray) -> np.ndarray | None:
            return None if a is None else np.asarray(a)[sel]

        return RagGraph(
            node_ids=self.node_ids[nodes],
            edges=np.stack([iu[keep], iv[keep]], axis=1),
            sizes=self.sizes[nodes],
            centers=self.centers[nodes],
            voxel_size=self.voxel_size,
            node_features=rows(self.node_features, nodes),
            edge_features=rows(self.edge_features, keep),
            evidence=rows(self.evidence, keep),
            moments=rows(self.moments, nodes),
            at_border=border[nodes],
            base_weights=rows(self.base_weights, keep),
            extra={"parent_nodes": nodes, "parent_edges": np.flatnonzero(keep)},
        )


class Objects:
    """One partition of a :class:`RagGraph` and per-object statistics (computed on demand)."""

    def __init__(self, graph: RagGraph, labels: np.ndarray):
        self.graph = graph
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != graph.n_nodes:
            raise ValueError("one label per node expected")
        self.count = int(self.labels.max()) + 1 if len(self.labels) else 0

    def _sum(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.labels, weights=values, minlength=self.count)

    @cached_property
    def sizes(self) -> np.ndarray:
        """Voxels per object."""
        return self._sum(self.graph.sizes)

    @cached_property
    def volumes_um3(self) -> np.ndarray:
        return self.sizes * self.graph.voxel_um3

    @cached_property
    def n_fragments(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.count)

    @cached_property
    def at_border(self) -> np.ndarray:
        return self._sum(self.graph.at_border.astype(np.float64)) > 0

    @cached_property
    def edge_objects(self) -> tuple[np.ndarray, np.ndarray]:
        """Object of each edge's two ends."""
        e = self.graph.edges
        return self.labels[e[:, 0]], self.labels[e[:, 1]]

    @cached_property
    def internal(self) -> np.ndarray:
        """(E,) the edge lies inside one object (a merge)."""
        a, b = self.edge_objects
        return a == b

    @cached_property
    def covariances(self) -> np.ndarray:
        """(K, 3, 3) spatial covariance of each object's voxels, nm² (combined exactly from
        the fragments' sizes, centres and covariances: the parallel axis theorem)."""
        g = self.graph
        w = g.sizes
        c = g.centers - np.average(g.centers, axis=0, weights=np.maximum(w, 1e-12))
        second = g.node_covariances() + c[:, :, None] * c[:, None, :]
        n = np.maximum(self.sizes, 1e-12)
        mean = np.stack([self._sum(w * c[:, i]) for i in range(3)], axis=1) / n[:, None]
        cov = np.empty((self.count, 3, 3))
        for i in range(3):
            for j in range(i, 3):
                cov[:, i, j] = cov[:, j, i] = self._sum(w * second[:, i, j]) / n
        return cov - mean[:, :, None] * mean[:, None, :]

    @cached_property
    def axis_ratio(self) -> np.ndarray:
        """(K,) ratio of the largest to the second largest principal axis length."""
        ev = np.linalg.eigvalsh(self.covariances)  # ascending
        ev = np.maximum(ev, 1e-12)
        return np.sqrt(ev[:, 2] / ev[:, 1])


def max_to_edges(objects: Objects, object_rewards: np.ndarray) -> np.ndarray:
    """(E,) the larger reward of each edge's two objects (an edge inside one object gets
    that object's reward)."""
    a, b = objects.edge_objects
    return np.maximum(object_rewards[a], object_rewards[b])


class Prior(ABC):
    """A reward for each object of a partition, in ``[0, 1]`` (1 = plausible)."""

    name: ClassVar[str]
    weight: float = 1.0

    @abstractmethod
    def object_rewards(self, objects: Objects) -> np.ndarray:
        """(K,) rewards, one per object label."""

    @property
    def edge_level(self) -> bool:
        """Rewards edges directly (:meth:`edge_rewards`) instead of through objects."""
        return getattr(self, "level", "object") == "edge"

    def edge_rewards(self, objects: Objects) -> np.ndarray:
        """(E,) rewards per edge: the object rewards mapped by :func:`max_to_edges`."""
        return max_to_edges(objects, self.object_rewards(objects))


def _soft_log_range(x: np.ndarray, lo: float | None, hi: float | None, softness: float):
    """1 inside ``[lo, hi]``, a Gaussian in ``log(x)`` outside (``softness`` = its sigma)."""
    x = np.maximum(np.asarray(x, dtype=np.float64), 1e-30)
    d = np.zeros_like(x)
    if lo is not None:
        d = np.where(x < lo, np.log(lo / x), d)
    if hi is not None:
        d = np.where(x > hi, np.log(x / hi), d)
    return np.exp(-0.5 * (d / softness) ** 2)


@dataclass
class SizePrior(Prior):
    """Objects between ``min_um3`` and ``max_um3`` µm³ (soft outside, in log-volume)."""

    min_um3: float | None = None
    max_um3: float | None = None
    softness: float = 0.5
    weight: float = 1.0
    name: ClassVar[str] = "size"

    def object_rewards(self, objects: Objects) -> np.ndarray:
        vol = objects.volumes_um3
        low = _soft_log_range(vol, self.min_um3, None, self.softness)
        low = np.where(objects.at_border, 1.0, low)  # cut objects: only "at least" is known
        return low * _soft_log_range(vol, None, self.max_um3, self.softness)


@dataclass
class ElongationPrior(Prior):
    """Tubular objects: principal axis ratio ``>= min_ratio`` (linear ramp from 1); objects
    under ``min_um3`` are not judged (reward 1)."""

    min_ratio: float = 3.0
    min_um3: float = 0.0
    weight: float = 1.0
    name: ClassVar[str] = "elongation"

    def object_rewards(self, objects: Objects) -> np.ndarray:
        ramp = np.clip((objects.axis_ratio - 1.0) / max(self.min_ratio - 1.0, 1e-6), 0.0, 1.0)
        return np.where(objects.volumes_um3 < self.min_um3, 1.0, ramp)


@dataclass
class MembranePrior(Prior):
    """No merge across evidence ``> merge_above``, no split along evidence ``< split_below``.

    A violation ramps linearly from the bound to the extreme (evidence 1 for a merge, 0 for
    a split). ``level="edge"``: each edge is rewarded for itself, ``1 - violation`` (the prior
    is about edges, and a local reward is what the critic can learn from a random start);
    ``level="object"``: an object's reward is ``1 - worst violation`` among its internal
    (merge) and cut (split) edges, a hard constraint on whole objects."""

    merge_above: float = 0.9
    split_below: float = 0.5
    level: str = "edge"
    weight: float = 1.0
    name: ClassVar[str] = "membrane"

    def __post_init__(self) -> None:
        if self.level not in ("edge", "object"):
            raise ValueError(f"membrane prior level must be 'edge' or 'object', got {self.level!r}")

    def violations(self, objects: Objects) -> tuple[np.ndarray, np.ndarray]:
        ev = objects.graph.evidence
        if ev is None:
            raise ValueError("the membrane prior needs edge evidence (graph.evidence)")
        ev = np.asarray(ev, dtype=np.float64)
        merge_v = np.clip((ev - self.merge_above) / max(1.0 - self.merge_above, 1e-6), 0, 1)
        split_v = np.clip((self.split_below - ev) / max(self.split_below, 1e-6), 0, 1)
        return merge_v, split_v

    def edge_level_rewards(self, objects: Objects) -> np.ndarray:
        merge_v, split_v = self.violations(objects)
        return 1.0 - np.where(objects.internal, merge_v, split_v)

    def object_rewards(self, objects: Objects) -> np.ndarray:
        merge_v, split_v = self.violations(objects)
        a, b = objects.edge_objects
        internal = objects.internal
        worst = np.zeros(objects.count)
        np.maximum.at(worst, a[internal], merge_v[internal])
        cut = ~internal
        np.maximum.at(worst, a[cut], split_v[cut])
        np.maximum.at(worst, b[cut], split_v[cut])
        return 1.0 - worst

    def edge_rewards(self, objects: Objects) -> np.ndarray:
        if self.level == "edge":
            return self.edge_level_rewards(objects)
        return super().edge_rewards(objects)


@dataclass
class TinySegmentsPrior(Prior):
    """At most ``max_count`` objects below ``max_um3`` µm³; beyond that each tiny object gets
    ``max_count / count``."""

    max_um3: float = 0.001
    max_count: int = 0
    weight: float = 1.0
    name: ClassVar[str] = "tiny"

    def object_rewards(self, objects: Objects) -> np.ndarray:
        tiny = objects.volumes_um3 < self.max_um3
        n = int(tiny.sum())
        r = 1.0 if n <= self.max_count else self.max_count / n
        return np.where(tiny, r, 1.0)


class CompositePrior(Prior):
    """Several priors, weighted. Object-level priors are averaged per object and the mean is
    mapped to the edges by the max of the two incident objects; edge-level priors add their
    edge rewards; the edge reward is the weighted mean of both parts."""

    name: ClassVar[str] = "composite"

    def __init__(self, priors: list[Prior]):
        if not priors:
            raise ValueError("at least one prior is needed")
        self.priors = priors

    @property
    def object_priors(self) -> list[Prior]:
        return [p for p in self.priors if not p.edge_level]

    def per_prior(self, objects: Objects) -> dict[str, np.ndarray]:
        """Each prior's own edge rewards (diagnostics)."""
        return {p.name: p.edge_rewards(objects) for p in self.priors}

    def object_rewards(self, objects: Objects) -> np.ndarray:
        """(K,) weighted mean of the object-level priors (ones if there are none)."""
        obj = self.object_priors
        total = sum(p.weight for p in obj)
        if not obj or total <= 0:
            return np.ones(objects.count)
        out = np.zeros(objects.count)
        for p in obj:
            out += p.weight * p.object_rewards(objects)
        return out / total

    def edge_rewards(self, objects: Objects) -> np.ndarray:
        obj = self.object_priors
        w_obj = sum(p.weight for p in obj)
        total = sum(p.weight for p in self.priors)
        if total <= 0:
            raise ValueError("the priors' weights sum to 0")
        out = np.zeros(objects.graph.n_edges)
        if obj and w_obj > 0:
            out += w_obj * max_to_edges(objects, self.object_rewards(objects))
        for p in self.priors:
            if p.edge_level:
                out += p.weight * p.edge_rewards(objects)
        return out / total


PRIORS: dict[str, type[Prior]] = {
    p.name: p for p in (SizePrior, ElongationPrior, MembranePrior, TinySegmentsPrior)
}
"""Prior name (the key under ``edge_rl.priors``) -> class; its fields are the keyword
arguments."""


def build_priors(spec: dict[str, dict[str, Any] | None]) -> CompositePrior:
    """``{"size": {"min_um3": ..}, "membrane": {...}, ...}`` -> a :class:`CompositePrior`
    (``None`` entries are disabled)."""
    from marlseg.context_priors import BlobPrior, BridgePrior, ThicknessPrior

    known = PRIORS | {p.name: p for p in (ThicknessPrior, BridgePrior, BlobPrior)}
    priors = []
    for name, kwargs in spec.items():
        if kwargs is None:
            continue
        if name not in known:
            raise ValueError(f"unknown prior {name!r}; known: {', '.join(known)}")
        priors.append(known[name](**kwargs))
    return CompositePrior(priors)
