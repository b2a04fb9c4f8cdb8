"""The MARL decision module: which patches an MAE step hides.

Every patch is an agent with two actions (mask / keep). All agents share one policy
(:class:`MaskingPolicy`) that maps

* the agent's observation: its patch embedding from the current MAE encoder (the encoder's
  patch projection + position embedding, detached: the policy never trains the encoder) and
  the policy's own learned position embedding for that agent, and
* the global state: the mean of all agents' features,

to the agent's mask probability (a Bernoulli). A critic maps the global state (mean and spread
of the agents' features) to a value, the expected team reward.

**Ratio bounds.** The executed mask always hides between ``ceil(min_ratio * N)`` and
``floor(max_ratio * N)`` patches (:func:`sample_mask`): the agents' Bernoulli draws are taken as
they are when their count is within bounds; otherwise the missing (or excess) agents are chosen
among those not masked (or masked) by Gumbel top-k, i.e. sampled without replacement with
weights ``p`` (or ``1 - p``). Hard bounds alone would let the policy's own probabilities drift
outside them and saturate (zero entropy behind a clamp that hides it), so the A2C loss adds a
soft barrier on the policy's mean probability outside the bounds (:func:`a2c_loss`).

**Team reward** (:func:`team_reward`), per image (batch item), computed from the very MAE
forward pass that trained on the mask (so it costs nothing extra)::

    d_i = clip((mse_i + w * hog_i) / (1 + w), 0, 1)       per masked patch i
    R   = (1 / N) * sum_{i masked} 4 * d_i * (1 - d_i)

``mse_i`` and ``hog_i`` are the MAE's per-patch losses on standardised targets, so ``d_i = 1``
is "the context explained nothing" (as bad as predicting the patch mean) and ``d_i = 0`` a
perfect reconstruction. A masked patch earns most (1) at intermediate difficulty ``d = 0.5``,
and nothing when it is trivial (``d = 0``: nothing to learn) or hopeless (``d = 1``: no usable
context, e.g. noise). Why this and not the plain loss:

* the plain reconstruction loss as reward (adversarial masking) rises monotonically with the
  mask ratio (less context = harder), so the ratio runs to its upper bound and the MAE is fed
  unpredictable patches; minus the loss (cooperative) runs it to the lower bound and hides only
  trivial patches. Either pins the ratio at a bound (a collapse of the kind the authors' later
  re-implementation reported).
* ``d (1 - d)`` summed over the masked patches has an interior optimum in the ratio: more
  masked patches add terms, but less context pushes every ``d`` towards 1 where the terms
  vanish. So the learned ratio is where masked patches are hard-but-predictable for the
  *current* MAE, and it moves with the MAE. Where that optimum lies depends on the data, the
  target and the MAE's progress; no particular ratio is claimed here.
* dividing by ``N`` rather than by the number of masked patches matters: the mean over masked
  patches of ``d (1 - d)`` only rewards lowering ``d``, i.e. *fewer* masked patches while the
  MAE is weak (``d > 0.5``), which pushes the ratio towards its lower bound.

Episodes are single-step (one mask decision per image), so A2C's advantage is
``A = R - V(s)`` with no bootstrapping; rewards are divided by a running standard deviation
(:class:`RewardScale`, floored) so the entropy coefficient means the same thing all along.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def ratio_counts(num_patches: int, min_ratio: float, max_ratio: float) -> tuple[int, int]:
    """``(n_min, n_max)`` masked patches allowed; at least one visible patch always."""
    n_min = max(0, math.ceil(min_ratio * num_patches - 1e-9))
    n_max = min(num_patches - 1, math.floor(max_ratio * num_patches + 1e-9))
    if n_min > n_max:
        raise ValueError(
            f"no whole number of the {num_patches} patches lies within mask ratios "
            f"[{min_ratio}, {max_ratio}] (with one patch visible)"
        )
    return n_min, n_max


class MaskingPolicy(nn.Module):
    """Shared actor (per-agent mask probability) and critic (value of the global state).

    Args:
        embed_dim: width of the observations (the encoder's ``hidden_size``).
        num_patches: number of agents ``N``.
        hidden: policy width.
        init_ratio: every agent's mask probability at initialisation.
    """

    def __init__(
        self, embed_dim: int, num_patches: int, hidden: int = 64, init_ratio: float = 0.5
    ) -> None:
        super().__init__()
        self.num_patches = num_patches
        self.inp = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, hidden))
        self.pos = nn.Parameter(torch.zeros(1, num_patches, hidden))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.actor = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.critic = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
        with torch.no_grad():  # start as a uniform Bernoulli(init_ratio) over agents
            self.actor[-1].weight.mul_(0.01)
            p = min(max(init_ratio, 1e-3), 1 - 1e-3)
            self.actor[-1].bias.fill_(math.log(p / (1 - p)))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``obs`` ``(B, N, embed_dim)`` -> ``(logits (B, N), value (B,))``."""
        h = F.gelu(self.inp(obs) + self.pos)
        g = h.mean(1)
        logits = self.actor(torch.cat([h, g[:, None].expand_as(h)], -1)).squeeze(-1)
        value = self.critic(torch.cat([g, h.std(1)], -1)).squeeze(-1)
        return logits, value


@dataclass
class MaskSample:
    """One mask decision for a batch."""

    mask: torch.Tensor
    """``(B, N)`` bool, the executed mask (True = hidden), within the ratio bounds."""
    actions: torch.Tensor
    """``(B, N)`` bool, the agents' own Bernoulli draws (what the policy gradient scores)."""
    probs: torch.Tensor
    """``(B, N)`` mask probabilities."""
    corrected: torch.Tensor
    """``(B,)`` bool, True where the draws were outside the bounds and got corrected."""


def _gumbel(shape: torch.Size, generator: torch.Generator | None, device: Any) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=device).clamp(1e-9, 1 - 1e-9)
    return -torch.log(-torch.log(u))


