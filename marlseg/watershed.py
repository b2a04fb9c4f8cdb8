"""Per-block algorithms of the post-processing chain: pure numpy in, numpy out.

Nothing here knows about blocks on disk, daisy or MongoDB; the stages read a block, call
these, and write the results. That keeps every step testable on a few voxels.

Fragments (``02_extract_fragments.py``):

* :func:`seeded_watershed` — as lsd's ``watershed_from_affinities``: voxels whose mean
  nearest-neighbour affinity exceeds ``boundary_threshold`` are "inside"; the maxima of their
  distance to the nearest boundary voxel (within ``min_seed_distance``) are the seeds; a
  watershed floods the boundary map ``1 - mean(affs)`` from them. Every voxel gets a fragment.
* :func:`mutex_watershed` — mwatershed's mutex watershed on attractive nearest-neighbour and
  repulsive long-range edges (see :data:`DEFAULT_MUTEX_OFFSETS`).
* :func:`epsilon_agglomerate`, :func:`filter_by_mean_affinity`, :func:`remove_small` —
  optional clean-up inside the block.
* :func:`compute_fragments` — a block's fragments with every option of a ``fragments``
  section applied (what ``02`` and the tuner run).
* :func:`block_fragment_ids` — unique ids across blocks by construction.
* :func:`fragment_stats` — RAG node rows (centre of mass, size).

Agglomeration (``03_agglomerate.py``): :func:`adjacency` (the region graph), :func:`scoring_function`
(the merge-function table) and :func:`agglomerate_edges` (a merge score for every edge).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from funlib.geometry import Coordinate
from scipy.ndimage import distance_transform_edt, label, maximum_filter

from marlseg.affinities import NEAREST, long_range_affinities
from marlseg.labels import dense_relabel, label_stats, unique_inverse
from marlseg.merge_tree import history_arrays, scores_from_history

if TYPE_CHECKING:
    from marlseg.config import FragmentsConfig


def skimage_watershed(image: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """skimage's seeded watershed, imported on first use (its import costs every worker of
    every stage ~0.4 s otherwise)."""
    from skimage.segmentation import watershed

    return watershed(image, markers=markers)


# --------------------------------------------------------------------------- fragments


def _seeded_watershed_nd(
    mean_affs: np.ndarray, boundary_threshold: float, min_seed_distance: int
) -> np.ndarray:
    inside = mean_affs > boundary_threshold
    if not inside.any():
        # no interior at all: one fragment for the whole region, the agglomeration decides
        return np.ones(mean_affs.shape, dtype=np.uint64)
    distances = distance_transform_edt(inside)
    maxima = maximum_filter(distances, size=min_seed_distance) == distances
    # plateaus of distance 0 (wide membranes) are not seeds
    maxima &= inside
    seeds, _ = label(maxima)
    fragments = skimage_watershed(1.0 - mean_affs, markers=seeds)
    return fragments.astype(np.uint64)


def seeded_watershed(
    affs: np.ndarray,
    boundary_threshold: float = 0.5,
    min_seed_distance: int = 10,
    fragments_in_xy: bool = False,
) -> np.ndarray:
    """Fragments from ``affs`` (float ``(>=3, z, y, x)`` in [0, 1]); ids ``1..n``, no zeros.

    ``fragments_in_xy`` runs the same per z-section on the mean of the y and x channels (for
    anisotropic data, where z affinities are unreliable): fragments never span sections.
    """
    if not fragments_in_xy:
        mean_affs = affs[:3].mean(axis=0)
        return _seeded_watershed_nd(mean_affs, boundary_threshold, min_seed_distance)
    mean_affs = affs[1:3].mean(axis=0)
    out = np.zeros(mean_affs.shape, dtype=np.uint64)
    next_id = np.uint64(0)
    for z in range(mean_affs.shape[0]):
        section = _seeded_watershed_nd(mean_affs[z], boundary_threshold, min_seed_distance)
        out[z] = section + next_id
        next_id += np.uint64(section.max())
    return out


DEFAULT_MUTEX_OFFSETS: list[list[int]] = [[-2, 0, 0], [0, -2, 0], [0, 0, -2]]
"""Long-range offsets (voxels) for the mutex watershed. Their affinities are derived from the
nearest channels as the weakest step along the straight path
(:func:`marlseg.affinities.long_range_affinities`), so a long-range pair is pushed apart
exactly when a boundary lies between them. On fib_train's boundary map, short offsets with
bias ``(-0.5, -0.5)`` gave the best VOI after agglomeration (0.24 against 0.35 for the
seeded watershed); longer ones (3, 9) and split-biased long-range edges over-fragment the
thick membranes of that map (thousands of tiny fragments)."""


def mutex_watershed(
    affs: np.ndarray,
    long_range_offsets: Sequence[Sequence[int]] = DEFAULT_MUTEX_OFFSETS,
    bias: Sequence[float] = (-0.5, -0.5),
    fragments_in_xy: bool = False,
) -> np.ndarray:
    """Mutex watershed (mwatershed) fragments; ids ``1..n``.

    Edge weights are ``aff + bias``: positive edges attract, negative ones repel, and the
    strongest are decided first. ``bias[0]`` shifts the nearest-neighbour edges (``-0.5``:
    attract above affinity 0.5, repel below), ``bias[1]`` the long-range ones (more negative:
    more splits). mwatershed wants float64. Voxels it leaves unlabelled (every edge repulsive:
    membrane) are given to the nearest fragment by a watershed on ``1 - mean(affs)``.
    ``fragments_in_xy`` runs per z-section with the offsets that stay in the section.
    """
    import mwatershed

    long = long_range_affinities(affs, long_range_offsets)
    weights = np.concatenate([affs[:3] + bias[0], long + bias[1]]).astype(np.float64)
    offsets = [list(o) for o in NEAREST] + [list(o) for o in long_range_offsets]
    boundary = 1.0 - affs[:3].mean(axis=0)
    if not fragments_in_xy:
        frags = mwatershed.agglom(weights, offsets=offsets)
        return _fill(_consecutive(np.asarray(frags, dtype=np.uint64)), boundary)
    keep = [i for i, o in enumerate(offsets) if o[0] == 0]
    offsets_2d = [offsets[i][1:] for i in keep]
    out = np.zeros(affs.shape[1:], dtype=np.uint64)
    next_id = np.uint64(0)
    for z in range(out.shape[0]):
        section = mwatershed.agglom(np.ascontiguousarray(weights[keep, z]), offsets=offsets_2d)
        section = _fill(_consecutive(np.asarray(section, dtype=np.uint64)), boundary[z])
        out[z] = section + next_id
        next_id += np.uint64(section.max())
    return out


def waterz_watershed(
    affs: np.ndarray, fragments_in_xy: bool = False, epsilon: float = 0.0
) -> np.ndarray:
    """waterz's own initial watershed (compiled, on the affinity graph); ids ``1..n``.

    As in one in-memory waterz pass: voxels joined by an affinity above waterz's high
    threshold (0.9999) seed the basins, every voxel with an affinity above the low one
    (0.0001) joins the basin its steepest edge leads to, and voxels whose every affinity is
    below it (pure membrane) get 0, no fragment. No distance transform, no per-voxel
    priority queue in Python-land: about 10x the seeded watershed's speed, with more, smaller
    fragments (the agglomeration merges them). ``epsilon > 0`` merges them in the same waterz
    call up to that mean-affinity score, as :func:`epsilon_agglomerate` would in a second
    pass: fewer RAG rows. ``fragments_in_xy`` runs per z-section without the z channel.
    """
    affs = np.ascontiguousarray(affs[:3], dtype=np.float32)
    if not fragments_in_xy:
        return _waterz_fragments(affs, epsilon)
    out = np.zeros(affs.shape[1:], dtype=np.uint64)
    next_id = np.uint64(0)
    for z in range(out.shape[0]):
        section = affs[:, z : z + 1].copy()
        section[0] = 0.0
        frags = _waterz_fragments(section, epsilon)[0]
        out[z] = np.where(frags > 0, frags + next_id, np.uint64(0))
        next_id += np.uint64(frags.max(initial=0))
    return out


def _waterz_fragments(affs: np.ndarray, epsilon: float) -> np.ndarray:
    import waterz

    # threshold 0: waterz's watershed, then no merge (every score is >= 0)
    seg = next(
        iter(
            waterz.agglomerate(
                affs,
                thresholds=[max(epsilon, 0.0)],
                scoring_function=EPSILON_FUNCTION,
                discretize_queue=256,
            )
        )
    )
    return np.array(seg, dtype=np.uint64, copy=True)


def _fill(fragments: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    """Grow ``fragments`` over their unlabelled voxels (0) by a watershed on ``boundary``.

    The mutex watershed leaves voxels whose every edge is repulsive (membrane) unlabelled;
    like the seeded watershed, we hand every voxel to a fragment and let the agglomeration
    judge the contacts."""
    if fragments.all():
        return fragments
    if not fragments.any():
        return np.ones_like(fragments)
    return skimage_watershed(boundary, markers=fragments).astype(np.uint64)


def _consecutive(labels: np.ndarray) -> np.ndarray:
    """Relabel to ``1..n`` in order of first id; 0 stays 0."""
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape).astype(np.uint64)
    if ids.size and ids[0] == 0:
        return inverse
    return inverse + np.uint64(1)


EPSILON_FUNCTION = "OneMinus<MeanAffinity<RegionGraphType,ScoreValue>>"
"""The scoring of the merges inside a block (``fragments.epsilon_agglomerate``)."""


def epsilon_agglomerate(affs: np.ndarray, fragments: np.ndarray, threshold: float) -> np.ndarray:
    """Merge fragments whose mean-affinity score ``1 - mean(aff)`` is below ``threshold``
    (waterz, inside the block). Returns a new array; ids are existing fragment ids."""
    import waterz

    if threshold <= 0:
        return fragments
    frags = np.ascontiguousarray(fragments, dtype=np.uint64).copy()
    for seg in waterz.agglomerate(
        np.ascontiguousarray(affs[:3], dtype=np.float32),
        thresholds=[threshold],
        fragments=frags,
        scoring_function=EPSILON_FUNCTION,
        discretize_queue=256,
    ):
        # waterz hands out one array, updated in place for every threshold: copy it
        frags = np.array(seg, dtype=np.uint64, copy=True)
    return frags


def filter_by_mean_affinity(
    fragments: np.ndarray, mean_affs: np.ndarray, threshold: float
) -> np.ndarray:
    """Set fragments whose mean (nearest-neighbour mean) affinity is below ``threshold`` to 0:
    they lie on membranes, not in cells."""
    if threshold <= 0:
        return fragments
    ids, inverse = np.unique(fragments, return_inverse=True)
    inverse = inverse.reshape(-1)
    means = np.bincount(inverse, weights=mean_affs.reshape(-1)) / np.bincount(inverse)
    drop = (means < threshold) & (ids != 0)
    if not drop.any():
        return fragments
    keep_ids = np.where(drop, 0, ids).astype(fragments.dtype)
    return keep_ids[inverse].reshape(fragments.shape)


def remove_small(fragments: np.ndarray, min_size: int) -> np.ndarray:
    """Set fragments with fewer than ``min_size`` voxels to 0."""
    if min_size <= 0:
        return fragments
    ids, inverse, counts = np.unique(fragments, return_inverse=True, return_counts=True)
    drop = (counts < min_size) & (ids != 0)
    if not drop.any():
        return fragments
    keep_ids = np.where(drop, 0, ids).astype(fragments.dtype)
    return keep_ids[inverse.reshape(-1)].reshape(fragments.shape)


def compute_fragments(
    affs: np.ndarray, section: FragmentsConfig, mask: np.ndarray | None = None
) -> np.ndarray:
    """The fragments of one block's read ROI, every option of ``section`` applied."""
    if section.method == "watershed":
        frags = seeded_watershed(
            affs, section.boundary_threshold, section.min_seed_distance, section.fragments_in_xy
        )
    elif section.method == "waterz":  # epsilon merges in the same waterz call
        frags = waterz_watershed(affs, section.fragments_in_xy, section.epsilon_agglomerate)
    else:
        frags = mutex_watershed(
            affs, section.mutex_offsets, section.mutex_bias, section.fragments_in_xy
        )
    if mask is not None:
        frags[~mask] = 0
    if section.epsilon_agglomerate > 0 and section.method != "waterz":
        frags = epsilon_agglomerate(affs, frags, section.epsilon_agglomerate)
    if section.filter_fragments > 0:
        frags = filter_by_mean_affinity(frags, affs[:3].mean(axis=0), section.filter_fragments)
    if section.min_size > 0:
        frags = remove_small(frags, section.min_size)
    return frags


