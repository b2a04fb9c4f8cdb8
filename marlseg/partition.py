"""Partition a weighted graph into objects: the environment's "solver".

Weights follow the RAG convention of ``merge_score``: in ``[0, 1]``, **low = merge**, high =
split (a boundary probability). Two partitioners:

- ``mutex``: graph mutex watershed (Wolf et al. 2018) from ``mwatershed`` (``mwatershed.
  cluster``, Rust, installed with marlseg). An edge is attractive when its weight is below the
  threshold (0.5 by default) and repulsive above; edges are processed by decreasing
  ``|threshold - w|``, an attractive edge
  merges its two clusters unless a repulsive edge already separates them, a repulsive edge
  adds such a mutex constraint. It solves a multicut-like objective greedily without a
  threshold, like the multicut solver of the reference method (we have no maintained
  multicut solver: nifty/elf do not install here).
- ``threshold``: connected components of the edges with ``w <= threshold``: exactly what
  ``04_find_segments.py`` does with an edge score, so training with it optimises the
  segmentation that the workflow will produce from ``rl_weight`` at that threshold.

Both return labels ``0..K-1`` per node (isolated nodes are their own object).
``04_find_segments.py`` offers both (``segments.method``), so the segmentation built from a
learned weight is the one the policy was rewarded for (:mod:`marlseg.segment_methods`).
"""

from __future__ import annotations

from typing import Literal

import mwatershed
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["partition", "mutex_partition", "threshold_partition", "relabel_consecutive"]

Method = Literal["mutex", "threshold"]


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Labels mapped to ``0..K-1`` in order of first appearance of the sorted ids."""
    _, inv = np.unique(labels, return_inverse=True)
    return inv.reshape(labels.shape).astype(np.int64)


def threshold_partition(n_nodes: int, edges: np.ndarray, weights: np.ndarray, threshold: float):
    """Connected components of the edges whose weight is ``<= threshold``."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    keep = np.asarray(weights) <= threshold
    e = edges[keep]
    a = coo_matrix((np.ones(len(e), dtype=np.int8), (e[:, 0], e[:, 1])), shape=(n_nodes, n_nodes))
    return connected_components(a, directed=False)[1].astype(np.int64)


def mutex_partition(
    n_nodes: int, edges: np.ndarray, weights: np.ndarray, threshold: float = 0.5
) -> np.ndarray:
    """Graph mutex watershed with ``threshold - w`` as signed attraction (mwatershed): edges
    below ``threshold`` attract, edges above repel, stronger ones first."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    weights = np.asarray(weights, dtype=np.float64)
    labels = np.arange(n_nodes, dtype=np.int64)
    if len(edges) == 0:
        return labels
    attraction = threshold - weights
    # stable sort by decreasing |attraction| (ties in edge order, so results are reproducible)
    order = np.argsort(-np.abs(attraction), kind="stable")
    ordered = list(
        zip(
            (attraction[order] > 0).tolist(),
            edges[order, 0].tolist(),
            edges[order, 1].tolist(),
        )
    )
    for node, segment in mwatershed.cluster(ordered):
        labels[node] = segment
    return relabel_consecutive(labels)


def partition(
    n_nodes: int,
    edges: np.ndarray,
    weights: np.ndarray,
    method: Method = "mutex",
    threshold: float = 0.5,
) -> np.ndarray:
    """Object label ``0..K-1`` per node for the given edge weights (low = merge)."""
    if method == "mutex":
        return mutex_partition(n_nodes, edges, weights, threshold)
    if method == "threshold":
        return relabel_consecutive(threshold_partition(n_nodes, edges, weights, threshold))
    raise ValueError(f"unknown partitioner {method!r}: use 'mutex' or 'threshold'")
