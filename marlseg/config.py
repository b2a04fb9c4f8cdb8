"""The run config: one JSON file per run, read by every stage.

Each section is a pydantic model; every field is typed and documented right under it, so this
file *is* the config reference (the README's table is generated from it: ``marlseg.config``
``--reference``). Unknown keys are errors. Sizes (block shapes, contexts) are in world units
(nm), like daisy ROIs; voxel sizes come from the data, never from the config.

Loading never writes anything. Problems surface as :class:`~marlseg.errors.ConfigError` with the
dotted field path, e.g. ``error: fragments.context: value must be >= 0, got -8``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from marlseg.errors import ConfigError

NonNegInt = Annotated[int, Field(ge=0)]
PosInt = Annotated[int, Field(gt=0)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True
    )


class DatasetRef(Section):
    """A dataset inside a container: ``{"path": "x.zarr" | "x.h5", "dataset": "volumes/raw"}``."""

    path: Path
    """Container path: a zarr directory (``.zarr``/``.n5``) or an HDF5 file (``.h5``/``.hdf``).
    Relative paths are taken from the config file's directory (a ``--set`` value's from the
    directory the command runs in)."""
    dataset: str
    """Dataset inside the container, e.g. ``volumes/raw``."""

    def __str__(self) -> str:
        return f"{self.path}:{self.dataset}"


def _check_shape(v: list[int] | None, n: int = 3) -> list[int] | None:
    if v is None:
        return v
    if len(v) != n:
        raise ValueError(f"expected {n} values (z, y, x), got {len(v)}")
    return v


def _check_context(v: list[int] | None) -> list[int] | None:
    v = _check_shape(v)
    if v is not None and any(c < 0 for c in v):
        raise ValueError(f"context must be >= 0 on every axis, got {v}")
    return v


def _check_block(v: list[int] | None) -> list[int] | None:
    v = _check_shape(v)
    if v is not None and any(c <= 0 for c in v):
        raise ValueError(f"block shape must be > 0 on every axis, got {v}")
    return v


class RunConfig(Section):
    dir: Path = Path("runs/default")
    """Everything a run writes goes under here: outputs (unless a section names its own), block
    tracking, logs, the embedded database, run summaries, scores."""


class DbConfig(Section):
    uri: str | None = None
    """MongoDB URI (``mongodb://user:pass@host:27017``). ``null``: the environment variable
    ``MARLSEG_MONGODB_URI`` if set, else an embedded server with its data under ``run.dir/db``."""
    name: str | None = None
    """Database name; one RAG per database, owned by the run that created it (another run
    is refused). ``null``: ``marlseg_<run.dir name>_<8 hex of its absolute path>``, one
    database per run dir."""
    bind: str = "127.0.0.1"
    """Address the embedded server listens on. Use ``0.0.0.0`` when cluster workers on other
    nodes must reach it."""


GPU_STAGES = ("predict", "train", "pretrain")
"""Stages whose cluster workers get one GPU each unless ``workers.gpus`` says otherwise."""

_TIME_LIMIT = re.compile(r"^(?:(\d+)-)?(\d+):(\d\d):(\d\d)$")


def time_limit_seconds(value: str) -> int:
    """Seconds in a ``workers.time_limit``: minutes (``"90"``), ``HH:MM:SS`` or
    ``D-HH:MM:SS``. Raises ValueError otherwise."""
    if value.isdigit():
        return int(value) * 60
    m = _TIME_LIMIT.match(value)
    if m is None or int(m.group(3)) > 59 or int(m.group(4)) > 59:
        raise ValueError(f"expected minutes, HH:MM:SS or D-HH:MM:SS, got {value!r}")
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


class WorkersConfig(Section):
    """How a stage's workers run. The global ``workers`` section is the default; a stage's own
    ``workers`` object overrides any of these keys for that stage alone. The scheduler keys
    (``partition`` ... ``extra_flags``) apply to ``slurm``/``lsf`` workers; ``local`` workers
    ignore them except ``cpus`` (their ``OMP_NUM_THREADS``)."""

    type: Literal["local", "slurm", "lsf"] = "local"
    """``local``: worker processes on this machine; ``slurm``: one ``srun`` job per worker;
    ``lsf``: one ``bsub -K`` job per worker. Each runs ``python -m marlseg.worker STAGE
    CONFIG`` and connects back to the scheduler (docs/cluster.md)."""
    num_workers: PosInt = 2
    """Workers running at once."""
    partition: str | None = None
    """Slurm partition (``--partition``); ``null``: the cluster's default."""
    queue: str | None = None
    """LSF queue (``bsub -q``); ``null``: the cluster's default."""
    time_limit: str | None = None
    """Wall-time limit per worker job: minutes (``"90"``), ``HH:MM:SS`` or ``D-HH:MM:SS``
    (Slurm ``--time``; LSF ``-W`` in whole minutes, rounded up). ``null``: the queue's
    default."""
    cpus: PosInt = 1
    """CPUs per worker (Slurm ``--cpus-per-task``; LSF ``-n`` on one host); also the worker's
    ``OMP_NUM_THREADS`` unless that is set already."""
    mem_mb: PosInt | None = None
    """Memory per worker in MB (Slurm ``--mem``; LSF ``-M`` and ``rusage[mem=]``); ``null``:
    the queue's default. Local workers cap their own address space at it (``ulimit -v``):
    an allocation beyond it fails that block (retried, then reported) instead of starving
    the machine. The address space includes mapped libraries (about 0.9 GB for a worker with
    torch loaded), so give local workers at least ~1500."""
    gpus: NonNegInt | None = None
    """GPUs per worker (Slurm ``--gpus``; LSF ``-gpu num=N``). ``null``: 1 for the GPU stages
    (``predict``, ``train``, ``pretrain``) on ``slurm``/``lsf``, else 0. Local workers ignore
    it (they use the machine's GPUs as they find them)."""
    account: str | None = None
    """Account/project to charge (Slurm ``--account``; LSF ``-P``)."""
    extra_flags: list[str] = []
    """Extra scheduler flags, passed verbatim before the worker command, e.g.
    ``["--qos=high", "--constraint=a100"]`` or ``["-R", "select[gpu_model==A100]"]``."""
    host: str | None = None
    """Address workers use to reach the scheduler; ``null`` detects one (``127.0.0.1`` for local
    workers). Set it when compute nodes reach this machine by another name or network."""
    max_retries: NonNegInt = 2
    """Retries of a failed block before the stage reports it failed."""
    max_worker_restarts: NonNegInt = 4
    """Worker deaths tolerated before the stage gives up (no endless respawning); a job that
    cannot even be submitted counts as a death, so a bad partition fails within seconds."""
    block_timeout: float | None = None
    """Seconds after which a stuck block's worker is killed and the block retried elsewhere."""

    @field_validator("time_limit", mode="before")
    @classmethod
    def _time_limit(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if isinstance(v, str):
            v = v.strip()
            time_limit_seconds(v)
        return v

    def gpus_for(self, stage: str) -> int:
        """GPUs each worker of ``stage`` requests: ``gpus``, or the default described there."""
        if self.gpus is not None:
            return self.gpus
        return 1 if self.type != "local" and stage in GPU_STAGES else 0

    def time_limit_minutes(self) -> int | None:
        """``time_limit`` in whole minutes, rounded up (LSF ``-W``)."""
        if self.time_limit is None:
            return None
        return -(-time_limit_seconds(self.time_limit) // 60)


class _StageSection(Section):
    workers: dict[str, Any] | None = None
    """Overrides of the global ``workers`` keys for this stage."""


class PredictConfig(_StageSection):
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

    _v_block = field_validator("block_shape")(classmethod(lambda cls, v: _check_block(v)))
    _v_margin = field_validator("margin")(classmethod(lambda cls, v: _check_context(v)))


class FragmentsConfig(_StageSection):
    affs: DatasetRef | None = None
    """Input affinities (uint8 or float, channels first). ``null``: ``predict.affs``."""
    boundary: DatasetRef | None = None
    """Use a boundary map (float in [0, 1], 1 = membrane) instead of affinities:
    ``aff_d(x) = 1 - max(b(x), b(x + d))`` for the nearest three neighbours, computed per block."""
    fragments: DatasetRef | None = None
    """Output fragment ids (uint64). ``null``: ``run.dir/fragments.zarr`` / ``volumes/fragments``."""
    mask: DatasetRef | None = None
    """Optional mask (non-zero = process); voxels outside get fragment 0 and blocks entirely
    outside are skipped."""
    block_shape: list[int] = [800, 800, 800]
    """Write block shape in nm. Fragments are cut at block faces, so larger blocks cut fewer
    neurites (chosen with ``workflows/tune.py`` on the selection part of the medulla crop,
    docs/network.md; 400 nm blocks cut most neurites)."""
    context: list[int] = [80, 80, 80]
    """Context read around each block, nm."""
    method: Literal["watershed", "mutex", "waterz"] = "watershed"
    """``watershed``: seeded by maxima of the distance transform of the boundary-free mask (as
    lsd); ``mutex``: mutex watershed (mwatershed) with attractive/repulsive long-range offsets;
    ``waterz``: waterz's own compiled initial watershed (fastest; pure-membrane voxels get 0)."""
    fragments_in_xy: bool = False
    """Extract fragments per z-section (anisotropic ssTEM data)."""
    boundary_threshold: Unit = 0.5
    """Mean affinity below which a voxel counts as boundary for the distance transform."""
    min_seed_distance: PosInt = 15
    """Minimum distance between watershed seeds, voxels (chosen with ``workflows/tune.py``,
    docs/network.md)."""
    mutex_offsets: list[list[int]] = [[-2, 0, 0], [0, -2, 0], [0, 0, -2]]
    """``mutex``: long-range offsets (voxels, negative along one axis). Their affinities are the
    weakest nearest-neighbour affinity on the straight path (a membrane in between repels)."""
    mutex_bias: list[float] = [-0.5, -0.5]
    """``mutex``: added to the [nearest, long-range] affinities; positive edges attract,
    negative ones repel (the defaults: attract above 0.5, repel below, tuned on fib_train)."""
    epsilon_agglomerate: Unit = 0.0
    """If > 0, merge fragments within a block up to this waterz threshold before storing."""
    filter_fragments: Unit = 0.0
    """Drop fragments whose mean affinity is below this value (set to 0)."""
    min_size: NonNegInt = 0
    """Drop fragments with fewer voxels than this (set to 0)."""

    _v_block = field_validator("block_shape")(classmethod(lambda cls, v: _check_block(v)))
    _v_context = field_validator("context")(classmethod(lambda cls, v: _check_context(v)))

    @field_validator("mutex_offsets")
    @classmethod
    def _mutex_offsets(cls, v: list[list[int]]) -> list[list[int]]:
        for o in v:
            if len(o) != 3 or sum(1 for x in o if x != 0) != 1 or min(o) >= 0:
                raise ValueError(f"offsets are negative along exactly one axis (z, y, x), got {o}")
        return v

    @field_validator("mutex_bias")
    @classmethod
    def _mutex_bias(cls, v: list[float]) -> list[float]:
        if len(v) != 2:
            raise ValueError(f"expected 2 values (nearest, long-range), got {len(v)}")
        return v


class AgglomerateConfig(_StageSection):
    merge_function: str = "mean"
    """waterz merge function (default chosen with ``workflows/tune.py``, docs/network.md):
    ``hist_quant_N`` (N = 10, 15, ..., 95), ``hist_quant_N_initmax``,
    ``mean``, ``max``, ``min``, or a waterz scoring-function type (table:
    ``marlseg.watershed.MERGE_FUNCTIONS``)."""
    block_shape: list[int] | None = None
    """Write block shape, nm; ``null``: ``fragments.block_shape``. A whole multiple of it, so
    every fragment (and the edges it owns) belongs to exactly one agglomeration block."""
    context: list[int] = [80, 80, 80]
    """Context read around each block, nm."""

    _v_block = field_validator("block_shape")(classmethod(lambda cls, v: _check_block(v)))
    _v_context = field_validator("context")(classmethod(lambda cls, v: _check_context(v)))


Thresholds = list[Unit]


TUNE_THRESHOLDS: list[float] = [round(0.02 * i, 2) for i in range(1, 16)] + [
    round(0.05 * i, 2) for i in range(7, 19)
]
"""``segments.thresholds``' and ``tune.thresholds``' default: 0.02-0.30 in steps of 0.02, where merge scores concentrate,
then 0.35-0.90 in steps of 0.05."""


class SegmentsConfig(Section):
    thresholds: Thresholds = TUNE_THRESHOLDS
    """Merge thresholds: fragments joined by edges with score <= threshold form one segment.
    Default: 0.02-0.30 in steps of 0.02, where merge scores concentrate, then 0.35-0.90 in
    steps of 0.05 (the tuner's grid)."""
    edge_score: str = "merge_score"
    """Edge attribute to threshold: ``merge_score`` (waterz) or ``rl_weight`` (07)."""
    method: Literal["threshold", "mutex"] | None = None
    """How edges make segments: ``threshold`` (connected components of edges with score
    <= t, streamed) or ``mutex`` (graph mutex watershed: scores below t attract, above t
    repel, strongest first; holds all edges). ``null``: ``edge_rl.partitioner`` when
    ``edge_score`` is ``edge_rl.weight_attr`` (the partition 07 was rewarded for), else
    ``threshold``."""


class ExtractConfig(_StageSection):
    threshold: Unit = 0.5
    """Which LUT (one of ``segments.thresholds``) to relabel the fragments with."""
    segmentation: DatasetRef | None = None
    """Output segmentation. ``null``: ``run.dir/segmentation.zarr`` / ``volumes/segmentation_<t>``."""
    block_shape: list[int] | None = None
    """Write block shape, nm; ``null``: ``fragments.block_shape``."""

    _v_block = field_validator("block_shape")(classmethod(lambda cls, v: _check_block(v)))


class EvaluateConfig(_StageSection):
    thresholds: Thresholds | None = None
    """Thresholds to score; ``null``: all of ``segments.thresholds``."""
    ignore_label: int | None = 0
    """Ground-truth label excluded from scoring (``null``: score every voxel)."""
    block_shape: list[int] | None = None
    """Block shape for the contingency table, nm; ``null``: ``fragments.block_shape``."""

    _v_block = field_validator("block_shape")(classmethod(lambda cls, v: _check_block(v)))


class NetworkConfig(Section):
    """The ViT / UNETR architecture shared by pretraining, training and prediction."""

    patch_size: list[int] = [4, 8, 8]
    """ViT patch size per axis, voxels (``[16,16,16]`` isotropic, ``[4,16,16]`` ssTEM, ...)."""
    input_shape: list[int] = [16, 64, 64]
    """Network input shape, voxels; a multiple of ``patch_size`` on every axis."""
    hidden_size: PosInt = 192
    """ViT embedding width."""
    mlp_dim: PosInt = 384
    """Width of the transformer blocks' MLP."""
    num_layers: PosInt = 4
    """Transformer blocks in the ViT."""
    num_heads: PosInt = 4
    """Attention heads; must divide ``hidden_size``."""
    feature_size: PosInt = 16
    """UNETR decoder width."""

    @model_validator(mode="after")
    def _multiple(self) -> NetworkConfig:
        _check_block(self.patch_size)
        _check_block(self.input_shape)
        for i, p in zip(self.input_shape, self.patch_size):
            if i % p:
                raise ValueError(
                    f"input_shape {self.input_shape} is not a multiple of patch_size "
                    f"{self.patch_size}"
                )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads {self.num_heads} does not divide hidden_size {self.hidden_size}"
            )
        return self


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

    _v_shape = field_validator("shape")(classmethod(lambda cls, v: _check_block(v)))
    _v_offset = field_validator("offset")(classmethod(lambda cls, v: _check_shape(v)))


class TrainConfig(Section):
    """Affinity training of the UNETR (``00_train.py``). Outputs go to ``run.dir/train/``:
    ``checkpoints/`` (every ``checkpoint_every``; the run resumes from the last), ``best.pt``
    (best validation VOI), ``loss.csv``, ``validation.csv``, ``tensorboard/`` and
    ``snapshots/`` (PNG: raw / prediction / target, middle section). The architecture is the
    ``network`` section; the network's input and output are both ``network.input_shape``."""

    raw: list[DatasetRef] = []
    """Raw volumes to train on (HDF5 or zarr, one voxel size)."""
    labels: list[DatasetRef] = []
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
        raw = info.data.get("raw")
        if raw is not None and v and len(v) != len(raw):
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

    @model_validator(mode="after")
    def _labels(self) -> TrainConfig:
        if len(self.labels) != len(self.raw):
            raise ValueError(f"{len(self.labels)} labels for {len(self.raw)} raw volumes")
        return self


class PretrainConfig(Section):
    """MAE pretraining with RL-chosen masks (``00_pretrain.py``). Outputs go to
    ``run.dir/pretrain/``: ``checkpoints/``, ``log.csv``, ``tb/`` (TensorBoard), ``curves.png``
    and ``reconstructions/``. The architecture is the ``network`` section."""

    raw: list[DatasetRef] = []
    """Raw volumes to pretrain on (HDF5 or zarr, one voxel size)."""
    masking: Literal["marl", "random"] = "marl"
    """``marl``: masks chosen by the shared multi-agent policy (A2C); ``random``: a fixed
    ``mask_ratio`` drawn uniformly (the plain-MAE baseline). Everything else is the same code."""
    mask_ratio: Unit = 0.6
    """``random``: the mask ratio. ``marl``: every agent's mask probability at the start (start
    low and let the policy raise it)."""
    min_ratio: Unit = 0.4
    """``marl``: the executed mask always hides at least this fraction of patches."""
    max_ratio: Unit = 0.95
    """``marl``: ... and at most this fraction (at least one patch stays visible)."""
    iterations: PosInt = 1000
    """MAE updates."""
    batch_size: PosInt = 4
    lr: float = Field(1.5e-4, gt=0)
    """MAE learning rate (AdamW), after a linear warm-up."""
    warmup: NonNegInt = 50
    """Iterations of linear learning-rate warm-up."""
    weight_decay: float = Field(0.05, ge=0)
    decoder_dim: PosInt = 128
    """Width of the lightweight MAE decoder."""
    decoder_layers: PosInt = 2
    decoder_heads: PosInt = 4
    decoder_local: bool = False
    """Add a 3x3x3 convolution over the visible tokens (on the patch grid) to every decoder
    token: a locality prior for the decoder (the encoder is unchanged)."""
    hog_weight: float = Field(1.0, ge=0)
    """Weight of the HOG loss next to the voxel MSE (both on per-patch standardised targets)."""
    hog_bins: PosInt = 9
    """HOG orientation bins over [0, pi)."""
    hog_cell: PosInt = 4
    """HOG cell size in y and x, voxels; must divide ``network.patch_size`` in y and x."""
    target_sigma: list[float] = [0.0, 0.0, 0.0]
    """Voxel target: Gaussian smoothing sigma per axis (z, y, x), voxels; 0 = none (see
    ``marlseg.networks.voxel_target``)."""
    target_pool: list[int] = [1, 1, 1]
    """Voxel target: average-pooling factor per axis (z, y, x); each divides
    ``network.patch_size``."""
    target_floor: float = Field(0.0, ge=0)
    """Voxel target: floor of the per-patch standard deviation (raw scaled to [-1, 1]); 0 is
    MAE's per-patch standardisation, > 0 keeps low-contrast patches' noise from counting."""
    policy_lr: float = Field(1e-3, gt=0)
    """``marl``: learning rate of the policy and critic (Adam)."""
    policy_every: PosInt = 2
    """``marl``: one A2C update per this many MAE updates, on the masks those steps used
    (policy and MAE updates alternate; the policy is fixed while it collects)."""
    policy_hidden: PosInt = 64
    """``marl``: width of the shared policy and the critic."""
    entropy_coef: float = Field(0.01, ge=0)
    """``marl``: entropy bonus (per-agent Bernoulli entropy) against a deterministic mask."""
    value_coef: float = Field(0.5, ge=0)
    ratio_barrier: float = Field(10.0, ge=0)
    """``marl``: weight of the penalty on the policy's mean mask probability outside
    ``[min_ratio, max_ratio]`` (keeps the probabilities inside the hard bounds)."""
    collapse_patience: PosInt = 4
    """Logs in a row with the ratio at a bound or the entropy below ``entropy_floor`` before
    the run warns that the masking policy collapsed."""
    entropy_floor: float = Field(0.05, ge=0)
    """Per-agent policy entropy (nats; at most ln 2 = 0.693) counted as collapsed."""
    augment: bool | dict[str, Any] = True
    """Augment batches (elastic, mirror, transpose, intensity, noise, ssTEM section defects):
    ``true``, ``false``, or the options of ``marlseg.gp_pipelines.augment.AugmentOptions`` to
    change, e.g. ``{"transpose": false}`` (an isotropic volume thinner than the input in z)."""
    precache_workers: NonNegInt = 0
    """Batch-producing processes; 0 keeps batches a pure function of (seed, iteration), so a
    resumed run sees exactly the batches an uninterrupted one would have."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: PosInt = 250
    """Iterations between checkpoints (the run resumes from the last one)."""
    log_every: PosInt = 25
    """Iterations between log rows (CSV, TensorBoard, curves PNG, collapse check)."""
    snapshot_every: PosInt = 250
    """Iterations between reconstruction PNGs (masked input / reconstruction / target)."""
    seed: int = 0

    @model_validator(mode="after")
    def _ratios(self) -> PretrainConfig:
        if self.min_ratio > self.max_ratio:
            raise ValueError(f"min_ratio {self.min_ratio} is above max_ratio {self.max_ratio}")
        if self.masking == "marl" and not self.min_ratio <= self.mask_ratio <= self.max_ratio:
            raise ValueError(
                f"mask_ratio {self.mask_ratio} (the starting ratio) is outside "
                f"[min_ratio, max_ratio] = [{self.min_ratio}, {self.max_ratio}]"
            )
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be within (0, 1), got {self.mask_ratio}")
        return self


class SizePriorConfig(Section):
    """Plausible segment volumes; objects touching the volume border are exempt from the lower
    bound (they are cut)."""

    min_um3: float | None = Field(0.05, ge=0)
    """Smallest plausible segment, µm³ (``null``: no lower bound)."""
    max_um3: float | None = Field(None, gt=0)
    """Largest plausible segment, µm³ (``null``: no upper bound)."""
    softness: float = Field(0.5, gt=0)
    """Width (sigma, in natural log of the volume) of the fall-off outside the range."""
    weight: float = Field(1.0, ge=0)


class ElongationPriorConfig(Section):
    """Tubular (neurite) shape: ratio of the two longest principal axes."""

    min_ratio: float = Field(2.0, gt=1)
    """Axis ratio from which an object earns the full reward (linear from 1)."""
    min_um3: float = Field(0.0, ge=0)
    """Objects below this volume (µm³) are not judged (earn 1: too small to have a shape).
    Keep it small: every fragment below it is a free reward for splitting."""
    weight: float = Field(1.0, ge=0)


class MembranePriorConfig(Section):
    """No merge across strong membrane evidence, no split without any."""

    evidence: Literal["merge_score", "contacts"] = "merge_score"
    """Edge evidence (high = membrane): the waterz ``merge_score`` of ``03_agglomerate.py``, or
    the mean boundary along the contact pooled from ``fragments.boundary`` / affinities."""
    merge_above: Unit = 0.9
    """Evidence above which an edge inside an object is a merge error (ramps to 1): only
    strong membrane evidence forbids a merge, the object priors judge the rest."""
    split_below: Unit = 0.5
    """Evidence below which a cut edge is a split error (ramps to 0): a ramp from 0.5 gives
    every edge a local signal from the first iterations."""
    level: Literal["edge", "object"] = "edge"
    """``edge``: each edge is rewarded for its own decision (local, learnable from a random
    start); ``object``: an object's reward is 1 - its worst violation (a hard constraint)."""
    weight: float = Field(1.0, ge=0)


class TinyPriorConfig(Section):
    """A limited count of tiny segments."""

    max_um3: float = Field(0.005, gt=0)
    """Segments below this volume (µm³) are tiny."""
    max_count: NonNegInt = 10
    """Tiny segments tolerated; beyond that each tiny one earns ``max_count / count``."""
    weight: float = Field(1.0, ge=0)


class ThicknessPriorConfig(Section):
    """Neurites are thin: radius across the long axis (2 x the std along the second principal
    axis) at most ``max_nm`` (reward falls linearly to 0 at twice that)."""

    max_nm: float = Field(200.0, gt=0)
    """Largest plausible neurite radius, nm."""
    min_um3: float = Field(0.0, ge=0)
    """Objects below this volume (µm³) are not judged."""
    weight: float = Field(1.0, ge=0)


class BridgePriorConfig(Section):
    """A small object between two or more large bodies is part of one of them."""

    max_um3: float = Field(0.005, gt=0)
    """Objects below this volume (µm³) are small."""
    body_um3: float = Field(0.05, gt=0)
    """Objects above this volume (µm³) are large bodies."""
    reward: Unit = 0.0
    """Reward of a small object touching two or more bodies."""
    weight: float = Field(1.0, ge=0)


class BlobPriorConfig(Section):
    """A compact, mitochondrion-sized object enclosed by one large body belongs to it."""

    min_um3: float = Field(0.0005, ge=0)
    """Smallest blob, µm³."""
    max_um3: float = Field(0.02, gt=0)
    """Largest blob, µm³."""
    max_ratio: float = Field(1.6, gt=1)
    """Principal axis ratio below which an object is compact."""
    body_um3: float = Field(0.05, gt=0)
    """Objects above this volume (µm³) are large bodies."""
    reward: Unit = 0.0
    """Reward of such a blob as an object of its own."""
    weight: float = Field(1.0, ge=0)


class EdgeRlPriors(Section):
    """The priors that make the reward (``null`` disables one). ``membrane`` is off by default:
    its evidence is an input of the policy (``merge_score``, contacts), so it would reward the
    policy for copying its input; the others judge object size and shape, which no edge
    feature carries."""

    size: SizePriorConfig | None = SizePriorConfig()
    elongation: ElongationPriorConfig | None = ElongationPriorConfig()
    membrane: MembranePriorConfig | None = None
    tiny: TinyPriorConfig | None = TinyPriorConfig()
    thickness: ThicknessPriorConfig | None = ThicknessPriorConfig()
    bridge: BridgePriorConfig | None = BridgePriorConfig()
    blob: BlobPriorConfig | None = BlobPriorConfig()

    @model_validator(mode="after")
    def _one(self) -> EdgeRlPriors:
        if not any(getattr(self, k) is not None for k in type(self).model_fields):
            raise ValueError("at least one prior must be enabled")
        return self


class EdgeRlConfig(Section):
    """Stateless actor-critic learning of RAG edge weights (``07_learn_edge_weights.py``).

    Trains on the run's RAG (MongoDB) without ground truth and writes the learned weight of
    every edge as the edge attribute ``weight_attr``: in ``[0, 1]``, LOW = merge, like
    ``merge_score``, so ``segments.edge_score: rl_weight`` thresholds it the same way. Model,
    history and reward curves go to ``run.dir/edge_rl/``."""

    iterations: PosInt = 500
    """Training iterations (one episode, critic and actor updates each)."""
    seed: int = 0
    priors: EdgeRlPriors = EdgeRlPriors()
    partitioner: Literal["mutex", "threshold"] = "mutex"
    """How the environment turns weights into objects: ``mutex`` (graph mutex watershed of
    mwatershed: attractive below 0.5, repulsive above; like the paper's multicut, one wrong
    weight rarely merges two objects) or ``threshold`` (connected components of edges with
    weight <= ``partition_threshold``, what ``04_find_segments.py`` does; one wrong weight
    merges, so the reward of a random policy is flat and learning is much slower)."""
    partition_threshold: Unit = 0.5
    """Threshold of the ``threshold`` partitioner."""
    subgraph_sizes: list[PosInt] = [6, 12, 32, 128]
    """Sizes (in edges) of the sub-graphs the critic scores; one value network per size."""
    node_features: list[Literal["raw", "boundary", "shape", "position"]] = [
        "raw",
        "boundary",
        "shape",
    ]
    """Per-fragment features the networks see, pooled from the volumes: ``raw`` (mean, std of
    ``raw``), ``boundary`` (mean, std of ``fragments.boundary``, else 1 - mean affinity),
    ``shape`` (log volume, log principal axis lengths), ``position`` (centre, nm)."""
    edge_features: list[Literal["merge_score", "contacts"]] = ["merge_score", "contacts"]
    """Per-edge features: ``merge_score`` (from the RAG) and ``contacts`` (log contact area and
    mean boundary along the contact, pooled from the volumes)."""
    weight_attr: str = "rl_weight"
    """Edge attribute the learned weights are written to."""
    init_from: str | None = None
    """Edge attribute the policy starts from: the actor learns a correction to its logit
    (``null``: start from ``init_weight`` everywhere)."""
    init_weight: float = Field(0.65, gt=0, lt=1)
    """Starting weight of every edge when ``init_from`` is ``null``. Above 0.5 starts from an
    over-segmentation: objects are small, so whether an edge is cut is decided by its own
    weight and its reward answers for it; merges are then learned where the priors reward
    them (from 0.5 the partitions of a random policy are one tangle, and the reward of an
    edge hardly depends on its own weight)."""
    init_scale: float = Field(0.7, gt=0.05, lt=2.0)
    """Initial spread (std of the logit) of the sampled weights."""
    hidden: PosInt = 32
    """Width of the GNNs."""
    layers: PosInt = 3
    """Message-passing rounds of the actor and critic GNNs over the features."""
    critic_action_layers: NonNegInt = 1
    """Further rounds of the critic whose messages carry the actions (how far an edge's Q
    sees the actions around it)."""
    lr_actor: float = Field(1e-3, gt=0)
    lr_critic: float = Field(3e-3, gt=0)
    lr_alpha: float = Field(1e-2, gt=0)
    init_temperature: float = Field(0.05, gt=0)
    """Initial SAC temperature per edge: ``alpha_k`` (one learned per sub-graph size ``k``)
    starts at ``init_temperature / k``, since it weighs a sum of ``k`` log-probabilities
    against a mean of ``k`` edge rewards."""
    target_entropy: float = -2.0
    """Entropy per edge (nats, of the weight in [0, 1]; 0 = uniform) the temperature aims at."""
    warmup: NonNegInt = 30
    """Iterations that only train the critic (on samples of the initial policy) before the
    actor learns from it."""
    episodes_per_iteration: PosInt = 4
    """Weights sampled (and partitioned and rewarded) per iteration: each is one episode."""
    replay_size: PosInt = 1024
    """Episodes (action, reward) the critic learns from."""
    batch_size: PosInt = 8
    """Episodes per critic update."""
    critic_updates: PosInt = 4
    """Critic updates per iteration."""
    edge_loss_weight: float = Field(1.0, ge=0)
    """Weight of the critic's auxiliary loss: its per-edge values (whose mean over a sub-graph
    is part of Q) fitted to the edge rewards themselves. Not in the paper; the edge rewards
    are what the sub-graph rewards average, and fitting them directly makes the critic
    useful after tens instead of hundreds of iterations. 0 turns it off."""
    eval_every: PosInt = 10
    """Iterations between evaluations of the deterministic weights; the best is kept."""
    crop_nodes: PosInt | None = None
    """Train on connected crops of this many fragments (``null``: the whole graph)."""
    n_crops: PosInt = 16
    """Crops in the pool when ``crop_nodes`` is set."""
    slab_sections: PosInt = 32
    """z-sections per slab when pooling features from the volumes (memory: one slab)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model: Path | None = None
    """A model trained by 07 on another RAG (its ``edge_rl/model.pt``): apply it to this
    RAG's edges without training (the features, networks and ``init_from`` must match)."""

    @model_validator(mode="after")
    def _evidence_is_not_an_input(self) -> EdgeRlConfig:
        # a prior whose evidence the policy reads rewards copying the input
        m = self.priors.membrane
        if m is None:
            return self
        inputs = set(self.edge_features) | ({self.init_from} if self.init_from else set())
        if m.evidence in inputs:
            raise ValueError(
                f"priors.membrane.evidence {m.evidence!r} is also an input of the policy "
                "(edge_features / init_from): the reward would pay for copying it; drop one"
            )
        return self

    @field_validator("subgraph_sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("at least one sub-graph size is needed")
        if len(set(v)) != len(v):
            raise ValueError(f"sub-graph sizes must be distinct, got {v}")
        return v

    @field_validator("node_features")
    @classmethod
    def _nodes(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one node feature is needed")
        return v


def _check_yx(v: list[int]) -> list[int]:
    if len(v) != 2:
        raise ValueError(f"expected 2 values (y, x), got {len(v)}")
    if any(c <= 0 for c in v):
        raise ValueError(f"expected (y, x) > 0, got {v}")
    return v


class DeriveTagsConfig(Section):
    """Tags derived from a voxel truth of the ROI by a fixed rule (benchmarks, demos): every
    z-section of ``raw`` is cut into ``crop_shape`` crops; a crop is tagged 1 when at least
    ``min_fraction`` of it is ROI (``truth`` non-zero), else 0."""

    truth: DatasetRef
    """ROI truth aligned with ``raw`` (same shape; non-zero = ROI, e.g. a defect)."""
    crop_shape: list[int] = [20, 20]
    """Crop (y, x) in voxels; partial crops at the section edge are left out."""
    min_fraction: Unit = 0.25
    """ROI fraction of a crop from which it is tagged 1."""

    _v_crop = field_validator("crop_shape")(classmethod(lambda cls, v: _check_yx(v)))


class DetectorConfig(Section):
    """The presence detector (``marlseg.networks.weak_labels.PresenceDetector``)."""

    iterations: PosInt = 1500
    """Training steps (Adam, binary cross-entropy on the tags)."""
    batch_size: PosInt = 64
    lr: float = Field(2e-3, gt=0)
    width: PosInt = 16
    """Channels of the first convolutions (twice that after the pooling)."""
    lse_r: float = Field(5.0, gt=0)
    """Sharpness of the log-sum-exp pooling (large: max pooling, small: mean pooling)."""
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Tagged crops held out to report the detector's tag accuracy."""
    checkpoint: Path | None = None
    """Use this trained detector (a ``detector.pt`` of an earlier run) instead of training."""


class SelfPlayConfig(Section):
    """The patch game and its REINFORCE self-play training (``marlseg.weak_labels.training``)."""

    iterations: PosInt = 300
    """Policy-gradient updates; each plays ``games_per_iteration`` games against one opponent."""
    games_per_iteration: PosInt = 32
    lr: float = Field(3e-3, gt=0)
    entropy: float = Field(0.01, ge=0)
    """Entropy bonus weight (patch and termination heads)."""
    gamma: Unit = 0.5
    """Discount per move (either player's). Below 1 it ties a pick's credit to its round
    (+-1) more than to the distant termination outcome; with 1, early termination against weak
    snapshots is learnt first and never unlearnt (seen on toy grids)."""
    warmup_iterations: NonNegInt = 50
    """First iterations played without termination calls: the agents learn to pick high-scoring
    patches from the round rewards before termination can pay off against weak opponents."""
    snapshot_every: PosInt = 10
    """Iterations between snapshots of the learner added to the opponent pool."""
    pool_size: PosInt = 50
    """Snapshots kept (oldest dropped first)."""
    opponent_sampling: Literal["pfsp", "truncnorm", "uniform", "latest"] = "pfsp"
    """How the opponent is drawn from the pool: ``pfsp`` (prioritised fictitious self-play by
    performance: snapshots the learner still loses to are played most), ``truncnorm`` (by age:
    a normal centred on the newest snapshot, truncated to the pool), ``uniform`` (fictitious
    self-play) or ``latest`` (the newest snapshot only)."""
    pfsp_power: float = Field(2.0, ge=0)
    """``pfsp``: a snapshot the learner beats with rate ``w`` is drawn in proportion to
    ``(1 - w) ** pfsp_power + 0.05``."""
    sigma: float = Field(0.3, gt=0)
    """Width of the truncated normal as a fraction of the pool size."""
    termination_reward: float = Field(10.0, ge=0)
    """Reward for a correct termination call (and penalty for a wrong one)."""
    invalid_penalty: float = Field(1.0, ge=0)
    """Penalty for choosing a patch already taken."""
    width: PosInt = 32
    """Channels of the policy network."""
    max_tiles: PosInt = 512
    """Tiles of ``raw`` sampled to play on during training."""


class WeakLabelsConfig(Section):
    """Where to segment, from image-level tags by self-play (``08_weak_labels.py``).

    The tags say which 2D crops contain an imaging defect or empty resin (1) and which are
    clean tissue (0). A detector learns them; two agents then play the patch game on every
    ``tile_shape`` tile of every z-section of ``raw``, and the patches they select (the defects)
    are left out of the mask (uint8, 1 = segment here, same voxel size and offset as ``raw``).
    With ``skip_blocks``, stages 01, 02, 03 and 05 skip the blocks with no voxel to segment."""

    tags: Path | None = None
    """CSV of image-level tags. Header ``path,dataset,z0,y0,x0,z1,y1,x1,tag`` (3D boxes, every
    z-section of a box is one tagged crop) or ``path,dataset,z,y0,x0,y1,x1,tag`` (one section
    per row); boxes in voxels, half-open; tag 0 or 1; ``path`` relative to the CSV's directory;
    ``#`` starts a comment line."""
    derive: DeriveTagsConfig | None = None
    """Derive the tags from labels of ``raw`` instead of reading a CSV (the rule is above)."""
    mask: DatasetRef | None = None
    """Output mask (uint8, 1 = segment here). ``null``: ``run.dir/weak_mask.zarr`` /
    ``volumes/mask``."""
    skip_blocks: bool = False
    """Stages 01 predict, 02 fragments, 03 agglomerate and 05 extract skip every block whose
    write ROI has no non-zero voxel of ``mask`` (run ``08`` first), and report them as
    ``masked`` in their summary. Kept blocks are processed as without the mask."""
    patch_size: list[int] = [10, 10]
    """Game patch (y, x) in voxels: the resolution of the mask."""
    tile_shape: list[int] = [50, 50]
    """Game image (y, x) in voxels, a multiple of ``patch_size``; sections are played tile by
    tile (edge tiles are padded by reflection, their padding cropped off again)."""
    score_context: NonNegInt = 5
    """Voxels of context around a patch that the detector sees when it scores the patch
    (0: the patch alone, as in the paper). Patch + 2 x context = the tagged crop size keeps the
    detector on inputs like those it learnt from; EM objects are told apart by their
    surroundings."""
    chunk_shape: list[int] | None = None
    """Chunk shape of the mask, nm; ``null``: 8 sections by the largest multiple of
    ``tile_shape`` up to 256 voxels in y and x (the regions the mask is written in)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    detector: DetectorConfig = DetectorConfig()
    selfplay: SelfPlayConfig = SelfPlayConfig()
    seed: int = 0

    _v_patch = field_validator("patch_size", "tile_shape")(classmethod(lambda cls, v: _check_yx(v)))
    _v_chunk = field_validator("chunk_shape")(classmethod(lambda cls, v: _check_block(v)))

    @model_validator(mode="after")
    def _tiles(self) -> WeakLabelsConfig:
        if any(t % p for t, p in zip(self.tile_shape, self.patch_size)):
            raise ValueError(
                f"tile_shape {self.tile_shape} is not a multiple of patch_size {self.patch_size}"
            )
        if self.tags is not None and self.derive is not None:
            raise ValueError("give either tags (a CSV) or derive (a rule), not both")
        return self


TUNE_FIXED_KEYS = ("affs", "boundary", "fragments", "mask", "workers")
"""``fragments`` keys that name data or workers, not parameters: ``tune.fragments`` cannot
vary them."""


class TuneConfig(Section):
    """Parameter sweep on an annotated crop (``workflows/tune.py``): every combination of the
    ``fragments`` grid, each ``merge_functions`` entry and every threshold is scored against
    ``gt`` inside the crop, emulating the blockwise chain (fragments cut at the block faces of
    each setting's ``block_shape``). The input config's own setting is always scored too. The
    best setting is written as a config (``output``), all rows to ``run.dir/tune.json``."""

    offset: list[int] | None = None
    """Crop begin, nm (z, y, x); ``null``: the begin of ``gt``."""
    shape: list[int] | None = None
    """Crop shape, nm; ``null``: up to the end of ``gt``."""
    fragments: dict[str, list[Any]] = {
        "block_shape": [[400, 400, 400], [800, 800, 800], [1200, 1200, 1200]],
        "min_seed_distance": [5, 10, 15],
    }
    """Values to try per ``fragments`` key (any parameter of that section); the grid is their
    product, the config's values fill the other keys."""
    merge_functions: list[str] = ["hist_quant_50", "hist_quant_75", "mean"]
    """``agglomerate.merge_function`` values to try."""
    thresholds: Thresholds = TUNE_THRESHOLDS
    """Thresholds scored for every setting; the tuned config gets them as
    ``segments.thresholds`` and the best as ``extract.threshold``."""
    output: Path | None = None
    """The tuned config; ``null``: ``run.dir/tuned.json``."""

    _v_shape = field_validator("shape")(classmethod(lambda cls, v: _check_block(v)))
    _v_offset = field_validator("offset")(classmethod(lambda cls, v: _check_shape(v)))

    @field_validator("fragments")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if key in TUNE_FIXED_KEYS or key not in FragmentsConfig.model_fields:
                raise ValueError(f"{key}: not a parameter of the fragments section")
            if not values:
                raise ValueError(f"{key}: no values to try")
            for value in values:
                try:
                    FragmentsConfig.model_validate({key: value})
                except ValidationError as e:
                    raise ValueError(f"{key}: {e.errors()[0]['msg']} (got {value!r})") from None
        return v

    @field_validator("merge_functions", "thresholds")
    @classmethod
    def _nonempty(cls, v: list) -> list:
        if not v:
            raise ValueError("at least one value is needed")
        return v


STAGE_SECTIONS = ("predict", "fragments", "agglomerate", "extract", "evaluate")


class Config(Section):
    """A whole run."""

    run: RunConfig = RunConfig()
    db: DbConfig = DbConfig()
    workers: WorkersConfig = WorkersConfig()
    raw: DatasetRef | None = None
    """Raw EM (uint8)."""
    gt: DatasetRef | None = None
    """Ground-truth neuron ids, for ``06_evaluate.py``."""
    network: NetworkConfig = NetworkConfig()
    predict: PredictConfig = PredictConfig()
    fragments: FragmentsConfig = FragmentsConfig()
    agglomerate: AgglomerateConfig = AgglomerateConfig()
    segments: SegmentsConfig = SegmentsConfig()
    extract: ExtractConfig = ExtractConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    train: TrainConfig = TrainConfig()
    pretrain: PretrainConfig = PretrainConfig()
    edge_rl: EdgeRlConfig = EdgeRlConfig()
    weak_labels: WeakLabelsConfig = WeakLabelsConfig()
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="after")
    def _db_name(self) -> Config:
        if self.db.name is None:
            from marlseg.ownership import default_db_name

            self.db.name = default_db_name(self.run.dir)
        return self

    @model_validator(mode="after")
    def _stage_workers(self) -> Config:
        for name in STAGE_SECTIONS:
            self.workers_for(name)  # validates the override now, not when the stage runs
        return self

    def workers_for(self, stage: str) -> WorkersConfig:
        """The global ``workers`` section with ``<stage>.workers`` overrides applied."""
        section = getattr(self, stage, None)
        override = getattr(section, "workers", None) or {}
        merged = {**self.workers.model_dump(), **override}
        try:
            return WorkersConfig.model_validate(merged)
        except ValidationError as e:
            raise _as_config_error(e, prefix=f"{stage}.workers") from None

    # --- derived places: defaults under run.dir, never stored twice ---
    def under_run(self, name: str) -> Path:
        return self.run.dir / name

    @property
    def affs(self) -> DatasetRef:
        return self.predict.affs or DatasetRef(
            path=self.under_run("affs.zarr"), dataset="volumes/affs"
        )

    @property
    def fragment_affs(self) -> DatasetRef:
        return self.fragments.affs or self.affs

    @property
    def fragments_ds(self) -> DatasetRef:
        return self.fragments.fragments or DatasetRef(
            path=self.under_run("fragments.zarr"), dataset="volumes/fragments"
        )

    def segmentation_ds(self, threshold: float | None = None) -> DatasetRef:
        if self.extract.segmentation is not None:
            return self.extract.segmentation
        t = self.extract.threshold if threshold is None else threshold
        return DatasetRef(
            path=self.under_run("segmentation.zarr"), dataset=f"volumes/segmentation_{t:.3f}"
        )

    @property
    def eval_thresholds(self) -> list[float]:
        return list(self.evaluate.thresholds or self.segments.thresholds)

    def resolved(self) -> Config:
        """A copy whose relative paths (every path field, :mod:`marlseg.paths`) are made
        absolute against the working directory (workers may run elsewhere)."""
        from marlseg.paths import rebase

        return Config.model_validate(rebase(self.model_dump(mode="json"), Config, Path.cwd()))


def _loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif p in ("function-after", "function-before") or str(p).startswith("function-"):
            continue
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts)


def _as_config_error(e: ValidationError, prefix: str | None = None) -> ConfigError:
    err = e.errors()[0]
    where = _loc(tuple(err["loc"]))
    if prefix:
        where = f"{prefix}.{where}" if where else prefix
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif "input" in err and err["type"] not in ("value_error",):
        msg = f"{msg} (got {json.dumps(err['input'], default=str)[:60]})"
    msg = msg.removeprefix("Value error, ")
    more = len(e.errors()) - 1
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ConfigError(where or "config", msg)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``section.key=value`` with a JSON value (bare words are taken as strings)."""
    if "=" not in item:
        raise ConfigError("--set", f"expected section.key=value, got {item!r}")
    key, raw = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError("--set", f"empty key in {item!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(".".join(keys), f"{k!r} is not a section")
            node = nxt
        node[keys[-1]] = value
    return data


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a config. Raises ConfigError; writes nothing."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(str(p), "config file not found")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(
                str(p), f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(str(p), f"cannot read: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(str(p), "the config must be a JSON object")
        from marlseg.paths import rebase

        data = rebase(data, Config, p.parent)  # relative to the config file (marlseg.paths)
    data = apply_overrides(data, overrides or [])
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise _as_config_error(e) from None


def dump_config(config: Config) -> str:
    """The config as JSON, ``db.uri``'s password masked: no printed or written config holds
    it (workers get a password URI through their environment, :mod:`marlseg.rag`)."""
    from marlseg.db import mask_uri

    data = config.model_dump(mode="json")
    if data["db"].get("uri"):
        data["db"]["uri"] = mask_uri(data["db"]["uri"])
    return json.dumps(data, indent=2)


def reference(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(key, default, description)`` for every field, nested sections flattened: the
    README's config reference is generated from this, so code and docs are the same text."""
    import typing

    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        sub = next(
            (
                a
                for a in (ann, *typing.get_args(ann))
                if isinstance(a, type) and issubclass(a, Section)
            ),
            None,
        )
        if sub is not None and sub is not DatasetRef:
            if field.description:
                rows.append((key, "", field.description))
            rows.extend(reference(sub, key + "."))
            continue
        default = "required" if field.is_required() else json.dumps(field.default, default=str)
        rows.append((key, default, " ".join((field.description or "").split())))
    return rows


def reference_markdown() -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, text in reference():
        lines.append(
            f"| `{key}` | {f'`{default}`' if default else ''} | {text.replace('|', '/')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # python -m marlseg.config: print the reference table
    print(reference_markdown())
