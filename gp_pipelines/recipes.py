"""Batch recipes: whole gunpowder pipelines behind a plain iterator of numpy batches.

``raw_batches`` feeds self-supervised pretraining (raw only); ``affinity_batches`` feeds
supervised affinity training (raw, affinities, weights, labels). Both read any number of HDF5
or zarr datasets of one voxel size, pick a random source (weighted by its size) and a random
location per sample, augment (:mod:`.augment`), normalise raw to ``[-1, 1]``
(:mod:`.normalize`, the same mapping prediction uses) and stack ``batch_size`` samples.

Reproducibility: with ``precache_workers=0`` batch ``i`` is a pure function of ``(seed, i)``
(every request carries a seed derived from them), so a resumed run that starts at ``start=i``
sees exactly the batches an uninterrupted run would have. With ``precache_workers > 0``
gunpowder's ``PreCache`` fills a queue from worker processes; it copies one request to all its
workers, so seeded requests would make every worker produce the same batch — requests are then
left unseeded (gunpowder seeds from the clock) and batches are random but not reproducible.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import gunpowder as gp
import numpy as np

from marlseg.config import DatasetRef
from marlseg.errors import ConfigError

from .augment import AugmentOptions, augmentations, chain, is_anisotropic, options
from .locations import LabelsMask, random_location
from .normalize import signed_range, unit_range
from .sources import dataset_spec, merged_source
from .targets import NEAREST, affinity_targets, lsd_targets

RAW = gp.ArrayKey("RAW")
LABELS = gp.ArrayKey("LABELS")
LABELS_MASK = gp.ArrayKey("LABELS_MASK")
"""Labelled region (from a dataset): affinities touching 0 here are not trained on."""
LOCATION_MASK = gp.ArrayKey("LOCATION_MASK")
"""Where crops may be centred: the labels mask if given, else ``labels != 0``."""
AFFS = gp.ArrayKey("AFFS")
WEIGHTS = gp.ArrayKey("WEIGHTS")
LSDS = gp.ArrayKey("LSDS")
LSDS_MASK = gp.ArrayKey("LSDS_MASK")


def _refs(refs: DatasetRef | dict | Sequence[DatasetRef | dict] | None) -> list[DatasetRef]:
    if refs is None:
        return []
    if isinstance(refs, (DatasetRef, dict)):
        refs = [refs]
    return [r if isinstance(r, DatasetRef) else DatasetRef.model_validate(r) for r in refs]


def batch_seed(seed: int, i: int) -> int:
    """The seed of batch ``i`` of a stream seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(i)]).generate_state(1)[0])


def _common_voxel_size(specs: list[gp.ArraySpec], field: str) -> gp.Coordinate:
    vs = specs[0].voxel_size
    for i, s in enumerate(specs):
        if s.voxel_size != vs:
            raise ConfigError(
                f"{field}[{i}]",
                f"voxel size {list(s.voxel_size)} differs from {field}[0]'s {list(vs)}; "
                "one batch stream reads one voxel size",
            )
    return gp.Coordinate(vs)


def crop_extent(
    shape_voxels: Sequence[int], voxel_size: gp.Coordinate, opt: AugmentOptions
) -> list[int]:
    """Voxels of the volume a crop of ``shape_voxels`` may need per axis once transposed,
    rotated in-plane and elastically deformed (a conservative estimate)."""
    shape = [int(s) for s in shape_voxels]
    dims = list(range(len(shape)))
    swappable = [d for d in dims if voxel_size[d] == min(voxel_size)] if opt.transpose else []
    perms = [shape]
    if len(swappable) >= 2:
        perms = []
        for p in itertools.permutations([shape[d] for d in swappable]):
            s = list(shape)
            for d, v in zip(swappable, p):
                s[d] = v
            perms.append(s)
    need = [0] * len(shape)
    for s in perms:
        if opt.elastic and opt.rotate and len(s) >= 2:
            diag = int(np.ceil((s[-1] + s[-2]) / np.sqrt(2)))
            s = [*s[:-2], max(s[-2], diag), max(s[-1], diag)]
        need = [max(n, v) for n, v in zip(need, s)]
    if opt.elastic:
        jitter = [opt.jitter_sigma / v for v in voxel_size]
        if is_anisotropic(voxel_size):
            jitter[0] = 0.0
        need = [n + 2 * int(np.ceil(3 * j)) for n, j in zip(need, jitter)]
    return need


