"""The ``pretrain`` section (``00_pretrain.py``). Imports only :mod:`marlseg.config.base`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from marlseg.config.base import DatasetRef, NonNegInt, PosInt, Section, Unit


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
