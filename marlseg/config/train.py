"""The ``train`` section (``00_train.py``) and its ``validation`` crop. Imports only
:mod:`marlseg.config.base`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from marlseg.config.base import (
    DatasetRef,
    NonNegInt,
    PosInt,
    Section,
    Unit,
    check_block,
    check_shape,
)


class ValidationConfig(Section):
    """A labelled crop not used for training, scored every ``train.validate_every`` iterations.

    Validation runs an in-memory chain equivalent to the blockwise one: the crop is predicted
    with the same windows and margin as ``01_predict.py``, ``waterz.agglomerate`` (its own
    watershed fragments, then agglomeration with ``merge_function``) segments it at each of
    ``thresholds``, and skimage scores it (variation of information, adapted Rand error)
    against ``labels``, ignoring label 0. The best threshold's VOI (split + merge) ranks
    checkpoints."""

    raw: DatasetRef
    labels: DatasetRef
    offset: list[int] | None = None
    """Crop begin, nm (z, y, x); ``null``: the labels' begin."""
    shape: list[int] | None = None
    """Crop shape, nm; ``null``: up to the labels' end."""
    thresholds: list[Unit] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    merge_function: str = "hist_quant_75"
    """waterz merge function: ``hist_quant_N``, ``mean``, ``max``, ``min``, ..."""

    _v_shape = field_validator("shape")(classmethod(lambda cls, v: check_block(v)))
    _v_offset = field_validator("offset")(classmethod(lambda cls, v: check_shape(v)))


class TrainConfig(Section):
    """Affinity training of the UNETR (``00_train.py``). Outputs go to ``run.dir/train/``:
    ``checkpoints/`` (every ``checkpoint_every``; the run resumes from the last), ``best.pt``
    (best validation VOI), ``loss.csv``, ``validation.csv``, ``tensorboard/`` and
    ``snapshots/`` (PNG: raw / prediction / target, middle section). The architecture is the
    ``network`` section; the network's input and output are both ``network.input_shape``."""

    raw: list[DatasetRef] = []
    """Raw volumes to train on (HDF5 or zarr, one voxel size)."""
    labels: list[DatasetRef] = Field(default=[], validate_default=True)
    """Neuron-id volumes, one per ``raw`` (label 0 = boundary/background)."""
    masks: list[DatasetRef] = []
    """Optional labelled-region masks, one per ``raw`` (non-zero = labelled); affinities
    leaving the labelled region get no weight. ``[]``: everything is labelled."""
    neighborhood: list[list[int]] = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    """Affinity offsets, voxels (z, y, x): the nearest three first, long-range ones may
    follow (e.g. ``[-3, 0, 0], [0, -9, 0], [0, 0, -9]``)."""
    init_encoder: Path | None = None
    """Pretraining checkpoint whose encoder initialises the UNETR (key for key)."""
    iterations: PosInt = 1000
    batch_size: PosInt = 1
    lr: float = Field(1e-4, gt=0)
    """Adam learning rate."""
    loss: Literal["bce", "mse"] = "bce"
    """Class-balanced (gunpowder ``BalanceLabels`` weights) binary cross-entropy on the
    logits, or mean squared error on the sigmoid affinities (as lsd)."""
    augment: bool | dict[str, Any] = True
    """``true``, ``false``, or the options of ``marlseg.gp_pipelines.augment.AugmentOptions``
    to change, e.g. ``{"noise": false}``."""
    min_masked: Unit = 0.5
    """Reject crops with less than this fraction of labelled voxels (mask, else label != 0)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: PosInt | None = None
    """torch CPU threads (``null``: torch's default)."""
    log_every: PosInt = 10
    """Iterations between loss rows (CSV, TensorBoard, console)."""
    checkpoint_every: PosInt = 250
    keep_checkpoints: PosInt = 3
    """Periodic checkpoints kept (older ones are deleted; ``best.pt`` is kept apart)."""
    snapshot_every: PosInt = 250
    validate_every: PosInt = 500
    """Iterations between validations (and at the end); keeps the best checkpoint by VOI."""
    validation: ValidationConfig | None = None
    """A labelled crop not used for training (``{"raw": ref, "labels": ref, ...}``)."""
    lsds: bool = False
    """Also learn local shape descriptors (10 channels, lsd's ``AddLocalShapeDescriptor``) as
    an auxiliary output beside the affinities (MTLSD). Prediction writes the affinities only."""
    lsd_sigma: float = Field(80.0, gt=0)
    """``lsds``: the descriptors' Gaussian standard deviation, nm."""
    lsd_downsample: PosInt = 2
    """``lsds``: compute the descriptors on a grid this many times coarser (speed)."""
    lsd_weight: float = Field(1.0, ge=0)
    """``lsds``: weight of the descriptors' masked MSE next to the affinity loss."""
    export: Path | None = None
    """At the end, write the best checkpoint (the last one without validation), model only,
    here. ``null``: ``run.dir/train/export.pt``. Shipping a model is a deliberate copy to
    ``checkpoints/`` (see ``checkpoints/README.md``), never a side effect of training."""
    precache_workers: NonNegInt = 2
    """Batch-producing processes (gunpowder ``PreCache``); 0 produces batches in the training
    process, each a pure function of (seed, iteration), so a resumed run is exact."""
    seed: int = 0

    @field_validator("labels", "masks")
    @classmethod
    def _one_per_raw(cls, v: list[DatasetRef], info: Any) -> list[DatasetRef]:
        # labels: always one per raw (also when omitted); masks: none, or one per raw
        raw = info.data.get("raw")
        if raw is not None and (v or info.field_name == "labels") and len(v) != len(raw):
            raise ValueError(f"{len(v)} volumes for {len(raw)} raw volumes (one per raw)")
        return v

    @field_validator("neighborhood")
    @classmethod
    def _nearest_first(cls, nbh: list[list[int]]) -> list[list[int]]:
        if any(len(o) != 3 or not any(o) for o in nbh):
            raise ValueError(f"offsets are 3 integers (z, y, x), not all 0: {nbh}")
        if nbh[:3] != [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]:
            raise ValueError(
                "must start with the nearest three [[-1, 0, 0], [0, -1, 0], [0, 0, -1]] "
                f"(post-processing reads channels 0-2 as those), got {nbh[:3]}"
            )
        return nbh
