"""Where batches come from: random locations, optionally only where there are labels.

Supervised crops that are mostly unlabelled teach the network nothing (or, worse, that
everything is boundary), so :func:`random_location` can reject them: gunpowder's
``RandomLocation`` keeps an integral image of a labels mask and only accepts crops with at least
``min_masked`` of their mask voxels set. The mask is either a dataset of its own (a labels
mask, as in CREMI) or derived from the labels by :class:`LabelsMask` (``labels != 0``).
"""

from __future__ import annotations

import gunpowder as gp
import numpy as np


class LabelsMask(gp.BatchFilter):
    """Provides ``mask`` = ``labels != 0`` (uint8), wherever ``labels`` is provided."""

    def __init__(self, labels: gp.ArrayKey, mask: gp.ArrayKey):
        self.labels = labels
        self.mask = mask

    def setup(self) -> None:
        spec = self.spec[self.labels].copy()
        spec.dtype = np.uint8
        spec.interpolatable = False
        self.provides(self.mask, spec)
        self.enable_autoskip()

    def prepare(self, request: gp.BatchRequest) -> gp.BatchRequest:
        deps = gp.BatchRequest()
        deps[self.labels] = request[self.mask].copy()
        deps[self.labels].dtype = None
        return deps

    def process(self, batch: gp.Batch, request: gp.BatchRequest) -> gp.Batch:
        labels = batch[self.labels]
        spec = self.spec[self.mask].copy()
        spec.roi = labels.spec.roi
        out = gp.Batch()
        out[self.mask] = gp.Array((labels.data != 0).astype(np.uint8), spec)
        return out


def random_location(mask: gp.ArrayKey | None = None, min_masked: float = 0.0) -> gp.BatchFilter:
    """A random location; with ``mask`` and ``min_masked > 0``, one whose crop of ``mask``
    has at least that fraction of voxels set. ``mask`` must then be part of every request."""
    if mask is None or min_masked <= 0:
        return gp.RandomLocation()
    return gp.RandomLocation(min_masked=min_masked, mask=mask)
