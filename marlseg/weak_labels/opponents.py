"""The opponent pool of self-play: past snapshots of the learner and how one is drawn.

Self-play against the newest policy alone tends to cycle (a strategy is forgotten as soon as
the current opponent stops using it); playing past snapshots (fictitious self-play) prevents
that, and *prioritising* them (PFSP) spends the games where they teach most.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy.stats import truncnorm

Sampling = Literal["pfsp", "truncnorm", "uniform", "latest"]


class OpponentPool:
    """Past snapshots of the learner, oldest first, and how opponents are drawn from them.

    ``pfsp`` (default): prioritised fictitious self-play by performance. The pool keeps, per
    snapshot, the learner's running win rate ``w`` against it (the share of the learner's games
    against it that it won on total reward; an exponential average, 0.5 before any game); a
    snapshot is drawn with probability proportional to ``(1 - w) ** pfsp_power + 0.05``: the
    snapshots the learner still loses to are played most, the beaten ones rarely,
    never not at all. ``truncnorm``: prioritised by age. A position ``x`` is drawn from a normal
    with its mean at the newest end of the pool (``x = n``) and standard deviation
    ``sigma * n``, truncated to ``[0, n]``; snapshot ``floor(x)`` (clipped to ``n - 1``) plays.
    The density rises towards the newest snapshot, so recent opponents are favoured while old
    ones keep a non-zero chance (no strategy cycling). ``uniform``: every snapshot alike
    (fictitious self-play). ``latest``: the newest snapshot only.
    """

    def __init__(
        self,
        sampling: Sampling = "pfsp",
        sigma: float = 0.3,
        max_size: int = 50,
        pfsp_power: float = 2.0,
        win_rate_decay: float = 0.8,
    ):
        if sampling not in ("pfsp", "truncnorm", "uniform", "latest"):
            raise ValueError(f"unknown opponent sampling {sampling!r}")
        self.sampling = sampling
        self.sigma = float(sigma)
        self.pfsp_power = float(pfsp_power)
        self.win_rate_decay = float(win_rate_decay)
        self.win_rates: list[float] = []
        self.max_size = int(max_size)
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.snapshots)

    def add(self, policy: torch.nn.Module) -> None:
        self.snapshots.append({k: v.detach().clone() for k, v in policy.state_dict().items()})
        self.win_rates.append(0.5)
        if len(self.snapshots) > self.max_size:
            self.snapshots.pop(0)
            self.win_rates.pop(0)

    def record(self, index: int, win_rate: float) -> None:
        """The learner won ``win_rate`` of a batch of games against snapshot ``index``."""
        a = self.win_rate_decay
        self.win_rates[index] = a * self.win_rates[index] + (1 - a) * float(win_rate)

    def probabilities(self, n: int | None = None) -> np.ndarray:
        """Probability of each snapshot (index 0 = oldest) for a pool of ``n``."""
        n = len(self) if n is None else n
        if n <= 0:
            raise ValueError("empty opponent pool")
        if self.sampling == "latest":
            p = np.zeros(n)
            p[-1] = 1.0
            return p
        if self.sampling == "uniform":
            return np.full(n, 1.0 / n)
        if self.sampling == "pfsp":
            w = np.asarray(self.win_rates[:n] + [0.5] * (n - len(self.win_rates)))
            p = (1.0 - w) ** self.pfsp_power + 0.05
            return p / p.sum()
        dist = self._truncnorm(n)
        edges = dist.cdf(np.arange(n + 1, dtype=float))
        p = np.diff(edges)
        return p / p.sum()

    def _truncnorm(self, n: int):
        scale = self.sigma * n
        return truncnorm(a=-n / scale, b=0.0, loc=float(n), scale=scale)

    def sample_index(self, rng: np.random.Generator) -> int:
        n = len(self)
        if n == 0:
            raise ValueError("empty opponent pool")
        if self.sampling == "latest":
            return n - 1
        if self.sampling == "uniform":
            return int(rng.integers(0, n))
        if self.sampling == "pfsp":
            return int(rng.choice(n, p=self.probabilities(n)))
        # floor(x) of the truncated normal, drawn through its index probabilities
        if n not in self._cache:
            self._cache[n] = self.probabilities(n)
        return int(rng.choice(n, p=self._cache[n]))

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return self.snapshots[self.sample_index(rng)]