def _check_fits(
    spec: gp.ArraySpec, shape_voxels: Sequence[int], opt: AugmentOptions, field: str
) -> None:
    have = list(spec.roi.shape / spec.voxel_size)
    need = crop_extent(shape_voxels, spec.voxel_size, opt)
    if any(h < n for h, n in zip(have, need)):
        raise ConfigError(
            field,
            f"volume of {have} voxels is smaller than a crop of {list(shape_voxels)} voxels "
            f"may need after augmentation ({need}: transposed, rotated, deformed); use a "
            'smaller input shape or fewer augmentations (e.g. augment: {"transpose": false})',
        )


def _stream(
    pipeline: Any,
    request: gp.BatchRequest,
    batch_size: int,
    seed: int,
    start: int,
    precache_workers: int,
    cache_size: int | None,
) -> Iterator[gp.Batch]:
    if precache_workers > 0:
        pipeline = pipeline + gp.PreCache(
            cache_size=cache_size or max(4, 2 * precache_workers, 2 * batch_size),
            num_workers=precache_workers,
        )
    pipeline = pipeline + gp.Stack(batch_size)
    with gp.build(pipeline):
        i = start
        while True:
            r = request.copy()
            if precache_workers == 0:
                r._random_seed = batch_seed(seed, i)
            yield pipeline.request_batch(r)
            i += 1


def raw_batches(
    refs: DatasetRef | dict | Sequence[DatasetRef | dict],
    input_shape_voxels: Sequence[int],
    batch_size: int,
    augment: bool | AugmentOptions | dict = True,
    seed: int = 0,
    precache_workers: int = 0,
    *,
    cache_size: int | None = None,
    start: int = 0,
) -> Iterator[np.ndarray]:
    """Endless float32 batches ``(B, 1, Z, Y, X)`` of raw in ``[-1, 1]`` (pretraining).

    Inputs are checked when this is called (ConfigError); the pipeline starts at the first
    ``next()`` and stops when the iterator is closed or garbage-collected.

    ``refs``: raw datasets (HDF5 or zarr, one voxel size). ``start``: index of the first batch
    (resume; reproducible only with ``precache_workers=0``).
    """
    refs = _refs(refs)
    if not refs:
        raise ConfigError("raw", "no raw datasets given")
    opt = options(augment)
    specs = [dataset_spec(r, field=f"raw[{i}]") for i, r in enumerate(refs)]
    voxel_size = _common_voxel_size(specs, "raw")
    for i, s in enumerate(specs):
        _check_fits(s, input_shape_voxels, opt, f"raw[{i}]")

    sources = tuple(
        merged_source({RAW: r}, field=f"raw[{i}]") + unit_range(RAW, s.dtype) + random_location()
        for i, (r, s) in enumerate(zip(refs, specs))
    )
    pipeline = sources + gp.RandomProvider(probabilities=[s.roi.size for s in specs])
    pipeline = chain(pipeline, augmentations(RAW, voxel_size, opt))
    pipeline = pipeline + signed_range(RAW)

    request = gp.BatchRequest()
    request.add(RAW, gp.Coordinate(input_shape_voxels) * voxel_size)
    stream = _stream(pipeline, request, batch_size, seed, start, precache_workers, cache_size)
    return (np.ascontiguousarray(b[RAW].data[:, None], dtype=np.float32) for b in stream)


