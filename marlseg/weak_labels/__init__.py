"""Weak labels from image-level tags: where to segment, learnt by self-play.

Users of large EM volumes know, tile by tile and at a glance, where the data is unusable:
missing or blank sections, folds, staining artefacts, empty resin. Those tiles cost as much to
predict, watershed and agglomerate as tissue and only produce garbage segments. From such
cheap per-tile tags (1 = the tile contains a defect) this package learns a voxel mask of where
to segment: a presence detector learns the tags, two agents compete for the patches of every
tile (the patch game), and the patches they select are left out of the mask. The blockwise
stages 01-05 then skip blocks with nothing to segment (``weak_labels.skip_blocks``).

One idea per module: :mod:`.tags` (tag files and the derivation rule), :mod:`.defects` (the
seeded defect insertion that makes evaluation data), :mod:`.detector` (presence detector and
game inputs), :mod:`.game` (the rules), :mod:`.opponents` (the opponent pool),
:mod:`.training` (self-play), :mod:`.labelling` (masks of whole volumes), :mod:`.blocks` (which
blocks the mask lets the stages skip).
"""