def block_fragment_ids(
    fragments: np.ndarray, block_index: int, voxels_per_block: int
) -> np.ndarray:
    """Globally unique uint64 ids for the fragments of one block's write ROI.

    The non-zero labels present are renumbered ``1..n`` in increasing order of their local
    id, then offset by ``block_index * voxels_per_block``. A block cannot hold more fragments
    than voxels, so block ``i`` owns the id range ``(i * V, (i + 1) * V]``: ids never collide
    across blocks and a re-run of a block writes the same ids. ``block_index`` is the block's
    C-order position in the grid of write blocks; the largest id is below the number of voxels
    of the block grid, far from uint64's limit.
    """
    ids, inverse = unique_inverse(fragments)
    has_zero = bool(ids.size and ids[0] == 0)
    n = int(ids.size - has_zero)
    if n > voxels_per_block:
        raise ValueError(f"{n} fragments in a block of {voxels_per_block} voxels")
    offset = np.uint64(block_index) * np.uint64(voxels_per_block)
    new = np.arange(1, n + 1, dtype=np.uint64) + offset
    if has_zero:
        new = np.concatenate([np.zeros(1, np.uint64), new])
    return new[inverse].reshape(fragments.shape)


def fragment_stats(
    fragments: np.ndarray, offset_nm: Sequence[int], voxel_size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, centers_zyx_nm, sizes)`` of the non-zero fragments.

    The centre is the mean world position of the fragment's voxel corners
    (``offset + index * voxel_size``, funlib's convention), so it always lies inside the ROI
    the fragments were cut to: a node is read back by the ROI of the block that owns it.
    """
    ids, sizes, centers = label_stats(fragments)
    centers = np.asarray(offset_nm, dtype=np.float64) + centers * np.asarray(
        voxel_size, dtype=np.float64
    )
    keep = ids != 0
    return ids[keep].astype(np.uint64), centers[keep], sizes[keep]


# --------------------------------------------------------------------------- agglomeration


def adjacency(fragments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The region adjacency graph: unique ``(u, v)``, ``u < v``, of fragments touching across a
    face (6-neighbourhood); label 0 is not a fragment."""
    keys: list[np.ndarray] = []
    wide = fragments.size and int(fragments.max()) >= 2**32
    for axis in range(fragments.ndim):
        lo = fragments[(slice(None),) * axis + (slice(None, -1),)]
        hi = fragments[(slice(None),) * axis + (slice(1, None),)]
        touch = lo != hi
        touch &= lo != 0
        touch &= hi != 0
        a, b = lo[touch].astype(np.uint64), hi[touch].astype(np.uint64)
        if wide:
            keys.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
            continue
        # one sortable key per pair; a contact is a surface, so neighbouring entries repeat
        # the same pair: drop those before sorting
        key = (np.minimum(a, b) << np.uint64(32)) | np.maximum(a, b)
        if key.size:
            key = key[np.concatenate([[True], key[1:] != key[:-1]])]
        keys.append(key)
    if wide:
        pairs = np.unique(np.concatenate(keys), axis=0)
        return pairs[:, 0].copy(), pairs[:, 1].copy()
    key = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.uint64)
    return key >> np.uint64(32), key & np.uint64(2**32 - 1)


