"""Pretraining ablation: does MARL masking pay for itself?

``python benchmarks/pretrain_ablation.py CONFIG.json [--policy CKPT] [--full] [--steps N]``

``--policy CKPT``: the team reward a trained MARL policy's masks earn, against random masks
with the same number of masked patches per image, same MAE, same (unseen) batches: whether the
policy learned *which* patches to mask, not only how many.

Always (cheap): the time of one MARL pretraining iteration over one random-mask iteration, same
network, same batches, same starting mask ratio (goal: <= 1.3x). Batches are drawn once up front
so the data pipeline is not timed; the modes are interleaved step by step so a busy machine slows
both alike; the median over steps is reported.

With ``--full`` (needs ``train`` and the post-processing chain): three arms with the same
budgets, each in its own ``run.dir`` under ``--out``:

  (a) scratch: the UNETR trained from random initialisation (``train.iterations``);
  (b) random-mask MAE (``pretrain.iterations``), then the same fine-tuning from its encoder;
  (c) MARL MAE (``pretrain.iterations``), then the same fine-tuning from its encoder;

then ``predict -> fragments -> agglomerate -> segments -> extract -> evaluate`` on the config's
``raw``/``gt``, printing the best VOI (split + merge) and ARAND of each arm, and the learned mask
ratio of (c) over time (from its ``log.csv``). Stages that are not built yet are reported and the
arms stop there.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from marlseg.config import Config, load_config
from marlseg.errors import MarlsegError
from marlseg.pretrain import Pretrainer, batches, read_log


def step_time_ratio(config: Config, steps: int = 30, warmup: int = 5) -> dict[str, float]:
    """Median seconds per iteration of ``marl`` and ``random`` masking, and their ratio."""
    torch.manual_seed(0)
    stream = batches(config, 0)
    xs = [torch.from_numpy(next(stream)) for _ in range(warmup + steps)]
    trainers = {}
    for mode in ("random", "marl"):
        c = config.model_copy(deep=True)
        c.pretrain.masking = mode
        c.pretrain.device = "cpu"
        trainers[mode] = Pretrainer(c)
    times: dict[str, list[float]] = {"random": [], "marl": []}
    ratios: dict[str, list[float]] = {"random": [], "marl": []}
    for i, x in enumerate(xs):
        for mode, t in trainers.items():
            t0 = time.perf_counter()
            row = t.step(x)["row"]
            if i >= warmup:
                times[mode].append(time.perf_counter() - t0)
                ratios[mode].append(row["mask_ratio"])
    med = {m: statistics.median(v) for m, v in times.items()}
    return {
        "random_s": med["random"],
        "marl_s": med["marl"],
        "ratio": med["marl"] / med["random"],
        "random_mask_ratio": statistics.mean(ratios["random"]),
        "marl_mask_ratio": statistics.mean(ratios["marl"]),
    }


def policy_vs_random(config: Config, checkpoint: Path, batches_n: int = 8) -> dict[str, float]:
    """Team reward of a trained MARL policy's masks against random masks with the same number
    of masked patches per image, under the same (trained) MAE and the same batches."""
    from marlseg.networks.marl import patch_difficulty, team_reward

    c = config.model_copy(deep=True)
    c.pretrain.masking = "marl"
    c.pretrain.device = "cpu"
    trainer = Pretrainer(c)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    trainer.load_state_dict(ckpt, str(checkpoint))
    trainer.mae.eval()
    stream = batches(c, 10**6)  # batches the run never trained on
    g = torch.Generator().manual_seed(123)
    out: dict[str, list[float]] = {"policy": [], "random": [], "ratio": []}
    for _ in range(batches_n):
        x = torch.from_numpy(next(stream))
        mask = trainer.choose_mask(x)["mask"]
        counts = mask.sum(1)
        noise = torch.rand(mask.shape, generator=g)
        ranks = noise.argsort(1).argsort(1)
        rand = ranks < counts[:, None]
        for name, m in (("policy", mask), ("random", rand)):
            with torch.no_grad():
                _, losses = trainer.mae(x, m)
            d = patch_difficulty(
                losses["mse_per_patch"], losses["hog_per_patch"], c.pretrain.hog_weight
            )
            out[name].append(float(team_reward(d, m).mean()))
        out["ratio"].append(float(mask.float().mean()))
    return {k: statistics.mean(v) for k, v in out.items()}


def _run_stage(name: str, config: Config) -> None:
    from marlseg.stages import get_stage

    stage = get_stage(name)(config)
    stage.check()
    stage.run()


def _best_scores(config: Config) -> dict[str, float] | None:
    path = config.run.dir / "scores.json"
    if not path.is_file():
        return None
    scores = json.loads(path.read_text())
    best = min(scores, key=lambda s: s["voi_split"] + s["voi_merge"])
    return {
        "threshold": best["threshold"],
        "voi": best["voi_split"] + best["voi_merge"],
        "voi_split": best["voi_split"],
        "voi_merge": best["voi_merge"],
        "arand": min(s["arand"] for s in scores),
    }


def run_arm(name: str, config: Config, out: Path, pretrain_mode: str | None) -> dict:
    from marlseg.stages import CHAIN

    data = config.model_dump(mode="json")
    data["run"]["dir"] = str(out / name)
    data["db"]["name"] = f"{data['db']['name']}_{name}"  # each arm is a run: a graph of its own
    arm = Config.model_validate(copy.deepcopy(data))
    # Each arm predicts with its own fine-tuned network, exported from its own run: the best
    # validation checkpoint when train.validation is set (it must not overlap the evaluated
    # crop), else the last one.
    arm.train.export = arm.run.dir / "unetr.pt"
    arm.predict.checkpoint = arm.train.export
    result: dict = {"arm": name, "wall_s": {}}
    try:
        if pretrain_mode is not None:
            arm.pretrain.masking = pretrain_mode
            t0 = time.perf_counter()
            _run_stage("pretrain", arm)
            result["wall_s"]["pretrain"] = round(time.perf_counter() - t0, 1)
            arm.train.init_encoder = arm.run.dir / "pretrain" / "mae.pt"
            rows = read_log(arm.run.dir / "pretrain" / "log.csv")
            result["mask_ratio_over_time"] = [
                (int(r["iteration"]), round(float(r["mask_ratio"]), 3)) for r in rows
            ]
        else:
            arm.train.init_encoder = None
        t0 = time.perf_counter()
        _run_stage("train", arm)
        result["wall_s"]["train"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        for stage in CHAIN:
            _run_stage(stage, arm)
        result["wall_s"]["chain"] = round(time.perf_counter() - t0, 1)
        result["scores"] = _best_scores(arm)
    except MarlsegError as e:
        result["stopped"] = e.line()
    return result


def plot_arms(results: list[dict], out: Path, png: Path) -> None:
    """Fine-tuning loss of every arm (and the learned mask ratio of the MARL arm) in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        rows = read_log(out / r["arm"] / "train" / "loss.csv")
        if rows:
            ax.plot(
                [int(x["iteration"]) for x in rows],
                [float(x["loss"]) for x in rows],
                label=r["arm"],
            )
        if "mask_ratio_over_time" in r:
            it, ratio = zip(*r["mask_ratio_over_time"]) if r["mask_ratio_over_time"] else ((), ())
            ax2.plot(it, ratio, label=f"{r['arm']} (pretraining)")
    ax.set(xlabel="fine-tuning iteration", ylabel="loss (balanced BCE)", title="fine-tuning")
    ax2.set(xlabel="pretraining iteration", ylabel="mask ratio", title="mask ratio")
    ax.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="a pretraining config (e.g. configs/pretrain_fib.json)")
    ap.add_argument("--steps", type=int, default=30, help="timed iterations per mode")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--full", action="store_true", help="run the three arms end to end")
    ap.add_argument(
        "--policy",
        type=Path,
        help="a MARL pretraining checkpoint: compare its masks' team reward with random masks "
        "of the same counts",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/pretrain_ablation"))
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        config = load_config(args.config, args.set)
        t = step_time_ratio(config, steps=args.steps)
    except MarlsegError as e:
        print(f"error: {e.line()}", file=sys.stderr)
        return e.exit_code
    n = config.network
    print(
        f"network: patch {n.patch_size}, input {n.input_shape}, hidden {n.hidden_size}, "
        f"{n.num_layers} layers; batch {config.pretrain.batch_size}; {args.steps} steps/mode"
    )
    print(
        f"step time: random {t['random_s'] * 1e3:.1f} ms (ratio {t['random_mask_ratio']:.2f}), "
        f"marl {t['marl_s'] * 1e3:.1f} ms (ratio {t['marl_mask_ratio']:.2f}): "
        f"marl / random = {t['ratio']:.2f}x (goal <= 1.3x)"
    )
    if args.policy is not None:
        pv = policy_vs_random(config, args.policy)
        print(
            f"team reward at the policy's ratio {pv['ratio']:.3f}: policy masks "
            f"{pv['policy']:.4f}, random masks of the same counts {pv['random']:.4f}"
        )
    if not args.full:
        return 0
    results = [
        run_arm("a_scratch", config, args.out, None),
        run_arm("b_random_mae", config, args.out, "random"),
        run_arm("c_marl_mae", config, args.out, "marl"),
    ]
    for r in results:
        if "stopped" in r:
            print(f"{r['arm']}: stopped: {r['stopped']}")
            continue
        s = r.get("scores")
        print(
            f"{r['arm']}: {r['wall_s']} s; "
            + (
                f"VOI {s['voi']:.3f} (split {s['voi_split']:.3f}, merge {s['voi_merge']:.3f}) "
                f"at {s['threshold']}, ARAND {s['arand']:.3f}"
                if s
                else "no scores"
            )
        )
        if "mask_ratio_over_time" in r:
            print(f"  mask ratio over time: {r['mask_ratio_over_time']}")
    (args.out).mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps({"step_time": t, "arms": results}, indent=2))
    plot_arms(results, args.out, args.out / "ablation.png")
    print(f"figures in {args.out / 'ablation.json'} and {args.out / 'ablation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
