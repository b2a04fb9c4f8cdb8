"""The ``weak_labels`` section (``08_weak_labels.py``) with its tag rule, detector and self-play
configs. Imports only :mod:`marlseg.config.base`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from marlseg.config.base import DatasetRef, NonNegInt, PosInt, Section, Unit, check_block, check_yx


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

    _v_crop = field_validator("crop_shape")(classmethod(lambda cls, v: check_yx(v)))


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

    _v_patch = field_validator("patch_size", "tile_shape")(classmethod(lambda cls, v: check_yx(v)))
    _v_chunk = field_validator("chunk_shape")(classmethod(lambda cls, v: check_block(v)))

    @model_validator(mode="after")
    def _tiles(self) -> WeakLabelsConfig:
        if any(t % p for t, p in zip(self.tile_shape, self.patch_size)):
            raise ValueError(
                f"tile_shape {self.tile_shape} is not a multiple of patch_size {self.patch_size}"
            )
        if self.tags is not None and self.derive is not None:
            raise ValueError("give either tags (a CSV) or derive (a rule), not both")
        return self
