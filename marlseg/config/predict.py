"""The ``predict`` section (``01_predict.py``). Imports only :mod:`marlseg.config.base`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import field_validator

from marlseg.config.base import DatasetRef, PosInt, StageSection, check_block, check_context


class PredictConfig(StageSection):
    """Blockwise affinity prediction (``01_predict.py``).

    The network sees windows of ``network.input_shape`` voxels (from the checkpoint) laid on
    one grid over the whole volume; ``margin`` is cropped from every side of each window's
    output, so windows overlap by twice the margin and each voxel's affinities come from a
    window where it is at least ``margin`` from the edge. The grid does not depend on the
    blocks, so the output does not either (resume and any block shape give the same result).
    Outside the volume, raw is mirrored."""

    checkpoint: Path | None = None
    """Trained network (``00_train.py`` output; its ``network`` entry defines the
    architecture). ``null``: the checkpoint shipped with marlseg, ``checkpoints/unetr_fib.pt``."""
    affs: DatasetRef | None = None
    """Output affinities (uint8). ``null``: ``run.dir/affs.zarr`` / ``volumes/affs``."""
    block_shape: list[int] | None = None
    """Write block shape in nm; ``null``: the window's core (input minus both margins) times 2
    on every axis. Best a multiple of the core (else windows on block borders run twice)."""
    margin: list[int] | None = None
    """nm cropped from each side of each window's output (z, y, x); ``null``: 1/16 of the
    network input on every axis, rounded to whole voxels."""
    batch_size: PosInt = 4
    """Windows per forward pass."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where workers run the network: the worker's GPU if it has one (``auto``), else the CPU."""

    _v_block = field_validator("block_shape")(classmethod(lambda cls, v: check_block(v)))
    _v_margin = field_validator("margin")(classmethod(lambda cls, v: check_context(v)))
