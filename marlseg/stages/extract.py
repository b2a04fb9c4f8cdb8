"""``05_extract_segmentation.py``: relabel the fragments through one LUT, block by block.

Reads ``run.dir/luts/<edge_score>_<extract.threshold>.npz`` (``04``) once per worker and
writes ``segment = LUT[fragment]`` into ``config.segmentation_ds()`` by write ROI. Blocks
neither overlap nor read each other's output, so they all run in parallel
(``read_write_conflict`` off). A worker holds the LUT: 16 bytes per fragment.
"""

from __future__ import annotations

import numpy as np

from marlseg.crashtest import maybe_die_for_test
from marlseg.files import file_digest
from marlseg.luts import apply_lut, check_lut, load_lut
from marlseg.stages.common import (
    FragmentBlocksStage,
    check_existing_output,
    open_fragments,
    ref_id,
    upstream_fingerprint,
)
from marlseg.volumes import check_multiple, open_volume, prepare_volume, read, write


class ExtractStage(FragmentBlocksStage):
    """Blockwise relabelling of fragments into a segmentation."""

    name = "extract"
    description = "Relabel the fragments through one LUT into a segmentation zarr."
    read_write_conflict = False

    def check(self) -> None:
        super().check()
        frags = open_fragments(self.config)
        check_multiple("extract.block_shape", self.block_shape, frags.voxel_size)
        check_lut(self.config, "extract.threshold", self.config.extract.threshold)
        check_existing_output(
            self.config.segmentation_ds(),
            "extract.segmentation",
            frags.roi,
            frags.voxel_size,
            np.uint64,
            self.block_shape,
        )

    def fingerprint(self) -> dict:
        lut = check_lut(self.config, "extract.threshold", self.config.extract.threshold)
        return {
            "fragments": upstream_fingerprint(self.config),
            "lut": str(lut.absolute()),
            "lut_digest": file_digest(lut),
            "threshold": self.config.extract.threshold,
            "block_shape": self.block_shape,
            "output": ref_id(self.config.segmentation_ds()),
        }

    def prepare(self) -> None:
        frags = open_fragments(self.config)
        prepare_volume(
            self.config.segmentation_ds(),
            frags.roi,
            frags.voxel_size,
            np.uint64,
            self.block_shape,
            field="extract.segmentation",
        )

    def init_worker(self) -> None:
        self.fragments = open_fragments(self.config)
        self.out = open_volume(
            self.config.segmentation_ds(), mode="r+", field="extract.segmentation"
        )
        lut = check_lut(self.config, "extract.threshold", self.config.extract.threshold)
        self.fragment_ids, self.segment_ids = load_lut(lut)

    def process_block(self, block) -> None:
        frags = read(self.fragments, block.write_roi, fill_value=0)
        write(self.out, block.write_roi, apply_lut(frags, self.fragment_ids, self.segment_ids))
        maybe_die_for_test(self.name)  # segmentation written, block not yet marked done
