"""MAE pretraining of the shared ViT encoder, with masks chosen by multi-agent RL.

One iteration:

1. a raw-only batch ``(B, 1, Z, Y, X)`` in [-1, 1] (:func:`marlseg.gp_pipelines.recipes.
   raw_batches`; batch ``i`` is a pure function of ``(seed, i)``);
2. the mask: ``marl`` - every patch is an agent; the shared policy sees each patch's embedding
   from the current encoder (detached) and the global state and draws a Bernoulli per agent,
   kept within ``[min_ratio, max_ratio]`` (:mod:`marlseg.networks.marl`); ``random`` - a fixed
   ``mask_ratio`` uniformly at random (the plain-MAE baseline);
3. an MAE update (AdamW) on voxel MSE + ``hog_weight`` * HOG MSE of the masked patches;
4. the team reward of each image from that same forward pass (``R = (1/N) sum_{masked}
   4 d (1 - d)``, ``d`` the patch's normalised reconstruction loss; defined and argued in
   :mod:`marlseg.networks.marl`); it is logged in ``random`` mode too, for comparison;
5. ``marl``: every ``policy_every`` iterations one A2C update of the policy and critic on the
   masks those iterations drew (advantage = scaled team reward - value, entropy bonus, ratio
   barrier). Policy and MAE updates alternate; the policy is fixed while it collects, so the
   update is on-policy.

Every ``log_every`` iterations a row goes to ``run.dir/pretrain/log.csv`` and TensorBoard
(``tb/``), ``curves.png`` is redrawn, and the :class:`~marlseg.networks.marl.CollapseGuard`
checks the ratio and the entropy (a warning is logged if the policy collapsed). Every
``snapshot_every`` iterations ``reconstructions/iter_NNNNNNN.png`` shows masked input /
reconstruction / target for a middle z-section. Every ``checkpoint_every`` iterations (and at
the end) a checkpoint goes to ``checkpoints/``; ``pretrain/mae.pt`` is always the newest, the
file ``train.init_encoder`` takes. A rerun resumes from the newest checkpoint (model, policy,
optimisers, RNG, reward scale, the policy's collection buffer), so 4 + 4 iterations give the
same weights as 8.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marlseg.config import Config
from marlseg.errors import ConfigError
from marlseg.inference import select_device
from marlseg.networks.mae import MaskedAutoencoder
from marlseg.networks.marl import (
    CollapseGuard,
    MaskingPolicy,
    RewardScale,
    a2c_loss,
    patch_difficulty,
    random_mask,
    sample_mask,
    team_reward,
)
from marlseg.networks.unetr import build_encoder

log = logging.getLogger(__name__)

COLUMNS = [
    "iteration",
    "elapsed_s",
    "lr",
    "loss",
    "mse",
    "hog",
    "mask_ratio",
    "mask_ratio_min",
    "mask_ratio_max",
    "entropy",
    "value_loss",
    "policy_loss",
    "reward",
    "advantage_std",
    "corrected",
    "mean_prob",
    "collapsed",
    "step_s",
    "policy_s",
]
"""``log.csv`` columns. Per log row, means over the iterations since the previous row:
``entropy`` is the per-agent Bernoulli entropy of the policy (nats), ``corrected`` the fraction
of masks whose draws were outside the ratio bounds, ``step_s`` the seconds per iteration,
``policy_s`` of them spent in the policy (observation, sampling, A2C updates). Policy columns are
empty in ``random`` mode."""


TARGET_KEYS = ("target_sigma", "target_pool", "target_floor", "decoder_local")
"""Settings that change what the MAE reconstructs, or how: a run cannot resume across them."""


class Pretrainer:
    """The models, optimisers and one-iteration logic (no I/O besides what it is given)."""

    def __init__(self, config: Config, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.p = p = config.pretrain
        self.device = torch.device(device)
        torch.manual_seed(p.seed)
        encoder = build_encoder(config.network)
        self.mae = MaskedAutoencoder(
            encoder,
            decoder_dim=p.decoder_dim,
            decoder_layers=p.decoder_layers,
            decoder_heads=p.decoder_heads,
            hog_bins=p.hog_bins,
            hog_cell=p.hog_cell,
            hog_weight=p.hog_weight,
            target_sigma=tuple(p.target_sigma),
            target_pool=tuple(p.target_pool),
            target_floor=p.target_floor,
            decoder_local=p.decoder_local,
        ).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.mae.parameters(), lr=p.lr, betas=(0.9, 0.95), weight_decay=p.weight_decay
        )
        self.marl = p.masking == "marl"
        self.policy: MaskingPolicy | None = None
        self.policy_optimizer: torch.optim.Optimizer | None = None
        if self.marl:
            self.policy = MaskingPolicy(
                encoder.hidden_size, encoder.num_patches, p.policy_hidden, p.mask_ratio
            ).to(self.device)
            self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=p.policy_lr)
        self.generator = torch.Generator().manual_seed(p.seed + 1)
        self.reward_scale = RewardScale()
        self.guard = CollapseGuard(
            p.min_ratio if self.marl else 0.0,
            p.max_ratio if self.marl else 1.0,
            patience=p.collapse_patience,
            entropy_floor=p.entropy_floor,
        )
        self.buffer: list[dict[str, torch.Tensor]] = []
        self.iteration = 0

    @property
    def num_patches(self) -> int:
        return self.mae.encoder.num_patches

    def lr_at(self, iteration: int) -> float:
        """Linear warm-up, then cosine decay to 10% of ``lr`` at ``iterations``."""
        p = self.p
        if iteration < p.warmup:
            return p.lr * (iteration + 1) / p.warmup
        t = (iteration - p.warmup) / max(1, p.iterations - p.warmup)
        return p.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    # --- masks ---
    def choose_mask(self, x: torch.Tensor) -> dict[str, Any]:
        """The mask for batch ``x`` and what the policy needs to learn from it."""
        b, n = x.shape[0], self.num_patches
        if not self.marl:
            mask = random_mask(b, n, self.p.mask_ratio, self.generator, "cpu")
            return {"mask": mask.to(self.device)}
        assert self.policy is not None
        with torch.no_grad():
            obs = self.mae.encoder.embed(x).detach()
            logits, value = self.policy(obs)
        s = sample_mask(logits.cpu(), self.p.min_ratio, self.p.max_ratio, self.generator)
        entropy = torch.distributions.Bernoulli(logits=logits).entropy().mean()
        return {
            "mask": s.mask.to(self.device),
            "obs": obs,
            "actions": s.actions.to(self.device),
            "entropy": float(entropy),
            "corrected": float(s.corrected.float().mean()),
            "mean_prob": float(s.probs.mean()),
        }

    # --- updates ---
    def mae_step(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """One MAE update; returns the prediction and the losses (of the pre-update model)."""
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(self.iteration)
        self.mae.train()
        pred, losses = self.mae(x, mask)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.mae.parameters(), 1.0)
        self.optimizer.step()
        return pred.detach(), losses

    def policy_update(self) -> dict[str, float]:
        """One A2C update on the collected masks; empties the buffer."""
        assert self.policy is not None and self.policy_optimizer is not None
        obs = torch.cat([b["obs"] for b in self.buffer])
        actions = torch.cat([b["actions"] for b in self.buffer])
        reward = torch.cat([b["reward"] for b in self.buffer])
        self.buffer = []
        self.reward_scale.update(reward)
        loss, stats = a2c_loss(
            self.policy,
            obs,
            actions,
            self.reward_scale(reward),
            self.p.min_ratio,
            self.p.max_ratio,
            entropy_coef=self.p.entropy_coef,
            value_coef=self.p.value_coef,
            barrier_coef=self.p.ratio_barrier,
        )
        self.policy_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), 1.0)
        self.policy_optimizer.step()
        return stats

    def step(self, x: torch.Tensor) -> dict[str, Any]:
        """One iteration on batch ``x`` (on the trainer's device). Returns the metrics and, for
        snapshots, the batch, mask, prediction and targets."""
        t0 = time.perf_counter()
        choice = self.choose_mask(x)
        t_policy = time.perf_counter() - t0
        mask = choice["mask"]
        pred, losses = self.mae_step(x, mask)
        with torch.no_grad():
            d = patch_difficulty(
                losses["mse_per_patch"].detach(),
                losses["hog_per_patch"].detach(),
                self.p.hog_weight,
            )
            reward = team_reward(d, mask)
        ratio = mask.float().mean(1)
        row: dict[str, Any] = {
            "lr": self.lr_at(self.iteration),
            "loss": float(losses["loss"].detach()),
            "mse": float(losses["mse"].detach()),
            "hog": float(losses["hog"].detach()),
            "mask_ratio": float(ratio.mean()),
            "mask_ratio_min": float(ratio.min()),
            "mask_ratio_max": float(ratio.max()),
            "reward": float(reward.mean()),
        }
        if self.marl:
            t1 = time.perf_counter()
            self.buffer.append(
                {"obs": choice["obs"], "actions": choice["actions"], "reward": reward}
            )
            row.update(
                entropy=choice["entropy"],
                corrected=choice["corrected"],
                mean_prob=choice["mean_prob"],
            )
            if len(self.buffer) >= self.p.policy_every:
                row.update(self.policy_update())
            t_policy += time.perf_counter() - t1
        self.iteration += 1
        row["step_s"] = time.perf_counter() - t0
        row["policy_s"] = t_policy
        return {"row": row, "x": x, "mask": mask, "pred": pred, "targets": losses["targets"]}

    # --- checkpoints ---
    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "mae",
            "network": self.config.network.model_dump(mode="json"),
            "model": self.mae.state_dict(),
            "iteration": self.iteration,
            "pretrain": self.p.model_dump(mode="json"),
            "optimizer": self.optimizer.state_dict(),
            "policy": self.policy.state_dict() if self.policy is not None else None,
            "policy_optimizer": (
                self.policy_optimizer.state_dict() if self.policy_optimizer is not None else None
            ),
            "buffer": [dict(b) for b in self.buffer],
            "reward_scale": self.reward_scale.state_dict(),
            "guard": self.guard.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "mask": self.generator.get_state()},
        }

    def load_state_dict(self, ckpt: dict[str, Any], where: str) -> None:
        if ckpt.get("network") != self.config.network.model_dump(mode="json"):
            raise ConfigError(
                "network",
                f"{where} was written with network {ckpt.get('network')}, the config now says "
                f"{self.config.network.model_dump(mode='json')}: use a fresh run.dir or --restart",
            )
        for key in TARGET_KEYS:
            was, now = ckpt.get("pretrain", {}).get(key), getattr(self.p, key)
            if was is not None and was != now:
                raise ConfigError(
                    f"pretrain.{key}",
                    f"{where} was written with {was}, the config now says {now}: use a fresh "
                    "run.dir or --restart",
                )
        if (ckpt.get("policy") is not None) != self.marl:
            raise ConfigError(
                "pretrain.masking",
                f"{where} was written with masking "
                f"{ckpt.get('pretrain', {}).get('masking')!r}, the config now says "
                f"{self.p.masking!r}: use a fresh run.dir or --restart",
            )
        self.mae.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.policy is not None and self.policy_optimizer is not None:
            self.policy.load_state_dict(ckpt["policy"])
            self.policy_optimizer.load_state_dict(ckpt["policy_optimizer"])
        self.buffer = [{k: v.to(self.device) for k, v in b.items()} for b in ckpt.get("buffer", [])]
        self.reward_scale.load_state_dict(ckpt["reward_scale"])
        self.guard.load_state_dict(ckpt["guard"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.generator.set_state(ckpt["rng"]["mask"])
        self.iteration = int(ckpt["iteration"])


# --- outputs ---


class Outputs:
    """The files of ``run.dir/pretrain``."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir) / "pretrain"
        self.checkpoints = self.dir / "checkpoints"
        self.csv = self.dir / "log.csv"
        self.tb = self.dir / "tb"
        self.curves = self.dir / "curves.png"
        self.reconstructions = self.dir / "reconstructions"
        self.latest = self.dir / "mae.pt"
        self.summary = self.dir / "summary.json"

    def make(self) -> None:
        for d in (self.dir, self.checkpoints, self.reconstructions):
            d.mkdir(parents=True, exist_ok=True)

    def checkpoint_path(self, iteration: int) -> Path:
        return self.checkpoints / f"iter_{iteration:07d}.pt"

    def newest_checkpoint(self) -> Path | None:
        found = sorted(self.checkpoints.glob("iter_*.pt"))
        return found[-1] if found else None


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(trainer: Pretrainer, out: Outputs, keep: int = 3) -> Path:
    state = trainer.state_dict()
    path = out.checkpoint_path(trainer.iteration)
    _atomic_save(state, path)
    shutil.copyfile(path, out.latest.with_suffix(".pt.tmp"))
    os.replace(out.latest.with_suffix(".pt.tmp"), out.latest)
    for old in sorted(out.checkpoints.glob("iter_*.pt"))[:-keep]:
        old.unlink()
    return path


def read_log(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})
    os.replace(tmp, path)


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def plot_curves(rows: list[dict[str, Any]], path: Path, config: Config) -> None:
    """The six logged curves in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [_num(r["iteration"]) for r in rows]
    col = lambda k: [_num(r.get(k)) for r in rows]  # noqa: E731
    p = config.pretrain
    fig, ax = plt.subplots(2, 3, figsize=(13, 7))
    ax[0, 0].plot(it, col("mse"), label="voxel MSE")
    ax[0, 0].plot(it, col("hog"), label="HOG MSE")
    ax[0, 0].set_title("reconstruction loss (masked patches)")
    ax[0, 0].legend()
    ax[0, 1].plot(it, col("mask_ratio"), label="mean")
    ax[0, 1].fill_between(it, col("mask_ratio_min"), col("mask_ratio_max"), alpha=0.25)
    if p.masking == "marl":
        for b in (p.min_ratio, p.max_ratio):
            ax[0, 1].axhline(b, color="k", ls=":", lw=1)
    ax[0, 1].set_ylim(0, 1)
    ax[0, 1].set_title("mask ratio (band: batch min-max)")
    ax[0, 2].plot(it, col("entropy"))
    ax[0, 2].axhline(math.log(2), color="k", ls=":", lw=1)
    ax[0, 2].axhline(p.entropy_floor, color="r", ls=":", lw=1)
    ax[0, 2].set_title("policy entropy per agent (nats)")
    ax[1, 0].plot(it, col("value_loss"))
    ax[1, 0].set_title("critic value loss")
    ax[1, 1].plot(it, col("reward"))
    ax[1, 1].set_title("team reward (4 d (1-d) over masked / N)")
    ax[1, 2].plot(it, col("lr"))
    ax[1, 2].set_title("MAE learning rate")
    if p.masking != "marl":
        for a in (ax[0, 2], ax[1, 0]):
            a.cla()
            a.text(0.5, 0.5, "no policy (random masking)", ha="center", va="center")
            a.set_xticks([])
            a.set_yticks([])
    for a in ax.flat:
        a.set_xlabel("iteration")
    fig.suptitle(f"pretraining, masking={p.masking}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_reconstruction(
    trainer: Pretrainer, out: dict[str, Any], path: Path, items: int = 2
) -> None:
    """Masked input / reconstruction / target of the middle z-section of up to ``items`` batch
    items."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with torch.no_grad():
        blank, recon = trainer.mae.reconstruction(
            out["x"], out["mask"], out["pred"], out["targets"]
        )
    x = out["x"].cpu().numpy()
    blank, recon = blank.cpu().numpy(), recon.cpu().numpy()
    n = min(items, x.shape[0])
    z = x.shape[2] // 2
    fig, ax = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for i in range(n):
        ratio = float(out["mask"][i].float().mean())
        for j, (img, title) in enumerate(
            ((blank, f"masked input ({ratio:.2f})"), (recon, "reconstruction"), (x, "target"))
        ):
            ax[i, j].imshow(img[i, 0, z], cmap="gray", vmin=x[i, 0].min(), vmax=x[i, 0].max())
            ax[i, j].set_title(title)
            ax[i, j].axis("off")
    fig.suptitle(f"iteration {trainer.iteration}, z = {z}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _mean_rows(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = {k for r in rows for k in r}
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}


