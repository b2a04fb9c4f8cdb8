"""Blockwise affinity prediction (``01_predict.py``): raw -> uint8 affinities in zarr.

The blocks' write ROIs are predicted with :func:`marlseg.inference.predict_region`, whose
windows lie on one grid over the whole volume, anchored at the raw's begin: a voxel's
affinities are the same whatever the block shape, and a resumed run writes exactly what an
uninterrupted one would (the margin, the mirroring and the normalisation are described in
:mod:`marlseg.inference`).

Each worker loads the model once (:meth:`PredictStage.init_worker`), on its GPU if it has one
(``predict.device``), then per block reads the raw its windows need, runs them in batches of
``predict.batch_size`` and writes the block's write ROI (idempotent: a pure function of the
raw and the checkpoint). The checkpoint's ``network`` entry defines the architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from funlib.geometry import Coordinate, Roi

from marlseg.blockwise import BlockwiseStage
from marlseg.config import DatasetRef, NetworkConfig
from marlseg.crashtest import maybe_die_for_test
from marlseg.errors import ConfigError
from marlseg.files import file_digest
from marlseg.inference import (
    affinity_channels,
    checkpoint_path,
    default_margin,
    load_model,
    predict_region,
    read_unetr_checkpoint,
    select_device,
    to_uint8,
)
from marlseg.stage import check_writable
from marlseg.volumes import check_multiple, is_hdf5, open_volume, prepare_volume, write


# --- the stage --------------------------------------------------------------------------------
class PredictStage(BlockwiseStage):
    """Blockwise affinity prediction with a trained UNETR."""

    name = "predict"
    read_write_conflict = False  # reads raw only, writes inside its write ROI only

    # scheduler side
    def _raw_ref(self) -> DatasetRef:
        if self.config.raw is None:
            raise ConfigError("raw", "required: the raw volume to predict")
        return self.config.raw

    def _checkpoint(self) -> dict[str, Any]:
        if not hasattr(self, "_ckpt"):
            path = checkpoint_path(self.config.predict.checkpoint)
            self._ckpt = read_unetr_checkpoint(path)
            self._ckpt["path"] = path
        return self._ckpt

    def _raw_meta(self) -> tuple[Roi, Coordinate]:
        raw = open_volume(self._raw_ref(), field="raw")
        if len(raw.voxel_size) != 3 or raw.channel_dims:
            raise ConfigError("raw", f"expected a 3D volume without channels, got {raw.shape}")
        roi, vs = raw.roi, raw.voxel_size
        f = getattr(raw._source_data, "file", None)
        if f is not None:
            f.close()
        return roi, Coordinate(vs)

    def network(self) -> NetworkConfig:
        return self._checkpoint()["network_config"]

    def margin_voxels(self) -> list[int]:
        vs = self.voxel_size()
        if self.config.predict.margin is None:
            return default_margin(self.network().input_shape)
        return [int(m) // int(v) for m, v in zip(self.config.predict.margin, vs)]

    def core_voxels(self) -> list[int]:
        return [i - 2 * m for i, m in zip(self.network().input_shape, self.margin_voxels())]

    def voxel_size(self) -> Coordinate:
        return self._raw_meta()[1]

    def geometry(self) -> tuple[Roi, Coordinate, Coordinate]:
        roi, vs = self._raw_meta()
        if self.config.predict.block_shape is not None:
            block = Coordinate(self.config.predict.block_shape)
        else:
            block = Coordinate(c * 2 for c in self.core_voxels()) * vs
        return roi, block, Coordinate(self.margin_voxels()) * vs

    @property
    def affs_ref(self) -> DatasetRef:
        return self.config.affs

    def check(self) -> None:
        super().check()
        roi, vs = self._raw_meta()
        ckpt = self._checkpoint()
        p = self.config.predict
        if p.block_shape is not None:
            check_multiple("predict.block_shape", p.block_shape, vs)
        if p.margin is not None:
            check_multiple("predict.margin", p.margin, vs)
        if any(c <= 0 for c in self.core_voxels()):
            raise ConfigError(
                "predict.margin",
                f"{self.margin_voxels()} voxels on each side leave nothing of the network "
                f"input {self.network().input_shape}",
            )
        if is_hdf5(Path(self.affs_ref.path)):
            raise ConfigError("predict.affs.path", "outputs are zarr containers, not HDF5")
        check_writable("predict.affs.path", Path(self.affs_ref.path).parent)
        if p.device == "cuda":
            select_device("cuda")
        del ckpt

    def fingerprint(self) -> dict[str, Any]:
        ckpt = self._checkpoint()
        return {
            "raw": str(self._raw_ref()),
            "checkpoint": file_digest(ckpt["path"]),
            "network": ckpt["network"],
            "margin": self.margin_voxels(),
            "affs": str(self.affs_ref),
        }

    def prepare(self) -> None:
        roi, block, _ = self.geometry()
        ckpt = self._checkpoint()
        affs = prepare_volume(
            self.affs_ref,
            roi,
            self.voxel_size(),
            np.uint8,
            block,
            num_channels=affinity_channels(ckpt),
            field="predict.affs",
        )
        nbh = ckpt.get("neighborhood")
        if nbh is not None:
            affs._source_data.attrs["neighborhood"] = nbh

    # worker side
    def init_worker(self) -> None:
        import torch

        torch.set_num_threads(max(1, self.workers.cpus))
        self.device = select_device(self.config.predict.device, "predict.device")
        self.model, ckpt = load_model(checkpoint_path(self.config.predict.checkpoint), self.device)
        self.input_shape = list(self.model.encoder.img_size)
        self._ckpt = {**ckpt, "path": checkpoint_path(self.config.predict.checkpoint)}
        self.raw = open_volume(self._raw_ref(), field="raw")
        self.affs = open_volume(self.affs_ref, mode="r+", field="predict.affs")
        self.margin = self.margin_voxels()

    def process_block(self, block) -> None:
        self.predict_roi(block.write_roi)
        maybe_die_for_test(self.name)  # affinities written, block not yet marked done

    def predict_roi(self, roi: Roi) -> None:
        """Predict and write ``roi`` (world units, inside the raw ROI after clipping)."""
        roi = roi.intersect(self.raw.roi)
        if roi.empty:
            return
        vs = self.raw.voxel_size
        begin = (roi.begin - self.raw.roi.begin) / vs
        shape = roi.shape / vs
        affs = predict_region(
            self.model,
            self.raw._source_data,
            begin,
            shape,
            self.input_shape,
            self.margin,
            self.device,
            self.config.predict.batch_size,
        )
        write(self.affs, roi, to_uint8(affs))
