"""The ``segments`` section (``04_find_segments.py``) and the default threshold grid it shares
with ``tune``. Imports only :mod:`marlseg.config.base`."""

from __future__ import annotations

from typing import Literal

from marlseg.config.base import Section, Unit

Thresholds = list[Unit]


TUNE_THRESHOLDS: list[float] = [round(0.02 * i, 2) for i in range(1, 16)] + [
    round(0.05 * i, 2) for i in range(7, 19)
]
"""``segments.thresholds``' and ``tune.thresholds``' default: 0.02-0.30 in steps of 0.02, where merge scores concentrate,
then 0.35-0.90 in steps of 0.05."""


class SegmentsConfig(Section):
    thresholds: Thresholds = TUNE_THRESHOLDS
    """Merge thresholds: fragments joined by edges with score <= threshold form one segment.
    Default: 0.02-0.30 in steps of 0.02, where merge scores concentrate, then 0.35-0.90 in
    steps of 0.05 (the tuner's grid)."""
    edge_score: str = "merge_score"
    """Edge attribute to threshold: ``merge_score`` (waterz) or ``rl_weight`` (07)."""
    method: Literal["threshold", "mutex"] | None = None
    """How edges make segments: ``threshold`` (connected components of edges with score
    <= t, streamed) or ``mutex`` (graph mutex watershed: scores below t attract, above t
    repel, strongest first; holds all edges). ``null``: ``edge_rl.partitioner`` when
    ``edge_score`` is ``edge_rl.weight_attr`` (the partition 07 was rewarded for), else
    ``threshold``."""