_QUANTILES = tuple(range(10, 100, 5))
MERGE_FUNCTIONS: dict[str, str] = {
    "mean": "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>",
    **{
        f"hist_quant_{q}": f"OneMinus<HistogramQuantileAffinity<RegionGraphType, {q}, ScoreValue, 256, false>>"
        for q in _QUANTILES
    },
    **{
        f"hist_quant_{q}_initmax": f"OneMinus<HistogramQuantileAffinity<RegionGraphType, {q}, ScoreValue, 256, true>>"
        for q in _QUANTILES
    },
    "max": "OneMinus<MaxAffinity<RegionGraphType, ScoreValue>>",
    "min": "OneMinus<MinAffinity<RegionGraphType, ScoreValue>>",
}
"""``agglomerate.merge_function`` names -> waterz scoring functions (lsd's names).

Every score is ``1 - statistic`` of the affinities on the contact between two regions, so a
low score means "merge early":

========================  ===============================================================
``mean``                  mean affinity on the contact
``hist_quant_N``          N-th percentile of a 256-bin histogram of the contact's
                          affinities, N in 10, 15, ..., 95 (``hist_quant_75``: default)
``hist_quant_N_initmax``  same, the histogram of a new edge starts from its maximum
``max`` / ``min``         the largest / smallest affinity on the contact
========================  ===============================================================

``mean`` and ``hist_quant_*`` ship compiled with waterz; ``max``, ``min`` and any raw waterz
type string (anything containing ``<``) are compiled on first use, which needs ``witty``, a
C++ compiler and the boost headers (checked before the stage starts).
"""


