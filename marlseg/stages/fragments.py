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

import numpy as np
from funlib.geometry import Coordinate, Roi

from marlseg import watershed as W
from marlseg.affinities import affinity_source
from marlseg.blockwise import tracking_dir
from marlseg.config import FragmentsConfig
from marlseg.crashtest import maybe_die_for_test
from marlseg.errors import ConfigError
from marlseg.rag import RagStage
from marlseg.stages.common import GENERATION_ATTR, check_existing_output, fragments_fingerprint
from marlseg.volumes import check_multiple, open_volume, prepare_volume, read, write


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
        frags = W.compute_fragments(affs, self.section, mask)
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
