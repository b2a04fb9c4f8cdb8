"""How ``04_find_segments.py`` turns an edge score into segments: ``segments.method``.

Two partitioners, the same two the edge-weight learner (``07``) can be rewarded with
(:mod:`marlseg.partition`), so the segmentation a user gets from a learned weight is the one
the policy was trained on:

- ``threshold``: connected components of the edges whose score is ``<= t`` (streamed, see
  :mod:`marlseg.stages.segments`). ``t`` is the largest score that still merges.
- ``mutex``: graph mutex watershed: edges with score ``< t`` attract, edges ``> t`` repel,
  all processed by decreasing ``|t - score|``; an attraction merges two segments unless a
  stronger repulsion already separates them. ``t`` is where attraction turns into repulsion
  (``0.5`` is the partition ``07`` trains with at its default
  ``edge_rl.partition_threshold``). Unlike ``threshold``, one low score between two segments
  does not merge them when stronger boundaries already separate them.

``segments.method: null`` (the default) picks ``edge_rl.partitioner`` when the edge score is
the learned one (``edge_rl.weight_attr``) and ``threshold`` otherwise; naming another
partitioner for the learned weight is refused.

Memory of ``mutex``: the edges must be sorted by strength, so the stage holds every edge's
``u``, ``v`` and score (24 bytes per edge; 10^8 edges = 2.4 GB) plus the node ids; the
threshold method streams them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from marlseg.errors import ConfigError
from marlseg.partition import mutex_partition

if TYPE_CHECKING:
    from marlseg.config import Config

__all__ = ["segments_method", "mutex_luts"]


def segments_method(config: Config) -> str:
    """The partitioner 04 uses: ``segments.method``, or when that is ``null``, the one the
    edge score was trained with (``edge_rl.partitioner`` for ``edge_rl.weight_attr``).
    :class:`ConfigError` if ``segments.method`` names another partitioner than the learned
    weight was rewarded for."""
    method = config.segments.method
    learned = config.segments.edge_score == config.edge_rl.weight_attr
    if method is None:
        return config.edge_rl.partitioner if learned else "threshold"
    if learned and method != config.edge_rl.partitioner:
        raise ConfigError(
            "segments.method",
            f"{method!r}, but {config.edge_rl.weight_attr} was learned for the "
            f"{config.edge_rl.partitioner!r} partition (edge_rl.partitioner): use that one "
            "(or null), or retrain 07 with the other",
        )
    return method


def mutex_luts(
    node_ids: np.ndarray,
    edge_batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    thresholds: Sequence[float],
) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """One LUT per threshold by graph mutex watershed over a stream of ``(u, v, score)``
    batches (gathered: the method needs them all); the same format as the threshold method's: ``(fragment_ids, segment_ids)`` with sorted fragment ids and each segment named
    by its smallest fragment id. Edges without a finite score take no part (neither attract nor
    repel). ``KeyError`` if an edge names a fragment that is not in ``node_ids``."""
    ids = np.unique(np.asarray(node_ids, dtype=np.uint64))
    parts = [tuple(np.asarray(a) for a in batch) for batch in edge_batches]
    u = np.concatenate([p[0] for p in parts] or [np.zeros(0)]).astype(np.uint64)
    v = np.concatenate([p[1] for p in parts] or [np.zeros(0)]).astype(np.uint64)
    score = np.concatenate([p[2] for p in parts] or [np.zeros(0)]).astype(np.float64)
    edges = np.stack([_index(ids, u), _index(ids, v)], axis=1)
    keep = np.isfinite(score)
    edges, score = edges[keep], score[keep]
    out = {}
    for t in thresholds:
        labels = mutex_partition(len(ids), edges, score, float(t))
        rep = np.full(labels.max() + 1 if len(labels) else 0, np.iinfo(np.uint64).max, np.uint64)
        np.minimum.at(rep, labels, ids)
        out[float(t)] = (ids.copy(), rep[labels])
    return out


def _index(ids: np.ndarray, query: np.ndarray) -> np.ndarray:
    if query.size and ids.size == 0:
        raise KeyError(f"edges name fragments that are not RAG nodes, e.g. {query[:3].tolist()}")
    idx = np.minimum(np.searchsorted(ids, query), max(ids.size - 1, 0))
    bad = ids[idx] != query if query.size else np.zeros(0, bool)
    if np.any(bad):
        missing = query[bad][:3]
        raise KeyError(f"edges name fragments that are not RAG nodes, e.g. {missing.tolist()}")
    return idx.astype(np.int64)