def check_sources(
    raw_refs: Sequence[DatasetRef | dict],
    label_refs: Sequence[DatasetRef | dict],
    mask_refs: Sequence[DatasetRef | dict] | None,
    input_shape: Sequence[int],
    output_shape: Sequence[int],
    augment: bool | AugmentOptions | dict = True,
    field: str | None = None,
) -> tuple[list[gp.ArraySpec], list[gp.ArraySpec], gp.Coordinate]:
    """Everything :func:`affinity_batches` needs of its inputs, checked without building a
    pipeline (ConfigError naming ``field.raw[i]`` etc.); returns the raw and label specs and
    the voxel size."""
    pre = f"{field}." if field else ""
    raw_refs, label_refs, mask_refs = _refs(raw_refs), _refs(label_refs), _refs(mask_refs)
    if not raw_refs:
        raise ConfigError(f"{pre}raw", "no raw datasets given")
    if len(label_refs) != len(raw_refs):
        raise ConfigError(
            f"{pre}labels", f"{len(label_refs)} label volumes for {len(raw_refs)} raw volumes"
        )
    if mask_refs and len(mask_refs) != len(raw_refs):
        raise ConfigError(f"{pre}masks", f"{len(mask_refs)} masks for {len(raw_refs)} raw volumes")
    context = [i - o for i, o in zip(input_shape, output_shape)]
    if len(input_shape) != 3 or len(output_shape) != 3 or any(c < 0 or c % 2 for c in context):
        raise ConfigError(
            f"{pre}input_shape",
            f"input {list(input_shape)} minus output {list(output_shape)} must be >= 0 and "
            "even on every axis (the output is centred)",
        )
    opt = options(augment)
    raw_specs = [dataset_spec(r, field=f"{pre}raw[{i}]") for i, r in enumerate(raw_refs)]
    label_specs = [
        dataset_spec(r, interpolatable=False, field=f"{pre}labels[{i}]")
        for i, r in enumerate(label_refs)
    ]
    mask_specs = [
        dataset_spec(r, interpolatable=False, field=f"{pre}masks[{i}]")
        for i, r in enumerate(mask_refs)
    ]
    voxel_size = _common_voxel_size(raw_specs, f"{pre}raw")
    _common_voxel_size([*raw_specs, *label_specs], f"{pre}labels")
    _common_voxel_size([*raw_specs, *mask_specs], f"{pre}masks")
    for i, s in enumerate(label_specs):
        _check_fits(s, output_shape, opt, f"{pre}labels[{i}]")
        _check_fits(raw_specs[i], input_shape, opt, f"{pre}raw[{i}]")
    return raw_specs, label_specs, voxel_size