def sample_mask(
    logits: torch.Tensor,
    min_ratio: float,
    max_ratio: float,
    generator: torch.Generator | None = None,
) -> MaskSample:
    """Draw every agent's action and bring each item's count within the ratio bounds (see the
    module docstring)."""
    b, n = logits.shape
    n_min, n_max = ratio_counts(n, min_ratio, max_ratio)
    p = torch.sigmoid(logits.detach())
    actions = torch.bernoulli(p, generator=generator).to(torch.bool)
    count = actions.sum(1)
    need_add = (n_min - count).clamp(min=0)
    need_rm = (count - n_max).clamp(min=0)
    mask = actions.clone()
    if bool((need_add > 0).any()):
        key = torch.log(p.clamp(min=1e-12)) + _gumbel(p.shape, generator, p.device)
        key = key.masked_fill(actions, -math.inf)
        order = key.argsort(1, descending=True)
        pick = torch.arange(n, device=p.device)[None] < need_add[:, None]
        mask |= torch.zeros_like(mask).scatter(1, order, pick)
    if bool((need_rm > 0).any()):
        key = torch.log((1 - p).clamp(min=1e-12)) + _gumbel(p.shape, generator, p.device)
        key = key.masked_fill(~actions, -math.inf)
        order = key.argsort(1, descending=True)
        pick = torch.arange(n, device=p.device)[None] < need_rm[:, None]
        mask &= ~torch.zeros_like(mask).scatter(1, order, pick)
    return MaskSample(mask=mask, actions=actions, probs=p, corrected=(need_add + need_rm) > 0)


def random_mask(
    batch: int, num_patches: int, ratio: float, generator: torch.Generator | None, device: Any
) -> torch.Tensor:
    """Plain MAE masking: ``round(ratio * N)`` patches per item, uniformly at random (at least
    one masked, one visible)."""
    k = min(max(round(ratio * num_patches), 1), num_patches - 1)
    noise = torch.rand(batch, num_patches, generator=generator, device=device)
    ranks = noise.argsort(1).argsort(1)
    return ranks < k


def patch_difficulty(
    mse_per_patch: torch.Tensor, hog_per_patch: torch.Tensor, hog_weight: float
) -> torch.Tensor:
    """``d_i`` in [0, 1]: 0 = perfect reconstruction, 1 = no better than the patch mean."""
    d = (mse_per_patch + hog_weight * hog_per_patch) / (1.0 + hog_weight)
    return d.clamp(0.0, 1.0)