def batches(config: Config, start: int):
    """The raw-only batch stream (``gp_pipelines``), from batch ``start``."""
    from marlseg.gp_pipelines.recipes import raw_batches

    p = config.pretrain
    try:
        yield from raw_batches(
            p.raw,
            config.network.input_shape,
            p.batch_size,
            augment=p.augment,
            seed=p.seed,
            precache_workers=p.precache_workers,
            start=start,
        )
    except ConfigError as e:
        raise ConfigError(f"pretrain.{e.where}" if e.where else "pretrain.raw", e.what) from None


def pretrain(config: Config, restart: bool = False) -> dict[str, Any]:
    """Run (or resume) pretraining as configured; returns the summary (also written to
    ``run.dir/pretrain/summary.json``)."""
    p = config.pretrain
    out = Outputs(config.run.dir)
    if restart and out.dir.exists():
        shutil.rmtree(out.dir)
    out.make()
    device = select_device(p.device, "pretrain.device")
    trainer = Pretrainer(config, device)
    rows: list[dict[str, Any]] = []
    newest = out.newest_checkpoint()
    if newest is not None:
        ckpt = torch.load(newest, map_location=device, weights_only=True)
        trainer.load_state_dict(ckpt, str(newest))
        rows = [r for r in read_log(out.csv) if _num(r["iteration"]) <= trainer.iteration]
        print(f"pretrain: resuming from {newest} (iteration {trainer.iteration})", flush=True)
    _write_rows(out.csv, rows)

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out.tb), purge_step=trainer.iteration + 1 if rows else None)
    elapsed0 = _num(rows[-1]["elapsed_s"]) if rows else 0.0
    t_start = time.perf_counter()
    pending: list[dict[str, Any]] = []
    last: dict[str, Any] | None = None
    try:
        stream = batches(config, trainer.iteration)
        while trainer.iteration < p.iterations:
            x = torch.from_numpy(next(stream)).to(device)
            last = trainer.step(x)
            pending.append(last["row"])
            it = trainer.iteration
            if it % p.log_every == 0 or it == p.iterations:
                row = _mean_rows(pending)
                pending = []
                row["iteration"] = it
                row["elapsed_s"] = elapsed0 + time.perf_counter() - t_start
                ratio = row["mask_ratio"]
                entropy = row.get("entropy", math.log(2))
                msg = trainer.guard.update(ratio, entropy) if trainer.marl else None
                if msg:
                    log.warning("iteration %d: %s", it, msg)
                row["collapsed"] = int(trainer.guard.collapsed)
                rows.append(row)
                _write_rows(out.csv, rows)
                for k, v in row.items():
                    if k != "iteration":
                        writer.add_scalar(k, v, it)
                writer.flush()
                plot_curves(rows, out.curves, config)
                print(
                    f"pretrain: {it}/{p.iterations} loss {row['loss']:.4f} (mse "
                    f"{row['mse']:.4f} hog {row['hog']:.4f}) ratio {ratio:.3f} "
                    + (f"entropy {entropy:.3f} " if trainer.marl else "")
                    + f"reward {row['reward']:.4f} {row['step_s']:.3f}s/it",
                    flush=True,
                )
            if it % p.snapshot_every == 0 or it == p.iterations:
                plot_reconstruction(trainer, last, out.reconstructions / f"iter_{it:07d}.png")
            if it % p.checkpoint_every == 0 or it == p.iterations:
                save_checkpoint(trainer, out)
    finally:
        writer.close()
    if not out.latest.exists():  # nothing to do (already complete) but no copy yet
        newest = out.newest_checkpoint()
        if newest is not None:
            shutil.copyfile(newest, out.latest)
    summary = {
        "iteration": trainer.iteration,
        "masking": p.masking,
        "checkpoint": str(out.latest),
        "log": str(out.csv),
        "last_row": {k: _num(v) for k, v in rows[-1].items()} if rows else None,
        "collapse_warnings": trainer.guard.history,
    }
    out.summary.write_text(json.dumps(summary, indent=2))
    return summary
