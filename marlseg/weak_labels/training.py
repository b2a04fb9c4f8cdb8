"""Self-play training of the patch policy, and greedy play with it.

:func:`train_selfplay` is REINFORCE with a learned value baseline (normalised advantages, an
entropy bonus): the learner plays a batch of games of :class:`~marlseg.weak_labels.game.
PatchGame` on a random side against an opponent drawn from an
:class:`~marlseg.weak_labels.opponents.OpponentPool` of its own past snapshots, and reports each
batch's outcome back to the pool (prioritised fictitious self-play by performance). Three
choices make it learn on a CPU budget, each found necessary on toy grids: a discount below 1 (a
pick is credited mostly with its own round), a warm-up without termination calls (the agents
learn to pick before terminating can pay off against random opponents) and a bounded
termination logit (a saturated Bernoulli never explores again).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from marlseg.config import SelfPlayConfig
from marlseg.networks.weak_labels import PatchPolicy
from marlseg.weak_labels.game import FEATURE_CHANNELS, OBS_CHANNELS, PatchGame, relative_split
from marlseg.weak_labels.opponents import OpponentPool


@dataclass
class Rollout:
    """A batch of played games from the learner's side (``T`` steps, ``B`` games)."""

    moved: list[torch.Tensor] = field(default_factory=list)
    """``(B,)`` per step: whether the learner moved in that game at that step."""
    rewards: list[torch.Tensor] = field(default_factory=list)
    """``(B, 2)`` per step, players 0 and 1."""
    obs: list[torch.Tensor] = field(default_factory=list)
    """The learner's observations, its moves only, step by step (concatenate for all)."""
    patch: list[torch.Tensor] = field(default_factory=list)
    term: list[torch.Tensor] = field(default_factory=list)
    final: list[torch.Tensor] = field(default_factory=list)
    """Whether the move's termination flag was not part of the action (final pick, warm-up)."""


def _sample(
    policy: PatchPolicy, obs: torch.Tensor, greedy: bool, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    logits, tlogit, _ = policy(obs)
    if greedy:
        return logits.argmax(dim=1), tlogit > 0
    patch = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=gen)[:, 0]
    u = torch.rand(tlogit.shape, generator=gen, device=tlogit.device)
    return patch, u < torch.sigmoid(tlogit)


