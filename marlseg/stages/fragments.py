"""``02_extract_fragments.py``: blockwise watershed fragments and their RAG nodes.

Per block, with ``fragments.context`` around it: affinities (``fragments.affs``, or computed
from ``fragments.boundary``, :mod:`marlseg.affinities`) -> fragments (``method``: seeded
watershed or mutex watershed, optionally per z-section) -> optional clean-up (epsilon
agglomeration, mean-affinity filter, size filter, mask) -> crop to the write ROI -> ids unique
across blocks by construction (:func:`marlseg.watershed.block_fragment_ids`: block ``i`` owns
``(i V, (i + 1) V]``, ``V`` the voxels per block) -> the fragments zarr, and one RAG node per
fragment (centre of mass in nm, size in voxels) upserted into MongoDB.

Fragments are cut at block faces, so each one lies in exactly one block's write ROI: that
block owns its node. A re-run of a block writes the same ids into the same voxels and upserts
the same nodes (the work is a pure function of the block's read ROI), which is what makes the
stage resumable after any crash. Starting the stage afresh (no block done yet, or
``--restart``) clears the RAG's nodes and edges first, so no node of an earlier, different run
lingers.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi

from marlseg import watershed as W
from marlseg.affinities import AffinitySource
from marlseg.blockwise import tracking_dir
from marlseg.config import Config, DatasetRef, FragmentsConfig
from marlseg.crashtest import maybe_die_for_test
from marlseg.errors import ConfigError
from marlseg.rag import RagStage
from marlseg.volumes import (
    check_multiple,
    dataset_exists,
    open_volume,
    prepare_volume,
    read,
    write,
)


def affinity_source(config: Config) -> AffinitySource:
    """The fragments' input: ``fragments.boundary`` if set, else ``fragments.affs`` (default:
    ``predict``'s output)."""
    if config.fragments.boundary is None and not dataset_exists(config.fragment_affs):
        field = "fragments.affs" if config.fragments.affs else "predict.affs"
        raise ConfigError(
            field,
            f"no affinities at {config.fragment_affs} (run 01_predict.py, or set "
            "fragments.affs or fragments.boundary)",
        )
    return AffinitySource(config.fragment_affs, config.fragments.boundary)


def ref_id(ref: DatasetRef | None) -> str | None:
    """A dataset reference as fingerprints record it: absolute, so the scheduler and its
    workers (whose config has absolute paths) agree, and so does a run from another cwd."""
    return None if ref is None else f"{Path(ref.path).absolute()}:{ref.dataset}"


def section_params(section: FragmentsConfig) -> dict:
    """A section's parameters without how its workers run (which changes no output)."""
    params = section.model_dump(mode="json", exclude={"workers"})
    for key in ("affs", "boundary", "fragments", "mask"):
        params[key] = ref_id(getattr(section, key))
    return params


def fragments_fingerprint(config: Config) -> dict:
    """Everything the fragments (and RAG nodes) depend on; downstream stages include it."""
    src = affinity_source(config)
    return {
        "input": ref_id(src.ref),
        "input_kind": "boundary" if src.is_boundary else "affs",
        "input_roi": [list(src.roi.offset), list(src.roi.shape)],
        "voxel_size": list(src.voxel_size),
        "fragments": section_params(config.fragments),
        "output": ref_id(config.fragments_ds),
        "db_name": config.db.name,
    }


def check_existing_output(ref: DatasetRef, field: str, roi: Roi, vs, dtype, chunk_nm) -> None:
    """An output from an earlier run must match this one (checked without writing)."""
    if not dataset_exists(ref):
        return
    arr = open_volume(ref, field=field)
    chunks = tuple(int(c) for c in Coordinate(chunk_nm) / Coordinate(vs))
    src = arr._source_data
    if (
        arr.roi != roi
        or arr.voxel_size != Coordinate(vs)
        or np.dtype(arr.dtype) != np.dtype(dtype)
        or tuple(getattr(src, "chunks", ()) or ()) != chunks
    ):
        raise ConfigError(
            f"{field}.dataset",
            f"{ref} exists with another ROI, voxel size, dtype or chunking "
            f"({arr.roi}, {arr.voxel_size}, {arr.dtype}, chunks {list(getattr(src, 'chunks', None) or [])}); "
            f"delete {Path(ref.path).absolute() / ref.dataset} and re-run with --restart, or "
            "use a fresh run.dir",
        )


