"""Priors on an object's thickness and on its neighbours: what ``merge_score`` cannot see.

``merge_score`` judges one contact at a time; these priors judge the objects a partition
makes and the objects around them (all in the :class:`~marlseg.priors.Prior` interface):

- ``thickness``: neurites are long *and thin*: an object's radius across its long axis (twice
  the standard deviation along its second principal axis) should stay below ``max_nm``; a
  merge of two parallel neurites, or of a neurite with a body beside it, is thick.
- ``bridge``: a small object (below ``max_um3``) in contact with two or more large bodies
  (above ``body_um3``) is a piece of one of them, or the sliver between them; as an object of
  its own it is implausible (reward ``reward``). Whether it joins one body or the other is
  left to the other priors (joining both makes one thick object).
- ``blob``: a compact object (principal axis ratio below ``max_ratio``) of mitochondrion
  size (``min_um3``..``max_um3``), inside the volume, whose every neighbour is one large body,
  is an organelle of that body, not an object (reward ``reward``).

Neighbours are the objects across cut edges of the RAG; volumes are in µm³.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from marlseg.priors import Objects, Prior

__all__ = ["ThicknessPrior", "BridgePrior", "BlobPrior", "neighbour_pairs", "neighbour_counts"]


def neighbour_pairs(objects: Objects) -> np.ndarray:
    """(P, 2) distinct ordered pairs ``(object, neighbour)`` across cut edges (both ways)."""
    a, b = objects.edge_objects
    cut = a != b
    pairs = np.concatenate(
        [np.stack([a[cut], b[cut]], 1), np.stack([b[cut], a[cut]], 1)], axis=0
    ).reshape(-1, 2)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def neighbour_counts(objects: Objects, body_um3: float) -> tuple[np.ndarray, np.ndarray]:
    """(K,) neighbours of each object, and how many of them are larger than ``body_um3``."""
    pairs = neighbour_pairs(objects)
    big = objects.volumes_um3[pairs[:, 1]] > body_um3
    return (
        np.bincount(pairs[:, 0], minlength=objects.count),
        np.bincount(pairs[big, 0], minlength=objects.count),
    )


def _principal_variances(objects: Objects) -> np.ndarray:
    """(K, 3) variances along the principal axes, ascending (nm²)."""
    return np.maximum(np.linalg.eigvalsh(objects.covariances), 0.0)


@dataclass
class ThicknessPrior(Prior):
    """Radius across the long axis ``<= max_nm`` (reward 1), falling linearly to 0 at twice
    that; objects under ``min_um3`` are not judged."""

    max_nm: float = 200.0
    min_um3: float = 0.0
    weight: float = 1.0
    name: ClassVar[str] = "thickness"

    def object_rewards(self, objects: Objects) -> np.ndarray:
        radius = 2.0 * np.sqrt(_principal_variances(objects)[:, 1])
        r = np.clip(2.0 - radius / self.max_nm, 0.0, 1.0)
        return np.where(objects.volumes_um3 < self.min_um3, 1.0, r)


@dataclass
class _NeighbourPrior(Prior):
    """A prior on an object and the large bodies around it; such objects earn ``reward``."""

    body_um3: float = 0.05
    reward: float = 0.0
    weight: float = 1.0


@dataclass
class BridgePrior(_NeighbourPrior):
    """Small objects touching ``>= 2`` large bodies earn ``reward``; all others 1."""

    max_um3: float = 0.005
    name: ClassVar[str] = "bridge"

    def object_rewards(self, objects: Objects) -> np.ndarray:
        _, bodies = neighbour_counts(objects, self.body_um3)
        bridge = (objects.volumes_um3 < self.max_um3) & (bodies >= 2)
        return np.where(bridge, self.reward, 1.0)


@dataclass
class BlobPrior(_NeighbourPrior):
    """Compact objects of ``min_um3``..``max_um3`` inside the volume whose only neighbour is
    one large body (``> body_um3``) earn ``reward``; all others 1."""

    min_um3: float = 0.0005
    max_um3: float = 0.02
    max_ratio: float = 1.6
    name: ClassVar[str] = "blob"

    def object_rewards(self, objects: Objects) -> np.ndarray:
        vol = objects.volumes_um3
        n_nbrs, n_big = neighbour_counts(objects, self.body_um3)
        compact = objects.axis_ratio < self.max_ratio
        blob = (
            compact
            & (vol >= self.min_um3)
            & (vol <= self.max_um3)
            & ~objects.at_border
            & (n_nbrs == 1)
            & (n_big == 1)
        )
        return np.where(blob, self.reward, 1.0)