def scoring_function(name: str) -> str:
    """The waterz scoring-function type for a merge-function name (or a raw type string)."""
    if name in MERGE_FUNCTIONS:
        return MERGE_FUNCTIONS[name]
    if "<" in name:
        return name
    raise KeyError(name)


def is_prebuilt(function: str) -> bool:
    """Whether waterz ships ``function`` compiled (else it needs a C++ toolchain)."""
    from waterz._codegen import iter_specs, normalize

    wanted = normalize(function)
    return any(normalize(s.scoring_function) == wanted for s in iter_specs())


UNMERGED = 1.0
"""Merge score of an edge whose fragments never merged. waterz agglomerates up to threshold 1,
so such a pair only has contacts scored 1 (affinity 0 all along: ``1 - 0``); 1.0 also keeps
every score in [0, 1], where ``segments.thresholds`` live."""


def merge_scores(u: np.ndarray, v: np.ndarray, history: Sequence[dict]) -> np.ndarray:
    """The merge score of every edge ``(u[i], v[i])`` from a waterz merge history.

    The score of an edge is the running maximum of the history's scores up to the merge that
    first put its two fragments into one region: the lowest threshold at which waterz itself
    (which merges in history order and stops at the first score above the threshold) would
    have joined them. Scores are thus monotone along the history, and thresholding edges at
    ``t`` reproduces waterz's segmentation of the same volume at ``t`` (scores equal to ``t``
    aside: waterz stops at ``score >= t``; ``04`` keeps ``score <= t``). Edges never merged get
    :data:`UNMERGED`.

    Computed as range maxima over the history's single-linkage leaf order
    (:mod:`marlseg.merge_tree`), not by replaying it edge by edge.
    """
    a, b, score = history_arrays(history)
    scores = scores_from_history(u, v, a, b, score)
    return np.clip(np.nan_to_num(scores, posinf=UNMERGED), 0.0, 1.0)


