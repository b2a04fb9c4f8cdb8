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
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from marlseg.errors import ConfigError

NonNegInt = Annotated[int, Field(ge=0)]
PosInt = Annotated[int, Field(gt=0)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetRef(Section):
    """A dataset inside a container: ``{"path": "x.zarr" | "x.h5", "dataset": "volumes/raw"}``."""

    path: Path
    """Container path: a zarr directory (``.zarr``/``.n5``) or an HDF5 file (``.h5``/``.hdf``).
    Relative paths are taken from the directory the command runs in."""
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
    name: str = "marlseg"
    """Database name; one RAG per database."""
    bind: str = "127.0.0.1"
    """Address the embedded server listens on. Use ``0.0.0.0`` when cluster workers on other
    nodes must reach it."""


class WorkersConfig(Section):
    """How a stage's workers run. The global ``workers`` section is the default; a stage's own
    ``workers`` object overrides any of these keys for that stage alone."""

    type: Literal["local", "slurm", "lsf"] = "local"
    """``local``: worker processes on this machine; ``slurm``/``lsf``: one batch job each."""
    num_workers: PosInt = 2
    """Workers running at once."""
    partition: str | None = None
    """Slurm partition (``--partition``)."""
    queue: str | None = None
    """LSF queue (``bsub -q``)."""
    time_limit: str | None = None
    """Wall-time limit per worker job, ``HH:MM:SS`` (Slurm ``--time``; LSF ``-W`` in minutes)."""
    cpus: PosInt = 1
    """CPUs per worker."""
    mem_mb: PosInt | None = None
    """Memory per worker in MB (Slurm ``--mem``; LSF ``-M`` and ``rusage[mem=]``)."""
    gpus: NonNegInt = 0
    """GPUs per worker (Slurm ``--gpus``; LSF ``-gpu num=N``)."""
    account: str | None = None
    """Account/project to charge (Slurm ``--account``; LSF ``-P``)."""
    extra_flags: list[str] = []
    """Extra scheduler flags, passed verbatim."""
    host: str | None = None
    """Address workers use to reach the scheduler; ``null`` detects one (``127.0.0.1`` for local
    workers)."""
    max_retries: NonNegInt = 2
    """Retries of a failed block before the stage reports it failed."""
    max_worker_restarts: NonNegInt = 4
    """Worker deaths tolerated before the stage gives up (no endless respawning)."""
    block_timeout: float | None = None
    """Seconds after which a stuck block's worker is killed and the block retried elsewhere."""


class _StageSection(Section):
    workers: dict[str, Any] | None = None
    """Overrides of the global ``workers`` keys for this stage."""


class PredictConfig(_StageSection):
    checkpoint: Path | None = None
    """Trained network (``00_train.py`` output). ``null``: the checkpoint shipped with marlseg."""
    affs: DatasetRef | None = None
    """Output affinities (uint8). ``null``: ``run.dir/affs.zarr`` / ``volumes/affs``."""
    block_shape: list[int] | None = None
    """Write block shape in nm; ``null``: the network's output shape times a whole number."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where workers run the network: the worker's GPU if it has one (``auto``), else the CPU."""

    _v_block = field_validator("block_shape")(classmethod(lambda cls, v: _check_block(v)))


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
    block_shape: list[int] = [400, 400, 400]
    """Write block shape in nm."""
    context: list[int] = [80, 80, 80]
    """Context read around each block, nm."""
    method: Literal["watershed", "mutex"] = "watershed"
    """``watershed``: seeded by maxima of the distance transform of the boundary-free mask (as
    lsd); ``mutex``: mutex watershed (mwatershed) with attractive/repulsive long-range offsets."""
    fragments_in_xy: bool = False
    """Extract fragments per z-section (anisotropic ssTEM data)."""
    boundary_threshold: Unit = 0.5
    """Mean affinity below which a voxel counts as boundary for the distance transform."""
    min_seed_distance: PosInt = 10
    """Minimum distance between watershed seeds, voxels."""
    epsilon_agglomerate: Unit = 0.0
    """If > 0, merge fragments within a block up to this waterz threshold before storing."""
    filter_fragments: Unit = 0.0
    """Drop fragments whose mean affinity is below this value (set to 0)."""
    min_size: NonNegInt = 0
    """Drop fragments with fewer voxels than this (set to 0)."""

    _v_block = field_validator("block_shape")(classmethod(lambda cls, v: _check_block(v)))
    _v_context = field_validator("context")(classmethod(lambda cls, v: _check_context(v)))


class AgglomerateConfig(_StageSection):
    merge_function: str = "hist_quant_75"
    """waterz merge function: ``hist_quant_N``, ``mean``, ``max``, ``min``, ... (see README)."""
    block_shape: list[int] | None = None
    """Write block shape, nm; ``null``: ``fragments.block_shape``."""
    context: list[int] = [80, 80, 80]
    """Context read around each block, nm."""

    _v_block = field_validator("block_shape")(classmethod(lambda cls, v: _check_block(v)))
    _v_context = field_validator("context")(classmethod(lambda cls, v: _check_context(v)))


Thresholds = list[Unit]


class SegmentsConfig(Section):
    thresholds: Thresholds = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    """Merge thresholds: fragments joined by edges with score <= threshold form one segment."""
    edge_score: str = "merge_score"
    """Edge attribute to threshold: ``merge_score`` (waterz) or ``rl_weight`` (07)."""


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
    num_layers: PosInt = 4
    num_heads: PosInt = 4
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
        return self


class TrainConfig(Section):
    """Affinity training of the UNETR (``00_train.py``)."""

    raw: list[DatasetRef] = []
    """Raw volumes to train on."""
    labels: list[DatasetRef] = []
    """Neuron-id volumes, one per ``raw``."""
    neighborhood: list[list[int]] = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    """Affinity offsets, voxels (z, y, x)."""
    init_encoder: Path | None = None
    """Pretraining checkpoint whose encoder initialises the UNETR (key for key)."""
    iterations: PosInt = 1000
    batch_size: PosInt = 1
    lr: float = 1e-4
    checkpoint_every: PosInt = 250
    snapshot_every: PosInt = 250
    validate_every: PosInt = 500
    """Run prediction + post-processing on ``validation`` and keep the best checkpoint by VOI."""
    validation: dict[str, Any] | None = None
    """``{"raw": ref, "labels": ref}`` of a crop not used for training."""
    precache_workers: NonNegInt = 2
    seed: int = 0


class PretrainConfig(Section):
    """MAE pretraining with RL-chosen masks (``00_pretrain.py``)."""

    raw: list[DatasetRef] = []
    """Raw volumes to pretrain on (HDF5 or zarr)."""
    masking: Literal["marl", "random"] = "marl"
    """``marl``: masks chosen by the shared multi-agent policy; ``random``: fixed ratio."""
    mask_ratio: Unit = 0.75
    """Ratio for ``random`` masking; the starting ratio for ``marl``."""
    iterations: PosInt = 1000
    batch_size: PosInt = 2
    lr: float = 1.5e-4
    checkpoint_every: PosInt = 250
    log_every: PosInt = 25
    seed: int = 0


class EdgeRlConfig(Section):
    """Stateless actor-critic learning of RAG edge weights (``07_learn_edge_weights.py``)."""

    iterations: PosInt = 500
    seed: int = 0


class WeakLabelsConfig(Section):
    """Self-play weak labels from image-level tags (``08_weak_labels.py``)."""

    seed: int = 0


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
        """A copy whose relative paths are made absolute (workers may run elsewhere)."""
        data = self.model_dump(mode="json")

        def walk(node: Any, key: str | None = None) -> Any:
            if isinstance(node, dict):
                return {k: walk(v, k) for k, v in node.items()}
            if isinstance(node, list):
                return [walk(v, key) for v in node]
            if isinstance(node, str) and key in _PATH_KEYS:
                return str(Path(node).expanduser().absolute())
            return node

        return Config.model_validate(walk(data))


_PATH_KEYS = {"path", "dir", "checkpoint", "init_encoder"}


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
    data = apply_overrides(data, overrides or [])
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise _as_config_error(e) from None


def dump_config(config: Config) -> str:
    return json.dumps(config.model_dump(mode="json"), indent=2)