def team_reward(difficulty: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``R_b = (1/N) sum_{i masked} 4 d_i (1 - d_i)`` per batch item (see module docstring)."""
    gain = 4.0 * difficulty * (1.0 - difficulty)
    return (gain * mask.to(gain.dtype)).sum(1) / mask.shape[1]


class RewardScale:
    """Running (EMA) mean and variance of the team reward; rewards are divided by the running
    standard deviation, floored at ``min_std`` (1% of the reward's range [0, 1]) so that a
    phase of near-constant rewards (an MAE that has not learned yet) is not blown up into
    large advantages. Not centred: the critic learns the mean."""

    def __init__(self, momentum: float = 0.99, min_std: float = 0.01) -> None:
        self.momentum = momentum
        self.min_std = min_std
        self.mean = 0.0
        self.var = 0.0
        self.count = 0

    def update(self, r: torch.Tensor) -> None:
        m, v = float(r.mean()), float(r.var(unbiased=False)) if r.numel() > 1 else 0.0
        if self.count == 0:
            self.mean, self.var = m, v
        else:
            a = self.momentum
            self.var = a * self.var + (1 - a) * (v + (m - self.mean) ** 2)
            self.mean = a * self.mean + (1 - a) * m
        self.count += 1

    @property
    def std(self) -> float:
        return max(math.sqrt(self.var), self.min_std)

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        return r / self.std

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, s: dict[str, float]) -> None:
        self.mean, self.var, self.count = float(s["mean"]), float(s["var"]), int(s["count"])


def a2c_loss(
    policy: MaskingPolicy,
    obs: torch.Tensor,
    actions: torch.Tensor,
    reward: torch.Tensor,
    min_ratio: float,
    max_ratio: float,
    entropy_coef: float = 0.01,
    value_coef: float = 0.5,
    barrier_coef: float = 10.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Advantage actor-critic loss over single-step episodes.

    ``policy_loss = -mean_b[(R_b - V_b) * mean_i log pi(a_bi | o_bi)]`` (team advantage for
    every agent; the mean over agents only sets the step size), ``value_loss = mean (V - R)^2``,
    entropy = mean per-agent Bernoulli entropy (nats, at most ln 2), barrier = squared excess of
    each item's mean probability over the ratio bounds.
    """
    logits, value = policy(obs)
    dist = torch.distributions.Bernoulli(logits=logits)
    logp = dist.log_prob(actions.to(logits.dtype)).mean(1)
    entropy = dist.entropy().mean()
    advantage = (reward - value).detach()
    policy_loss = -(advantage * logp).mean()
    value_loss = F.mse_loss(value, reward)
    mean_p = torch.sigmoid(logits).mean(1)
    barrier = (F.relu(mean_p - max_ratio) ** 2 + F.relu(min_ratio - mean_p) ** 2).mean()
    loss = policy_loss + value_coef * value_loss - entropy_coef * entropy + barrier_coef * barrier
    stats = {
        "policy_loss": float(policy_loss.detach()),
        "value_loss": float(value_loss.detach()),
        "entropy": float(entropy.detach()),
        "advantage_std": float(advantage.std()) if advantage.numel() > 1 else 0.0,
        "mean_prob": float(mean_p.detach().mean()),
    }
    return loss, stats


@dataclass
class CollapseGuard:
    """Watches the logged mask ratio and policy entropy for the two ways a masking policy
    collapses: the ratio pinned at a bound, or the entropy near zero (a deterministic mask).
    :meth:`update` returns a warning the first time either has held for ``patience``
    consecutive logs (and a note when it clears)."""

    min_ratio: float
    max_ratio: float
    patience: int = 4
    entropy_floor: float = 0.05
    tolerance: float = 0.01
    streak: int = 0
    warned: bool = False
    history: list[str] = field(default_factory=list)

    def symptoms(self, ratio: float, entropy: float) -> list[str]:
        out = []
        if ratio <= self.min_ratio + self.tolerance:
            out.append(f"mask ratio {ratio:.3f} pinned at its lower bound {self.min_ratio}")
        if ratio >= self.max_ratio - self.tolerance:
            out.append(f"mask ratio {ratio:.3f} pinned at its upper bound {self.max_ratio}")
        if entropy < self.entropy_floor:
            out.append(f"policy entropy {entropy:.4f} nats below {self.entropy_floor}")
        return out

    def update(self, ratio: float, entropy: float) -> str | None:
        found = self.symptoms(ratio, entropy)
        self.streak = self.streak + 1 if found else 0
        if found and self.streak >= self.patience and not self.warned:
            self.warned = True
            msg = (
                f"masking policy collapsed ({'; '.join(found)} for {self.streak} logs): raise "
                "pretrain.entropy_coef, widen the ratio bounds or lower pretrain.policy_lr"
            )
            self.history.append(msg)
            return msg
        if not found and self.warned:
            self.warned = False
            msg = "masking policy recovered from collapse"
            self.history.append(msg)
            return msg
        return None

    @property
    def collapsed(self) -> bool:
        return self.warned

    def state_dict(self) -> dict[str, Any]:
        return {"streak": self.streak, "warned": self.warned, "history": list(self.history)}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.streak, self.warned = int(s["streak"]), bool(s["warned"])
        self.history = list(s.get("history", []))
