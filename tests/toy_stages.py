"""Small blockwise stages used to test the runner and launchers without any real algorithm.

``ToyCopyStage`` copies ``raw`` into ``run.dir/toy.zarr`` block by block (optionally failing on
chosen blocks, or sleeping to make a block slow), so tests can assert bit-identical output,
resume counts and failure handling against a real daisy scheduler and real worker processes.
"""

from __future__ import annotations

import os
import time

import numpy as np
from funlib.geometry import Coordinate, Roi

from marlseg.blockwise import BlockwiseStage
from marlseg.config import DatasetRef
from marlseg.volumes import check_multiple, open_volume, prepare_volume, read, write


class ToyCopyStage(BlockwiseStage):
    name = "toy"
    block_shape = (100, 100, 100)

    @property
    def out_ref(self) -> DatasetRef:
        return DatasetRef(path=self.run_dir / "toy.zarr", dataset="copy")

    def check(self) -> None:
        super().check()
        raw = open_volume(self.config.raw, field="raw")
        check_multiple("toy.block_shape", self.block_shape, raw.voxel_size)

    def voxel_size(self) -> Coordinate:
        return open_volume(self.config.raw, field="raw").voxel_size

    def geometry(self) -> tuple[Roi, Coordinate, Coordinate]:
        raw = open_volume(self.config.raw, field="raw")
        return raw.roi, Coordinate(self.block_shape), Coordinate(raw.voxel_size) * 2

    def fingerprint(self) -> dict:
        return {"raw": str(self.config.raw), "block_shape": list(self.block_shape)}

    def prepare(self) -> None:
        raw = open_volume(self.config.raw, field="raw")
        prepare_volume(self.out_ref, raw.roi, raw.voxel_size, np.uint8, self.block_shape)

    def init_worker(self) -> None:
        self.raw = open_volume(self.config.raw, field="raw")
        self.out = open_volume(self.out_ref, mode="r+")
        self.fail_blocks = {int(b) for b in os.environ.get("TOY_FAIL_BLOCKS", "").split(",") if b}
        self.sleep = float(os.environ.get("TOY_SLEEP", "0"))
        self.alloc_mb = int(os.environ.get("TOY_ALLOC_MB", "0"))

    def process_block(self, block) -> None:
        if block.block_id[1] in self.fail_blocks:
            raise RuntimeError(f"planted failure in block {block.block_id[1]}")
        if os.environ.get("TOY_DIE"):
            os._exit(1)  # the worker process dies mid-block
        if self.alloc_mb:
            np.ones(self.alloc_mb * 2**20, dtype=np.uint8)  # touched, so really resident
        data = read(self.raw, block.write_roi)
        time.sleep(self.sleep)
        write(self.out, block.write_roi, data)


class ToyClusterStage(ToyCopyStage):
    """The copy stage with blocks big enough for a handful of cluster jobs: 16 blocks of
    25 x 50 x 50 voxels on ``data/fib25_tiny.h5``. ``TOY_SLEEP`` (seconds per block) and
    ``TOY_FAIL_BLOCKS`` reach the workers through the job environment."""

    block_shape = (250, 500, 500)
