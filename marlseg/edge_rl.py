"""Stateless actor-critic: learn RAG edge weights from high-level priors (no ground truth).

After Hilt et al., "Stateless actor-critic for instance segmentation with high-level priors"
(and "Reinforcement Learning for Instance Segmentation with High-Level Priors"). Instance
segmentation is a partition of the fragment RAG:

- the **actor** (:class:`~marlseg.networks.gnn.GnnActor`) reads node and edge features and
  predicts a distribution per edge; a sample squashed by a sigmoid is the edge's weight in
  ``[0, 1]`` (low = merge, the convention of ``merge_score``);
- the **environment** (:class:`EdgeRlEnv`) partitions the graph with those weights
  (:mod:`marlseg.partition`) and scores each object with priors (:mod:`marlseg.priors`); an
  edge's reward is the larger reward of its two objects (edge-level priors such as the
  membrane prior reward edges directly), a sub-graph's reward the mean of its edges' rewards
  (:mod:`marlseg.subgraphs`);
- the **critic** (:class:`~marlseg.networks.gnn.GnnCritic`) predicts Q per sub-graph from the
  features and the actions. Episodes have length one (the state never changes: "stateless"),
  so the critic's target is the reward itself, learned by regression on a replay buffer of
  past (action, reward) pairs;
- the **actor loss** is SAC's: ``alpha_k * sum_{e in s} log pi(a_e) - Q_k(s)`` averaged over
  the sub-graphs ``s`` of each size ``k``, with one learned temperature ``alpha_k`` per size
  that holds the policy's entropy near ``target_entropy`` per edge.

The model kept is the one whose *deterministic* weights (``sigmoid(mean)``) earned the highest
reward on the whole graph (checked every ``eval_every`` iterations); nothing else needs labels.

Large graphs: with ``crop_nodes`` set, each episode runs on one of ``n_crops`` connected crops
(breadth-first balls of that many fragments) and the learned weights are predicted on the whole
graph at the end (the GNN is local). Objects cut by a crop count as touching the border, so
the size prior does not punish them for being small.

Node features are pooled per fragment by :mod:`marlseg.fragment_features`, streaming z-slabs
of the fragments (and raw / boundary) volumes, so memory holds one slab at a time.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from marlseg.networks.gnn import GnnActor, GnnCritic
from marlseg.partition import partition
from marlseg.priors import CompositePrior, Objects, RagGraph, build_priors
from marlseg.subgraphs import subgraph_sets

if TYPE_CHECKING:
    from marlseg.config import EdgeRlConfig, EdgeRlPriors

logger = logging.getLogger(__name__)

__all__ = [
    "StepResult",
    "EdgeRlEnv",
    "EdgeRlTrainer",
    "bfs_crops",
    "priors_from_config",
    "plot_history",
]


# --------------------------------------------------------------------------- environment


@dataclass
class StepResult:
    """What one action earned."""

    labels: np.ndarray
    """(N,) object per node."""
    object_rewards: np.ndarray
    """(K,) mean reward of the object-level priors per object."""
    edge_rewards: np.ndarray
    """(E,) reward per edge."""
    subgraph_rewards: dict[int, np.ndarray]
    """``{k: (S_k,)}`` mean edge reward per sub-graph (empty when the env has none)."""
    prior_means: dict[str, float]
    """Mean edge reward each prior alone would give (diagnostics)."""

    @property
    def reward(self) -> float:
        """The scalar tracked and maximised: the mean edge reward."""
        return float(self.edge_rewards.mean()) if len(self.edge_rewards) else 0.0


class EdgeRlEnv:
    """RAG + priors + partitioner: edge weights in, rewards per edge and sub-graph out."""

    def __init__(
        self,
        graph: RagGraph,
        priors: CompositePrior,
        subgraph_sizes: list[int] | None = None,
        partitioner: str = "mutex",
        threshold: float = 0.5,
        rng: np.random.Generator | int | None = None,
    ):
        self.graph = graph
        self.priors = priors
        self.partitioner = partitioner
        self.threshold = threshold
        self.subgraphs: dict[int, np.ndarray] = (
            subgraph_sets(graph.n_nodes, graph.edges, subgraph_sizes, rng) if subgraph_sizes else {}
        )

    def partition(self, weights: np.ndarray) -> np.ndarray:
        return partition(
            self.graph.n_nodes, self.graph.edges, weights, self.partitioner, self.threshold
        )

    def step(self, weights: np.ndarray, diagnostics: bool = False) -> StepResult:
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        if len(weights) != self.graph.n_edges:
            raise ValueError(f"{len(weights)} weights for {self.graph.n_edges} edges")
        labels = self.partition(weights)
        objects = Objects(self.graph, labels)
        prior_means: dict[str, float] = {}
        if diagnostics and self.graph.n_edges:
            prior_means = {k: float(v.mean()) for k, v in self.priors.per_prior(objects).items()}
        obj_r = self.priors.object_rewards(objects)
        edge_r = self.priors.edge_rewards(objects)
        sg_r = {k: edge_r[sg].mean(axis=1) for k, sg in self.subgraphs.items()}
        return StepResult(labels, obj_r, edge_r, sg_r, prior_means)


def bfs_crops(
    graph: RagGraph, n_nodes: int, count: int, rng: np.random.Generator | int | None = None
) -> list[np.ndarray]:
    """``count`` connected crops of up to ``n_nodes`` nodes each: breadth-first balls around
    random seeds (node indices, sorted)."""
    rng = np.random.default_rng(rng)
    nbrs: list[list[int]] = [[] for _ in range(graph.n_nodes)]
    for u, v in graph.edges.tolist():
        nbrs[u].append(v)
        nbrs[v].append(u)
    crops = []
    for _ in range(count):
        seed = int(rng.integers(graph.n_nodes))
        seen = {seed}
        queue = deque([seed])
        while queue and len(seen) < n_nodes:
            w = queue.popleft()
            for x in nbrs[w]:
                if x not in seen:
                    seen.add(x)
                    queue.append(x)
                    if len(seen) >= n_nodes:
                        break
        crops.append(np.sort(np.fromiter(seen, dtype=np.int64)))
    return crops


def priors_from_config(spec: EdgeRlPriors) -> CompositePrior:
    """The ``edge_rl.priors`` config section as a :class:`CompositePrior` (each section's
    fields are its prior's arguments; ``membrane.evidence`` is read by the stage)."""
    return build_priors(
        {
            name: None if c is None else c.model_dump(exclude={"evidence"})
            for name, c in ((k, getattr(spec, k)) for k in type(spec).model_fields)
        }
    )


# --------------------------------------------------------------------------- trainer


@dataclass
class _Tensors:
    x: torch.Tensor
    edges: torch.Tensor
    edge_features: torch.Tensor | None
    base: torch.Tensor | None
    subgraphs: dict[int, torch.Tensor]


@dataclass
class History:
    """Per-iteration training log (lists of equal length) and the evaluations."""

    train: dict[str, list[float]] = field(default_factory=dict)
    evals: dict[str, list[float]] = field(default_factory=dict)

    def log(self, table: dict[str, list[float]], **values: float) -> None:
        for k, v in values.items():
            table.setdefault(k, []).append(float(v))


class Standardizer:
    """Column-wise z-scores fitted on the whole graph, applied to every crop alike."""

    def __init__(self, a: np.ndarray | None):
        if a is None or a.size == 0:
            self.mean = self.std = None
            return
        a = np.asarray(a, dtype=np.float64)
        self.mean = a.mean(axis=0)
        std = a.std(axis=0)
        self.std = np.where(std > 1e-9, std, 1.0)

    def __call__(self, a: np.ndarray | None) -> np.ndarray | None:
        if a is None or self.mean is None:
            return a
        return ((np.asarray(a, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def state(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std}


class EdgeRlTrainer:
    """SAC-style training of the edge weight actor on one RAG (or crops of it).

    ``settings`` is the ``edge_rl`` config section (:class:`marlseg.config.EdgeRlConfig`).
    """

    def __init__(
        self,
        graph: RagGraph,
        priors: CompositePrior,
        settings: EdgeRlConfig,
        device: str | torch.device = "cpu",
    ):
        self.graph = graph
        self.priors = priors
        self.s = settings
        self.device = torch.device(device)
        self.rng = np.random.default_rng(settings.seed)
        torch.manual_seed(settings.seed)
        if graph.node_features is None:
            raise ValueError("the graph needs node features")
        self.node_scaler = Standardizer(graph.node_features)
        self.edge_scaler = Standardizer(graph.edge_features)
        n_nf = graph.node_features.shape[1]
        n_ef = 0 if graph.edge_features is None else graph.edge_features.shape[1]
        sizes = list(settings.subgraph_sizes)

        # episodes: the whole graph, or a pool of crops
        if settings.crop_nodes and settings.crop_nodes < graph.n_nodes:
            crops = bfs_crops(graph, settings.crop_nodes, settings.n_crops, self.rng)
            graphs = [graph.subgraph(c) for c in crops]
        else:
            graphs = [graph]
        graphs = [g for g in graphs if g.n_edges > 0]
        if not graphs:
            raise ValueError("the graph has no edges: nothing to learn")
        kw = dict(partitioner=settings.partitioner, threshold=settings.partition_threshold)
        self.envs = [EdgeRlEnv(g, priors, sizes, rng=self.rng, **kw) for g in graphs]
        self.eval_env = EdgeRlEnv(graph, priors, None, **kw)
        self.tensors = [self._tensors(env) for env in self.envs]
        self.full = self._tensors(self.eval_env)

        hid, lay = settings.hidden, settings.layers
        self.actor = GnnActor(n_nf, n_ef, hid, lay, init_scale=settings.init_scale).to(self.device)
        self.critic = GnnCritic(
            n_nf, n_ef, sizes, hid, lay, action_layers=settings.critic_action_layers
        ).to(self.device)
        # alpha_k multiplies a sum of k log-probabilities against Q_k, a *mean* of k edge
        # rewards: starting at init_temperature / k weighs entropy per edge alike for every k
        self.log_alpha = torch.tensor(
            [math.log(settings.init_temperature / k) for k in sizes], device=self.device
        ).requires_grad_(True)
        self.sizes = sizes
        self.opt_actor = torch.optim.Adam(
            self.actor.parameters(), lr=settings.lr_actor, foreach=True
        )
        self.opt_critic = torch.optim.Adam(
            self.critic.parameters(), lr=settings.lr_critic, foreach=True
        )
        self.opt_alpha = torch.optim.Adam([self.log_alpha], lr=settings.lr_alpha)
        # (env index, actions (E,), {k: sub-graph rewards}, edge rewards (E,))
        self.replay: deque[tuple[int, torch.Tensor, dict[int, torch.Tensor], torch.Tensor]] = deque(
            maxlen=settings.replay_size
        )
        self.history = History()
        self.best_reward = -math.inf
        self.best_iteration = -1
        self.best_state: dict[str, Any] | None = None
        self.iteration = 0

    def _tensors(self, env: EdgeRlEnv) -> _Tensors:
        g = env.graph
        dev = self.device
        ef = self.edge_scaler(g.edge_features)
        if g.base_weights is not None:
            p = np.clip(np.asarray(g.base_weights, dtype=np.float64), 0.02, 0.98)
        else:
            p = np.full(g.n_edges, self.s.init_weight)
        base = torch.as_tensor(np.log(p / (1 - p)), dtype=torch.float32, device=dev)
        return _Tensors(
            x=torch.as_tensor(self.node_scaler(g.node_features), device=dev),
            edges=torch.as_tensor(g.edges, device=dev),
            edge_features=None if ef is None else torch.as_tensor(ef, device=dev),
            base=base,
            subgraphs={k: torch.as_tensor(sg, device=dev) for k, sg in env.subgraphs.items()},
        )

    # --- the parts of one iteration
    def act(self, t: _Tensors, deterministic: bool = False, samples: int = 1) -> torch.Tensor:
        """(E,) deterministic weights, or (samples, E) sampled ones."""
        with torch.no_grad():
            dist = self.actor(t.x, t.edges, t.edge_features, t.base)
            if deterministic:
                return torch.sigmoid(dist.loc)
            noise = torch.randn((samples, *dist.loc.shape), device=dist.loc.device)
            return torch.sigmoid(dist.loc + dist.scale * noise)

    def update_critic(self) -> float:
        """One regression step of Q_k on the sub-graph rewards of replayed episodes (the
        state never changes, so every stored (action, reward) pair stays a valid target),
        plus ``edge_loss_weight`` times the per-edge values' error on the edge rewards."""
        n = min(self.s.batch_size, len(self.replay))
        picks = [self.replay[int(i)] for i in self.rng.choice(len(self.replay), n, replace=False)]
        by_env: dict[int, list[tuple[torch.Tensor, dict[int, torch.Tensor], torch.Tensor]]] = {}
        for env_i, a, r, re in picks:
            by_env.setdefault(env_i, []).append((a, r, re))
        loss = torch.zeros((), device=self.device)
        mse = torch.nn.functional.mse_loss
        for env_i, items in by_env.items():
            t = self.tensors[env_i]
            actions = torch.stack([a for a, _, _ in items])
            q, v = self.critic(
                t.x, t.edges, t.edge_features, actions, t.subgraphs, return_edge_values=True
            )
            part = sum(mse(q[k], torch.stack([r[k] for _, r, _ in items])) for k in self.sizes)
            part = part / len(self.sizes)
            if self.s.edge_loss_weight > 0:
                part = part + self.s.edge_loss_weight * mse(v, torch.stack([e for *_, e in items]))
            loss = loss + part * len(items)
        loss = loss / n
        self.opt_critic.zero_grad()
        loss.backward()
        self.opt_critic.step()
        return float(loss.detach())

    def update_actor(self, env_i: int) -> tuple[float, float, float]:
        t = self.tensors[env_i]
        dist = self.actor(t.x, t.edges, t.edge_features, t.base)
        logit = dist.rsample_logit()
        logp = dist.log_prob_logit(logit)
        actions = torch.sigmoid(logit)
        for p in self.critic.parameters():
            p.requires_grad_(False)
        q = self.critic(t.x, t.edges, t.edge_features, actions, t.subgraphs)
        for p in self.critic.parameters():
            p.requires_grad_(True)
        alpha = self.log_alpha.exp()
        actor_loss = torch.zeros((), device=self.device)
        alpha_loss = torch.zeros((), device=self.device)
        for i, k in enumerate(self.sizes):
            sg_logp = logp[t.subgraphs[k]].sum(dim=1)
            actor_loss = actor_loss + (alpha[i].detach() * sg_logp - q[k]).mean()
            target = k * self.s.target_entropy
            alpha_loss = alpha_loss - (self.log_alpha[i] * (sg_logp.detach() + target)).mean()
        actor_loss = actor_loss / len(self.sizes)
        alpha_loss = alpha_loss / len(self.sizes)
        self.opt_actor.zero_grad()
        actor_loss.backward()
        self.opt_actor.step()
        self.opt_alpha.zero_grad()
        alpha_loss.backward()
        self.opt_alpha.step()
        return float(actor_loss.detach()), float(alpha_loss.detach()), float(-logp.detach().mean())

    def evaluate(self) -> StepResult:
        """Reward of the deterministic weights on the whole graph."""
        return self.eval_env.step(self.predict(), diagnostics=True)

    def predict(self) -> np.ndarray:
        """(E,) learned weights ``sigmoid(mean)`` for every edge of the whole graph."""
        self.actor.eval()
        w = self.act(self.full, deterministic=True).cpu().numpy().astype(np.float64)
        self.actor.train()
        return w

    def train(
        self, iterations: int | None = None, callback: Callable[[EdgeRlTrainer], None] | None = None
    ) -> History:
        """Run ``iterations`` (default ``settings.iterations``) and load the best actor."""
        s = self.s
        total = s.iterations if iterations is None else iterations
        h = self.history
        t0 = time.monotonic()
        for _ in range(total):
            it = self.iteration
            env_i = int(self.rng.integers(len(self.envs)))
            env, t = self.envs[env_i], self.tensors[env_i]
            # the first `warmup` iterations sample the initial policy and train only the
            # critic, so the actor's first steps follow a critic that has seen data there
            actions = self.act(t, samples=s.episodes_per_iteration)
            episode_rewards = []
            for a in actions:
                result = env.step(a.cpu().numpy())
                rewards = {
                    k: torch.as_tensor(r, dtype=torch.float32, device=self.device)
                    for k, r in result.subgraph_rewards.items()
                }
                edge_r = torch.as_tensor(result.edge_rewards, dtype=torch.float32)
                self.replay.append((env_i, a, rewards, edge_r.to(self.device)))
                episode_rewards.append(result.reward)
            critic_loss = float("nan")
            for _ in range(s.critic_updates):
                critic_loss = self.update_critic()
            actor_loss = alpha_loss = entropy = float("nan")
            if it >= s.warmup:
                actor_loss, alpha_loss, entropy = self.update_actor(env_i)
            h.log(
                h.train,
                iteration=it,
                reward=float(np.mean(episode_rewards)),
                critic_loss=critic_loss,
                actor_loss=actor_loss,
                alpha_loss=alpha_loss,
                alpha=float((self.log_alpha.detach().exp() * torch.tensor(self.sizes)).mean()),
                entropy=entropy,
            )
            self.iteration += 1
            if self.iteration % s.eval_every == 0 or self.iteration == total:
                self._eval_and_keep(it)
            if callback is not None:
                callback(self)
        logger.info(
            "edge_rl: %d iterations in %.1fs, best reward %.4f at iteration %d",
            total,
            time.monotonic() - t0,
            self.best_reward,
            self.best_iteration,
        )
        if self.best_state is not None:
            self.actor.load_state_dict(self.best_state["actor"])
            self.critic.load_state_dict(self.best_state["critic"])
        return h

    def _eval_and_keep(self, it: int) -> None:
        ev = self.evaluate()
        self.history.log(
            self.history.evals,
            iteration=it,
            reward=ev.reward,
            objects=len(ev.object_rewards),
            **{f"prior_{k}": v for k, v in ev.prior_means.items()},
        )
        if ev.reward > self.best_reward:
            self.best_reward = ev.reward
            self.best_iteration = it
            self.best_state = {
                "actor": copy.deepcopy(self.actor.state_dict()),
                "critic": copy.deepcopy(self.critic.state_dict()),
            }

    # --- persistence
    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "log_alpha": self.log_alpha.detach().cpu(),
            "node_scaler": self.node_scaler.state(),
            "edge_scaler": self.edge_scaler.state(),
            "best_reward": self.best_reward,
            "best_iteration": self.best_iteration,
            "iteration": self.iteration,
            "settings": self.s.model_dump(mode="json"),
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.best_reward = state["best_reward"]
        self.best_iteration = state["best_iteration"]
        self.iteration = state["iteration"]


def plot_history(history: History, path: Path, title: str = "edge_rl") -> None:
    """Reward curves (sampled and deterministic policy, per prior), losses and temperature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr, ev = history.train, history.evals
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    if tr.get("reward"):
        r = np.asarray(tr["reward"])
        w = max(1, len(r) // 50)
        smooth = np.convolve(r, np.ones(w) / w, mode="valid")
        ax.plot(tr["iteration"], r, color="0.8", lw=0.6, label="sampled policy")
        ax.plot(tr["iteration"][w - 1 :], smooth, color="C0", label=f"sampled (mean of {w})")
    if ev.get("reward"):
        ax.plot(ev["iteration"], ev["reward"], "o-", color="C3", ms=3, label="mean policy")
        for k in ev:
            if k.startswith("prior_"):
                ax.plot(ev["iteration"], ev[k], "--", lw=1, label=k)
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean edge reward")
    ax.set_title(f"{title}: reward")
    ax.legend(fontsize=7)
    ax = axes[1]
    for k in ("critic_loss", "actor_loss"):
        if tr.get(k):
            ax.plot(tr["iteration"], tr[k], lw=0.8, label=k)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("iteration")
    ax.set_title("losses")
    ax.legend(fontsize=7)
    ax = axes[2]
    if tr.get("alpha"):
        ax.plot(tr["iteration"], tr["alpha"], label="alpha_k * k (mean over sizes)")
        ax.set_yscale("log")
    ax2 = ax.twinx()
    if tr.get("entropy"):
        ax2.plot(tr["iteration"], tr["entropy"], color="C1", lw=0.8, label="entropy per edge")
    ax.set_xlabel("iteration")
    ax.set_title("temperature / entropy")
    ax.legend(loc="upper left", fontsize=7)
    ax2.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