def evaluate_moves(
    policy: PatchPolicy,
    obs: torch.Tensor,
    patch: torch.Tensor,
    term: torch.Tensor,
    final: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probability, entropy and value of moves ``(patch, term)`` in ``obs`` under
    ``policy``. Where ``final``, the termination flag is not part of the action (the game
    ignores it), so neither its probability nor its entropy counts."""
    logits, tlogit, value = policy(obs)
    logq = torch.log_softmax(logits, dim=1)
    logp = logq.gather(1, patch[:, None])[:, 0]
    tlogp = torch.where(term, F.logsigmoid(tlogit), F.logsigmoid(-tlogit))
    pt = torch.sigmoid(tlogit)
    tent = -(pt * F.logsigmoid(tlogit) + (1 - pt) * F.logsigmoid(-tlogit))
    pent = -(logq.exp() * logq).sum(dim=1)
    zero = torch.zeros_like(tlogp)
    logp = logp + torch.where(final, zero, tlogp)
    ent = pent + torch.where(final, zero, tent)
    return logp, ent, value


@torch.no_grad()
def play(
    game: PatchGame,
    players: tuple[PatchPolicy, PatchPolicy],
    learner_side: torch.Tensor | None = None,
    *,
    greedy: bool = False,
    gen: torch.Generator | None = None,
    allow_termination: bool = True,
) -> Rollout:
    """Play ``game`` to the end (no gradients). ``players[0]`` (the learner) moves in games
    where ``learner_side`` (``(B,)``, 0 or 1) equals the mover, ``players[1]`` elsewhere;
    ``learner_side=None``: the learner plays side 0 everywhere. ``allow_termination=False``:
    nobody calls termination (warm-up). The learner's moves are recorded for
    :func:`evaluate_moves`."""
    game.reset()
    b = game.batch
    if learner_side is None:
        learner_side = torch.zeros(b, dtype=torch.long, device=game.device)
    out = Rollout()
    while not bool(game.done.all()):
        obs = game.observe()
        patch = torch.zeros(b, dtype=torch.long, device=game.device)
        term = torch.zeros(b, dtype=torch.bool, device=game.device)
        active = ~game.done
        mine = (learner_side == game.mover) & active
        for who, sel in ((players[0], mine), (players[1], ~mine & active)):
            if bool(sel.any()):
                patch[sel], term[sel] = _sample(who, obs[sel], greedy, gen)
        if not allow_termination:
            term[:] = False
        out.moved.append(mine)
        out.obs.append(obs[mine])
        out.patch.append(patch[mine])
        out.term.append(term[mine])
        out.final.append(game.final[mine] | (not allow_termination))
        out.rewards.append(game.step(patch, term))
    return out


def returns_to_go(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G[t] = sum_{s >= t} gamma^(s - t) r[s]`` along the first axis."""
    g = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * running
        g[t] = running
    return g


@dataclass
class SelfPlayHistory:
    """Per-iteration training statistics (lists, one value per iteration)."""

    learner_return: list[float] = field(default_factory=list)
    game_steps: list[float] = field(default_factory=list)
    selected_fraction: list[float] = field(default_factory=list)
    agreement: list[float] = field(default_factory=list)
    """IoU of the selection with the relative split of the scores (:func:`relative_split`, what
    perfect play on the scores alone selects; no ground truth)."""
    correct_termination: list[float] = field(default_factory=list)
    """Fraction of termination calls the final pick did not refute."""
    entropy: list[float] = field(default_factory=list)
    opponent_index: list[int] = field(default_factory=list)
    pool_size: list[int] = field(default_factory=list)


def _iou_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def train_selfplay(
    scores: np.ndarray,
    features: np.ndarray | None,
    settings: SelfPlayConfig,
    *,
    levels: tuple[float, float] = (0.9, 0.1),
    seed: int = 0,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = None,
) -> tuple[PatchPolicy, SelfPlayHistory]:
    """Train the patch policy by self-play on game inputs ``scores (N, gh, gw)`` and
    ``features (N, F, gh, gw)`` (:func:`tile_inputs`). REINFORCE with a value baseline and an
    entropy bonus; the opponent of each iteration is drawn from an :class:`OpponentPool`."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    scores_t = torch.as_tensor(np.asarray(scores, dtype=np.float32), device=device)
    feats_t = (
        torch.zeros(len(scores_t), FEATURE_CHANNELS, *scores_t.shape[1:], device=device)
        if features is None
        else torch.as_tensor(np.asarray(features, dtype=np.float32), device=device)
    )
    policy = PatchPolicy(OBS_CHANNELS, settings.width).to(device)
    opponent = copy.deepcopy(policy)
    opponent.requires_grad_(False)
    pool = OpponentPool(
        settings.opponent_sampling, settings.sigma, settings.pool_size, settings.pfsp_power
    )
    pool.add(policy)
    opt = torch.optim.Adam(policy.parameters(), lr=settings.lr)
    scale = max(1.0, settings.termination_reward)
    hist = SelfPlayHistory()
    b = settings.games_per_iteration
    for it in range(settings.iterations):
        idx = torch.as_tensor(rng.integers(0, len(scores_t), size=b), device=device)
        game = PatchGame(
            scores_t[idx],
            feats_t[idx],
            levels=levels,
            termination_reward=settings.termination_reward,
            invalid_penalty=settings.invalid_penalty,
        )
        k = pool.sample_index(rng)
        opponent.load_state_dict(pool.snapshots[k])
        side = torch.as_tensor(rng.integers(0, 2, size=b), device=device)
        warm = it < settings.warmup_iterations
        ro = play(game, (policy, opponent), side, gen=gen, allow_termination=not warm)
        moved = torch.stack(ro.moved)  # (T, B)
        rew = torch.stack(ro.rewards)  # (T, B, 2)
        mine = rew.gather(2, side[None, :, None].expand(rew.shape[0], b, 1))[..., 0]
        theirs = rew.sum(2) - mine
        pool.record(k, float((mine.sum(0) > theirs.sum(0)).float().mean()))
        # moves are recorded step by step, games in order: the same order as g[moved]
        g = (returns_to_go(mine, settings.gamma) / scale)[moved]
        logp, ent, value = evaluate_moves(
            policy,
            torch.cat(ro.obs),
            torch.cat(ro.patch),
            torch.cat(ro.term),
            torch.cat(ro.final),
        )
        adv = g - value.detach()
        adv = (adv - adv.mean()) / (adv.std() + 1e-6) if adv.numel() > 1 else adv
        loss = (
            -(adv * logp).mean() + 0.5 * ((g - value) ** 2).mean() - settings.entropy * ent.mean()
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        if (it + 1) % settings.snapshot_every == 0:
            pool.add(policy)

        with torch.no_grad():
            terminated = game.terminated_by >= 0
            split = torch.as_tensor(
                relative_split(game.scores.reshape(game.selected.shape).cpu().numpy(), levels),
                device=device,
            )
            hist.learner_return.append(float(mine.sum(0).mean()))
            hist.game_steps.append(float(moved.shape[0]))
            hist.selected_fraction.append(float(game.taken.float().mean()))
            hist.agreement.append(float(_iou_t(game.selected, split).mean()))
            hist.correct_termination.append(
                float((~game.found[terminated]).float().mean()) if bool(terminated.any()) else 0.0
            )
            hist.entropy.append(float(ent.mean()))
            hist.opponent_index.append(k)
            hist.pool_size.append(len(pool))
        if log and (it + 1) % max(1, settings.iterations // 10) == 0:
            w = slice(-max(1, settings.iterations // 10), None)
            log(
                f"self-play {it + 1}/{settings.iterations}: return "
                f"{np.mean(hist.learner_return[w]):+.2f}, agreement "
                f"{np.mean(hist.agreement[w]):.3f}, correct terminations "
                f"{np.mean(hist.correct_termination[w]):.2f}, pool {len(pool)}"
            )
    policy.eval()
    return policy, hist


@torch.no_grad()
def select_patches(
    policy: PatchPolicy,
    scores: np.ndarray,
    features: np.ndarray | None = None,
    *,
    opponent: PatchPolicy | None = None,
    levels: tuple[float, float] = (0.9, 0.1),
    device: str | torch.device = "cpu",
    batch: int = 256,
) -> np.ndarray:
    """Play greedy games (``policy`` against itself unless ``opponent``) on ``scores
    (N, gh, gw)``; returns the selected patches ``(N, gh, gw)`` (bool)."""
    out = []
    for i in range(0, len(scores), batch):
        s = torch.as_tensor(np.asarray(scores[i : i + batch], dtype=np.float32), device=device)
        f = None
        if features is not None:
            f = torch.as_tensor(np.asarray(features[i : i + batch], dtype=np.float32))
        game = PatchGame(s, None if f is None else f.to(device), levels=levels)
        play(game, (policy, opponent or policy), greedy=True)
        out.append(game.selected.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *np.shape(scores)[1:]), bool)