GENERATION_ATTR = "marlseg_generation"
"""Attribute of the fragments dataset naming the fresh start that wrote it."""


def upstream_fingerprint(config: Config) -> dict:
    """What the stages after ``02`` record about the fragments: their parameters plus the
    generation of the fragments dataset, a random token renewed whenever ``02`` starts afresh
    (and clears the RAG). A re-run of ``02`` from scratch with unchanged parameters thus still
    invalidates the blocks done downstream (their edges were cleared with the nodes)."""
    arr = open_volume(config.fragments_ds, field="fragments.fragments")
    return {
        **fragments_fingerprint(config),
        "generation": arr._source_data.attrs.get(GENERATION_ATTR),
    }


class FragmentsStage(RagStage):
    """Blockwise fragment extraction (watershed) and RAG nodes."""

    name = "fragments"
    description = "Blockwise fragments (watershed) and RAG nodes from affinities or a boundary map."
    read_write_conflict = False  # writes only its write ROI and its own nodes

    # --- scheduler side --------------------------------------------------
    @property
    def section(self) -> FragmentsConfig:
        return self.config.fragments

    def check(self) -> None:
        super().check()
        src = affinity_source(self.config)
        vs = src.voxel_size
        check_multiple("fragments.block_shape", self.section.block_shape, vs)
        check_multiple("fragments.context", self.section.context, vs)
        if self.section.mask is not None:
            mask = open_volume(self.section.mask, field="fragments.mask")
            if mask.channel_dims or len(mask.voxel_size) != 3:
                raise ConfigError("fragments.mask.dataset", "a mask is one 3D volume")
            if any(m % v for m, v in zip(mask.voxel_size, vs)):
                raise ConfigError(
                    "fragments.mask.dataset",
                    f"voxel size {list(mask.voxel_size)} is not a multiple of the affinities' "
                    f"{list(vs)}",
                )
        if self.section.min_seed_distance < 1:
            raise ConfigError("fragments.min_seed_distance", "must be >= 1")
        check_existing_output(
            self.config.fragments_ds,
            "fragments.fragments",
            src.roi,
            vs,
            np.uint64,
            self.section.block_shape,
        )

    def voxel_size(self) -> Coordinate:
        return affinity_source(self.config).voxel_size

    def geometry(self) -> tuple[Roi, Coordinate, Coordinate]:
        src = affinity_source(self.config)
        return src.roi, Coordinate(self.section.block_shape), Coordinate(self.section.context)

    def fingerprint(self) -> dict:
        return fragments_fingerprint(self.config)

    def run(self, restart: bool = False):
        self._fresh = restart or not (tracking_dir(self) / "params.json").exists()
        return super().run(restart=restart)

    def prepare(self) -> None:
        src = affinity_source(self.config)
        out = prepare_volume(
            self.config.fragments_ds,
            src.roi,
            src.voxel_size,
            np.uint64,
            self.section.block_shape,
            field="fragments.fragments",
        )
        # the RAG records the volume it covers; a database holding another one is refused
        rag = self.open_rag(total_roi=src.roi, voxel_size=src.voxel_size)
        try:
            if getattr(self, "_fresh", False):
                rag.clear()  # nodes and edges of an earlier, different run
                out._source_data.attrs[GENERATION_ATTR] = uuid.uuid4().hex
        finally:
            rag.close()

    def skip_mask(self, block_grid_shape: list[int]) -> np.ndarray | None:
        if self.section.mask is None:
            return None
        mask = open_volume(self.section.mask, field="fragments.mask")
        total, block_shape, _ = self.geometry()
        keep = np.zeros(block_grid_shape, dtype=bool)
        for pos in np.ndindex(*block_grid_shape):
            roi = Roi(total.offset + Coordinate(pos) * block_shape, block_shape).intersect(total)
            keep[pos] = bool(np.any(read(mask, roi, fill_value=0)))
        return keep

    # --- worker side -----------------------------------------------------
    def init_worker(self) -> None:
        super().init_worker()
        self.source = affinity_source(self.config)
        self.out = open_volume(self.config.fragments_ds, mode="r+", field="fragments.fragments")
        self.mask = (
            open_volume(self.section.mask, field="fragments.mask") if self.section.mask else None
        )
        total, block_shape, _ = self.geometry()
        vs = self.source.voxel_size
        self.total_offset = total.offset
        self.block_shape = block_shape
        self.grid = [-(-int(t) // int(b)) for t, b in zip(total.shape, block_shape)]
        self.voxels_per_block = int(np.prod(block_shape / vs))

    def read_mask(self, roi: Roi) -> np.ndarray:
        """The mask over ``roi`` at the affinities' voxel size (a coarser mask is repeated)."""
        vs = self.source.voxel_size
        snapped = roi.snap_to_grid(self.mask.voxel_size, mode="grow")
        m = read(self.mask, snapped, fill_value=0) != 0
        for axis, f in enumerate(self.mask.voxel_size / vs):
            if f > 1:
                m = np.repeat(m, int(f), axis=axis)
        begin = (roi.begin - snapped.begin) / vs
        shape = roi.shape / vs
        return m[tuple(slice(int(b), int(b) + int(s)) for b, s in zip(begin, shape))]

    def process_block(self, block) -> None:
        vs = self.source.voxel_size
        affs = self.source.read(block.read_roi)
        mask = self.read_mask(block.read_roi) if self.mask is not None else None
        if mask is not None:
            affs *= mask
        frags = compute_fragments(affs, self.section, mask)
        begin = (block.write_roi.begin - block.read_roi.begin) / vs
        shape = block.write_roi.shape / vs
        crop = frags[tuple(slice(int(b), int(b) + int(s)) for b, s in zip(begin, shape))]
        index = W.block_index(
            block.write_roi.offset, self.total_offset, self.block_shape, self.grid
        )
        ids = W.block_fragment_ids(crop, index, self.voxels_per_block)
        write(self.out, block.write_roi, ids)
        maybe_die_for_test(self.name)  # fragments written, nodes not yet
        nodes, centers, sizes = W.fragment_stats(ids, block.write_roi.offset, vs)
        if nodes.size:
            self.rag.write_nodes(nodes, centers, sizes)


def compute_fragments(
    affs: np.ndarray, section: FragmentsConfig, mask: np.ndarray | None = None
) -> np.ndarray:
    """The fragments of one block's read ROI, every option of ``section`` applied."""
    if section.method == "watershed":
        frags = W.seeded_watershed(
            affs, section.boundary_threshold, section.min_seed_distance, section.fragments_in_xy
        )
    elif section.method == "waterz":  # epsilon merges in the same waterz call
        frags = W.waterz_watershed(affs, section.fragments_in_xy, section.epsilon_agglomerate)
    else:
        frags = W.mutex_watershed(
            affs, section.mutex_offsets, section.mutex_bias, section.fragments_in_xy
        )
    if mask is not None:
        frags[~mask] = 0
    if section.epsilon_agglomerate > 0 and section.method != "waterz":
        frags = W.epsilon_agglomerate(affs, frags, section.epsilon_agglomerate)
    if section.filter_fragments > 0:
        frags = W.filter_by_mean_affinity(frags, affs[:3].mean(axis=0), section.filter_fragments)
    if section.min_size > 0:
        frags = W.remove_small(frags, section.min_size)
    return frags