def agglomerate_edges(
    affs: np.ndarray, fragments: np.ndarray, function: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(u, v, merge_score)`` for every adjacency edge of ``fragments`` (``u < v``).

    waterz agglomerates the fragments all the way (threshold 1) with the scoring ``function``;
    see :func:`merge_scores` for what an edge's score means.
    """
    import waterz

    # waterz sizes its tables by the largest id: hand it ids 1..n, not the global ones (which
    # grow with the volume), and map the edges back; the ranks keep the order, so u < v holds
    ids, local = dense_relabel(fragments, np.uint32 if fragments.size < 2**32 else np.uint64)
    u, v = adjacency(local)
    local = local.astype(np.uint64)
    if u.size == 0:
        return u, v, np.zeros(0, dtype=np.float64)
    history: list[dict] = []
    for _seg, merge_history in waterz.agglomerate(
        np.ascontiguousarray(affs[:3], dtype=np.float32),
        thresholds=[1.0],
        fragments=local,
        scoring_function=function,
        return_merge_history=True,
    ):
        history.extend(merge_history)
    scores = merge_scores(u, v, history)
    return ids[u].astype(np.uint64), ids[v].astype(np.uint64), scores


def block_index(
    write_offset: Coordinate, total_offset: Coordinate, block_shape: Coordinate, grid: Sequence[int]
) -> int:
    """C-order index of the write block at ``write_offset`` in a grid of ``block_shape`` blocks
    starting at ``total_offset``."""
    pos = tuple(int(x) for x in (write_offset - total_offset) / block_shape)
    return int(np.ravel_multi_index(pos, tuple(int(g) for g in grid)))