def affinity_batches(
    raw_refs: DatasetRef | dict | Sequence[DatasetRef | dict],
    label_refs: DatasetRef | dict | Sequence[DatasetRef | dict],
    input_shape: Sequence[int],
    output_shape: Sequence[int],
    neighborhood: Sequence[Sequence[int]] = NEAREST,
    batch_size: int = 1,
    augment: bool | AugmentOptions | dict = True,
    seed: int = 0,
    precache_workers: int = 0,
    *,
    mask_refs: DatasetRef | dict | Sequence[DatasetRef | dict] | None = None,
    min_masked: float = 0.5,
    cache_size: int | None = None,
    start: int = 0,
    lsd_sigma: float | None = None,
    lsd_downsample: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless affinity training batches (shapes in voxels, z-y-x), as dicts of

    - ``raw``: float32 ``(B, 1, *input_shape)`` in ``[-1, 1]``;
    - ``affs``: float32 ``(B, C, *output_shape)``, 0/1, one channel per ``neighborhood`` offset;
    - ``weights``: float32 ``(B, C, *output_shape)``, class-balancing loss weights;
    - ``labels``: the labels ``(B, *output_shape)`` the affinities were computed from.

    The output is centred in the input (``input - output`` must be even). ``mask_refs``: per
    raw volume, a labelled-region mask (non-zero = labelled); affinities leaving it get weight 0.
    ``min_masked``: reject crops whose output has less than this fraction of labelled voxels
    (mask, else ``labels != 0``). ``lsd_sigma`` (nm): also ``lsds`` ``(B, 10, *output_shape)``,
    the local shape descriptors of the labels, and ``lsds_mask`` (0 on background), the
    auxiliary target of MTLSD training.
    """
    raw_refs, label_refs, mask_refs = _refs(raw_refs), _refs(label_refs), _refs(mask_refs)
    raw_specs, label_specs, voxel_size = check_sources(
        raw_refs, label_refs, mask_refs, input_shape, output_shape, augment
    )
    opt = options(augment)
    if lsd_sigma is not None:
        check_lsd_sigma(lsd_sigma, lsd_downsample, voxel_size)
    sources = []
    for i, (raw, labels) in enumerate(zip(raw_refs, label_refs)):
        datasets = {RAW: raw, LABELS: labels}
        interp = {LABELS: False}
        if mask_refs:
            datasets[LABELS_MASK] = mask_refs[i]
            interp[LABELS_MASK] = False
        src = merged_source(datasets, interp, field=f"train[{i}]")
        src = src + unit_range(RAW, raw_specs[i].dtype)
        src = src + LabelsMask(LABELS_MASK if mask_refs else LABELS, LOCATION_MASK)
        if lsd_sigma is not None:  # descriptors need labels a few sigma beyond the crop
            src = src + gp.Pad(LABELS, None)
        src = src + random_location(LOCATION_MASK, min_masked)
        sources.append(src)
    pipeline = tuple(sources) + gp.RandomProvider(probabilities=[s.roi.size for s in label_specs])
    pipeline = chain(pipeline, augmentations(RAW, voxel_size, opt))
    pipeline = chain(
        pipeline,
        affinity_targets(
            LABELS, AFFS, WEIGHTS, neighborhood, labels_mask=LABELS_MASK if mask_refs else None
        ),
    )
    if lsd_sigma is not None:
        pipeline = chain(
            pipeline,
            lsd_targets(
                LABELS,
                LSDS,
                LSDS_MASK,
                lsd_sigma,
                lsd_downsample,
                labels_mask=LABELS_MASK if mask_refs else None,
            ),
        )
    pipeline = pipeline + signed_range(RAW)

    request = gp.BatchRequest()
    request.add(RAW, gp.Coordinate(input_shape) * voxel_size)
    out = gp.Coordinate(output_shape) * voxel_size
    extra = (LSDS, LSDS_MASK) if lsd_sigma is not None else ()
    for key in (LABELS, AFFS, WEIGHTS, LOCATION_MASK, *extra):
        request.add(key, out)
    stream = _stream(pipeline, request, batch_size, seed, start, precache_workers, cache_size)
    return (_affinity_batch(b, lsd_sigma is not None) for b in stream)


def check_lsd_sigma(sigma: float, downsample: int, voxel_size: Sequence[int]) -> None:
    """lsd's node pads the labels by 3 sigma and computes on a grid ``downsample`` times
    coarser: 3 sigma must be a whole number of coarse voxels on every axis."""
    for v in voxel_size:
        step = int(v) * int(downsample)
        if abs(3 * sigma / step - round(3 * sigma / step)) > 1e-6:
            good = [step * k / 3 for k in range(1, 6)]
            raise ConfigError(
                "train.lsd_sigma",
                f"3 x {sigma} nm is not a multiple of voxel {int(v)} nm x lsd_downsample "
                f"{downsample}; use e.g. one of {[round(g, 3) for g in good]}",
            )


def _affinity_batch(b: gp.Batch, lsds: bool) -> dict[str, np.ndarray]:
    out = {
        "raw": np.ascontiguousarray(b[RAW].data[:, None], dtype=np.float32),
        "affs": np.ascontiguousarray(b[AFFS].data, dtype=np.float32),
        "weights": np.ascontiguousarray(b[WEIGHTS].data, dtype=np.float32),
        "labels": b[LABELS].data,
    }
    if lsds:
        out["lsds"] = np.ascontiguousarray(b[LSDS].data, dtype=np.float32)
        out["lsds_mask"] = np.ascontiguousarray(b[LSDS_MASK].data, dtype=np.float32)
    return out
