"""The patch game: two players compete for the patches of an image.

After Saeed et al., "Competing for pixels: a self-play algorithm for weakly-supervised
segmentation" (arXiv 2405.16628). A game is played on a grid of ``n`` patches, each with the
detector's presence score ``s_i`` in [0, 1] (:mod:`marlseg.weak_labels.detector`) and image
evidence (per-patch intensity statistics). Rules (:class:`PatchGame`):

* Players 0 and 1 alternate, player 0 first; one *round* is a move of each. A move is a patch
  ``i`` and a termination flag.
* **Pick** (flag 0): if ``i`` is already taken the mover gets ``-invalid_penalty`` and takes
  nothing; otherwise ``i`` is taken (selected). At the end of each round the two picks are
  compared: the higher score wins, **+1** to the winner and **-1** to the loser (an invalid
  pick scores -1, so it loses to any valid one; equal scores: 0 each).
* **Terminate** (flag 1): the mover claims the ROI is exhausted; its patch choice is ignored and
  an open round is not compared. The opponent's next move is its **final pick** ``j`` (its
  flag is ignored). Whether ``j`` refutes the claim is decided *relative to the game so far*,
  not by an absolute threshold: ``j`` is an ROI patch when its score is nearer the ROI level
  than the background level. The ROI level is the mean score of the patches selected so far
  (before any: ``levels[0]``); the background level is the mean score of the patches still
  free besides ``j``, capped at ``levels[1]`` (so that a tile that is ROI all over, a missing
  section, does not count as its own background). ``levels`` are the detector's mean scores on
  the tagged crops with tag 1 and tag 0 (measured, not chosen).
  If so the opponent found one more ROI patch: opponent **+termination_reward**, terminator
  **-termination_reward**, and ``j`` is selected. Otherwise the terminator was right:
  terminator **+termination_reward**, opponent **-termination_reward**. The game then ends.
* The game also ends, with no termination reward, when every patch is taken or after
  ``max_rounds`` rounds (default: ``n``).

Winning rounds rewards picking the most ROI-like free patch; the termination stake rewards
stopping exactly when what is left looks like background *of this image*. The selection thus
adapts to each image's own contrast between ROI and background (a detector's scores drift
with section brightness and staining), where a fixed threshold on the score cannot.

Deviations from the paper, and why: the termination rule is the relative one above (the
paper's public code judges the final pick by the detector's absolute score); players see, per
patch, the score, image statistics and the game state on the patch grid (the paper's agents see
the image patch itself: our patches are 10 x 10 EM voxels whose statistics carry the evidence
at a fraction of the cost); the termination reward is a fixed stake (the public code scales the
round reward by 100 when either side terminates).
"""

from __future__ import annotations

import math

import numpy as np
import torch

FEATURE_CHANNELS = 4
"""Image evidence per patch besides the score (:func:`marlseg.weak_labels.detector.tile_inputs`)."""
OBS_CHANNELS = 1 + FEATURE_CHANNELS + 5
"""Policy input: score, image evidence, taken, ROI level, background level, final-pick flag,
second-mover flag."""


