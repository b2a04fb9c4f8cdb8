"""The ``edge_rl`` section (``07_learn_edge_weights.py``) and the configs of the priors that
make its reward. Imports only :mod:`marlseg.config.base`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from marlseg.config.base import NonNegInt, PosInt, Section, Unit


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