class PatchGame:
    """A batch of patch games played in lockstep (rules: the module docstring).

    ``scores``: ``(B, gh, gw)`` presence probabilities; ``features``: ``(B, F, gh, gw)``.
    Call :meth:`observe` and :meth:`step` until :attr:`done` is all true.
    """

    def __init__(
        self,
        scores: torch.Tensor,
        features: torch.Tensor | None = None,
        *,
        termination_reward: float = 10.0,
        invalid_penalty: float = 1.0,
        max_rounds: int | None = None,
        levels: tuple[float, float] = (0.9, 0.1),
    ):
        scores = torch.as_tensor(scores, dtype=torch.float32)
        self.batch, self.grid = scores.shape[0], tuple(scores.shape[1:])
        self.n = int(np.prod(self.grid))
        self.device = scores.device
        self.scores = scores.reshape(self.batch, self.n)
        if features is None:
            features = torch.zeros(self.batch, FEATURE_CHANNELS, *self.grid, device=self.device)
        self.features = torch.as_tensor(features, dtype=torch.float32, device=self.device)
        self.termination_reward = termination_reward
        self.invalid_penalty = invalid_penalty
        self.levels_prior = (float(levels[0]), float(levels[1]))
        self.max_steps = 2 * (max_rounds if max_rounds is not None else self.n)
        self.reset()

    def reset(self) -> None:
        b, d = self.batch, self.device
        self.taken = torch.zeros(b, self.n, dtype=torch.bool, device=d)
        self.done = torch.zeros(b, dtype=torch.bool, device=d)
        self.final = torch.zeros(b, dtype=torch.bool, device=d)
        """The mover's next move is a final pick (the opponent called termination)."""
        self.first_score = torch.full((b,), math.nan, device=d)
        self.terminated_by = torch.full((b,), -1, dtype=torch.long, device=d)
        self.found = torch.zeros(b, dtype=torch.bool, device=d)
        self.steps = 0

    @property
    def mover(self) -> int:
        return self.steps % 2

    @property
    def selected(self) -> torch.Tensor:
        """Selected patches ``(B, gh, gw)``: every patch taken by either player."""
        return self.taken.reshape(self.batch, *self.grid)

    def levels(self, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ROI level, background level)`` per game: the mean score of the taken patches
        (``levels[0]`` when none) and of the free ones without ``exclude``, capped at
        ``levels[1]``."""
        taken = self.taken.float()
        free = 1.0 - taken
        if exclude is not None:
            free = free.scatter(1, exclude[:, None], 0.0)
        n_t, n_f = taken.sum(1), free.sum(1)
        r0, b0 = self.levels_prior
        roi = torch.where(
            n_t > 0, (self.scores * taken).sum(1) / n_t.clamp(min=1), torch.full_like(n_t, r0)
        )
        bg = (self.scores * free).sum(1) / n_f.clamp(min=1)
        bg = torch.where(n_f > 0, bg.clamp(max=b0), torch.full_like(n_f, b0))
        return roi, bg

    def observe(self) -> torch.Tensor:
        """Policy input ``(B, OBS_CHANNELS, gh, gw)``: score, image evidence, taken, ROI level,
        background level, final, second."""
        b, (gh, gw) = self.batch, self.grid
        ones = torch.ones(b, 1, gh, gw, device=self.device)
        roi, bg = self.levels()
        return torch.cat(
            [
                self.scores.reshape(b, 1, gh, gw),
                self.features,
                self.taken.reshape(b, 1, gh, gw).float(),
                ones * roi[:, None, None, None],
                ones * bg[:, None, None, None],
                ones * self.final.float()[:, None, None, None],
                ones * float(self.mover == 1),
            ],
            dim=1,
        )

    def step(self, patch: torch.Tensor, terminate: torch.Tensor) -> torch.Tensor:
        """The mover's move in every game; returns rewards ``(B, 2)`` (player 0, player 1).
        Games already done are left alone and get 0."""
        patch = torch.as_tensor(patch, dtype=torch.long, device=self.device)
        terminate = torch.as_tensor(terminate, dtype=torch.bool, device=self.device)
        m, o = self.mover, 1 - self.mover
        rewards = torch.zeros(self.batch, 2, device=self.device)
        active = ~self.done
        s = self.scores.gather(1, patch[:, None])[:, 0]
        valid = ~self.taken.gather(1, patch[:, None])[:, 0]
        rows = torch.arange(self.batch, device=self.device)

        # final pick after the opponent's termination call, judged relative to this game
        fin = active & self.final
        roi, bg = self.levels(exclude=patch)
        found = fin & valid & (s - bg > roi - s)
        missed = fin & ~found
        c = self.termination_reward
        rewards[:, m] += c * found.float() - c * missed.float()
        rewards[:, o] += c * missed.float() - c * found.float()
        self.taken[rows[found], patch[found]] = True
        self.found |= found

        # regular moves
        regular = active & ~self.final
        term = regular & terminate
        pick = regular & ~terminate
        rewards[:, m] -= self.invalid_penalty * (pick & ~valid).float()
        ok = pick & valid
        self.taken[rows[ok], patch[ok]] = True
        pick_score = torch.where(ok, s, torch.full_like(s, -1.0))
        if m == 0:
            self.first_score = torch.where(pick, pick_score, torch.full_like(s, math.nan))
        else:
            compared = pick & ~torch.isnan(self.first_score)
            d = torch.sign(pick_score - torch.nan_to_num(self.first_score)) * compared.float()
            rewards[:, 1] += d
            rewards[:, 0] -= d
            self.first_score = torch.full_like(s, math.nan)
        self.terminated_by[term] = m
        self.final = term
        self.done |= fin
        self.steps += 1
        self.done |= active & ~self.final & self.taken.all(dim=1)
        if self.steps >= self.max_steps:
            # truncation; a pending final pick still gets its move (one step more)
            self.done |= ~self.final | (self.steps > self.max_steps)
        return rewards


def relative_split(scores: np.ndarray, levels: tuple[float, float] = (0.9, 0.1)) -> np.ndarray:
    """The selection perfect play converges to under the relative termination rule, computed
    directly: per image ``(gh, gw)``, take patches in decreasing score while the next one is
    nearer the ROI level than the background level (:meth:`PatchGame.levels`). A reference for
    tests and the benchmark (no game, no learning)."""
    scores = np.asarray(scores, dtype=np.float64)
    out = np.zeros(scores.shape, bool)
    for i, img in enumerate(scores.reshape(len(scores), -1)):
        order = np.argsort(-img, kind="stable")
        total, taken_sum = img.sum(), 0.0
        for k, j in enumerate(order):
            roi = taken_sum / k if k else levels[0]
            rest = len(img) - k - 1
            bg = min((total - taken_sum - img[j]) / rest, levels[1]) if rest else levels[1]
            if not img[j] - bg > roi - img[j]:
                break
            taken_sum += img[j]
            out.reshape(len(scores), -1)[i, j] = True
    return out
