"""Pretraining ablation: does a MARL-masked MAE help a network segment a volume it never saw?

``python benchmarks/pretrain_ablation.py configs/ablation_medulla.json [--seeds 0 1 2]
[--out runs/pretrain_ablation] [--quick] [--table]``

The setting is domain shift with few labels: pretraining sees only unlabelled raw of the target
acquisition (``pretrain.raw``: the medulla crop), fine-tuning sees only another volume's labels
(``train.raw``/``train.labels``: fib_train), and the annotated crop of the target
(``train.validation``: medulla_val) is split along z into

* a **selection part** (z < 24 voxels): every run's checkpoint (best validation VOI during
  fine-tuning) and segmentation threshold are chosen here, and
* a **report part** (z >= 26): scored once, at the threshold chosen on the selection part.

Arms (the same pretraining budget for the three pretrained ones, ``pretrain.iterations`` x
``pretrain.batch_size``; the same fine-tuning budget for all four):

* ``scratch``: the UNETR from random initialisation;
* ``random_mae``: MAE with a fixed random mask ratio (``pretrain.mask_ratio``), MSE + HOG;
* ``marl_mae``: MAE with MARL-chosen masks, MSE + HOG;
* ``marl_mae_mse``: MAE with MARL-chosen masks, voxel MSE only (``hog_weight = 0``).

Each arm runs with every seed (pretraining, fine-tuning, augmentation and masks all follow it)
in two regimes: ``full`` (``train.iterations``) and ``scarce`` (a quarter of the fine-tuning
iterations, validation four times as often, where pretraining has most to give). Also timed:
one MARL pretraining iteration over one random-mask iteration (same network, same batches).

Writes ``ablation.json`` and ``ablation.png`` under ``--out``; with ``--publish`` (the default
without ``--quick``) also ``docs/figures/pretrain_ablation.{json,png}`` and the table between
the markers in ``docs/pretraining.md``, generated from that JSON (``tests/test_benchmarks.py``
checks that they agree). Every run keeps its results in its own directory, so an interrupted
ablation resumes where it stopped. ``--table`` only regenerates the docs' table from the JSON;
``--timing`` only times the steps.

``--quick``: a smoke version for tests (tiny network, a few iterations, small crops of the two
parts, two seeds); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from marlseg.config import Config, ValidationConfig, load_config
from marlseg.errors import ConfigError, MarlsegError
from marlseg.pretrain import Pretrainer, batches, read_log

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "pretraining.md"
PUBLISHED = ROOT / "docs" / "figures" / "pretrain_ablation.json"
BEGIN, END = "<!-- pretrain_ablation:begin -->", "<!-- pretrain_ablation:end -->"

ARMS: dict[str, dict[str, Any] | None] = {
    "scratch": None,
    "random_mae": {"masking": "random"},
    "marl_mae": {"masking": "marl"},
    "marl_mae_mse": {"masking": "marl", "hog_weight": 0.0},
}
"""Arm -> pretraining settings (``None``: no pretraining)."""
REGIMES = {"full": 1, "scarce": 4}
"""Regime -> divisor of the fine-tuning iterations."""
SELECT_END_Z, REPORT_BEGIN_Z = 24, 26
"""The split of the validation crop along z, voxels from its begin: selection z < 24, report
z >= 26 (two sections left out so the parts share no object boundary)."""
QUICK = [
    "network.patch_size=[4,8,8]",
    "network.input_shape=[8,16,16]",
    "network.hidden_size=24",
    "network.mlp_dim=32",
    "network.num_layers=2",
    "network.num_heads=2",
    "network.feature_size=4",
    "pretrain.iterations=4",
    "pretrain.batch_size=2",
    "pretrain.decoder_dim=16",
    "pretrain.decoder_layers=1",
    "pretrain.decoder_heads=2",
    "pretrain.target_sigma=[1,1,1]",
    "pretrain.target_pool=[2,2,2]",
    "pretrain.log_every=2",
    "pretrain.checkpoint_every=4",
    "pretrain.snapshot_every=4",
    "train.iterations=4",
    "train.log_every=2",
    "train.checkpoint_every=4",
    "train.snapshot_every=4",
    "train.validate_every=4",
    "train.validation.thresholds=[0.3,0.6]",
]
"""``--set`` overrides of ``--quick`` (tiny network, a few iterations)."""
QUICK_CROP = (8, 32, 32)
"""``--quick``: voxels of each part (z, y, x)."""


# --- the split ---


def split(validation: ValidationConfig | None, quick: bool = False) -> dict[str, ValidationConfig]:
    """The selection and report parts of the validation crop (see the module docstring)."""
    from marlseg.volumes import open_volume

    if validation is None:
        raise ConfigError("train.validation", "the ablation needs the target's annotated crop")
    labels = open_volume(validation.labels, field="train.validation.labels")
    vs = [int(v) for v in labels.voxel_size]
    begin = [int(b) for b in labels.roi.begin]
    shape = [int(s) // v for s, v in zip(labels.roi.shape, vs)]
    if shape[0] <= REPORT_BEGIN_Z:
        raise ConfigError(
            "train.validation.labels",
            f"{shape[0]} sections: the split needs more than {REPORT_BEGIN_Z}",
        )
    yx = list(QUICK_CROP[1:]) if quick else shape[1:]
    sel_z = QUICK_CROP[0] if quick else SELECT_END_Z
    rep_z = QUICK_CROP[0] if quick else shape[0] - REPORT_BEGIN_Z

    def part(z0: int, nz: int) -> ValidationConfig:
        offset = [begin[0] + z0 * vs[0], begin[1], begin[2]]
        size = [nz * vs[0], yx[0] * vs[1], yx[1] * vs[2]]
        return validation.model_copy(update={"offset": offset, "shape": size})

    return {"selection": part(0, sel_z), "report": part(REPORT_BEGIN_Z, rep_z)}


# --- runs ---


def _stage(name: str, config: Config) -> Any:
    from marlseg.stages import get_stage

    stage = get_stage(name)(config)
    stage.check()
    return stage.run()


def _with(config: Config, run_dir: Path, **sections: dict[str, Any]) -> Config:
    data = config.model_dump(mode="json")
    data["run"]["dir"] = str(run_dir)
    for section, values in sections.items():
        data[section].update(values)
    return Config.model_validate(data)


def pretrain_arm(config: Config, arm: str, seed: int, out: Path) -> Path | None:
    """Pretrain ``arm`` with ``seed`` (resumes; a finished run is reused); the MAE checkpoint."""
    settings = ARMS[arm]
    if settings is None:
        return None
    c = _with(config, out / "pretrain" / arm / f"seed{seed}", pretrain={**settings, "seed": seed})
    _stage("pretrain", c)
    return c.run.dir / "pretrain" / "mae.pt"


def finetune_and_score(
    config: Config,
    parts: dict[str, ValidationConfig],
    arm: str,
    seed: int,
    regime: str,
    init_encoder: Path | None,
    out: Path,
) -> dict[str, Any]:
    """Fine-tune, choose checkpoint and threshold on the selection part, score the report
    part at that threshold. The result is kept in the run's ``result.json`` (a rerun reuses
    it)."""
    from marlseg.validation import score_checkpoint

    run_dir = out / regime / arm / f"seed{seed}"
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    tc = config.train
    div = REGIMES[regime]
    c = _with(
        config,
        run_dir,
        train={
            "iterations": max(1, tc.iterations // div),
            "validate_every": max(1, tc.validate_every // div),
            "checkpoint_every": max(1, tc.checkpoint_every // div),
            "seed": seed,
            "init_encoder": str(init_encoder) if init_encoder else None,
            "validation": parts["selection"].model_dump(mode="json"),
            "export": str(run_dir / "unetr.pt"),
        },
    )
    t0 = time.perf_counter()
    summary = _stage("train", c)
    wall = time.perf_counter() - t0
    best = torch.load(run_dir / "train" / "best.pt", map_location="cpu", weights_only=True)
    chosen = best["validation"]
    report = parts["report"].model_copy(update={"thresholds": [chosen["threshold"]]})
    (row,) = score_checkpoint(run_dir / "unetr.pt", report)
    result = {
        "arm": arm,
        "seed": seed,
        "regime": regime,
        "iterations": c.train.iterations,
        "checkpoint_iteration": int(best["iteration"]),
        "threshold": chosen["threshold"],
        "selection": {k: chosen[k] for k in ("voi", "voi_split", "voi_merge", "arand")},
        "report": {k: row[k] for k in ("voi", "voi_split", "voi_merge", "arand")},
        "finetune_s": round(wall, 1),
        "final_loss": summary.get("loss") if isinstance(summary, dict) else None,
    }
    done.write_text(json.dumps(result, indent=2))
    return result


def step_time_ratio(config: Config, steps: int = 30, warmup: int = 5) -> dict[str, float]:
    """Median seconds per pretraining iteration with ``marl`` and ``random`` masking (same
    network, same batches drawn up front, interleaved step by step) and their ratio."""
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
    for i, x in enumerate(xs):
        for mode, t in trainers.items():
            t0 = time.perf_counter()
            t.step(x)
            if i >= warmup:
                times[mode].append(time.perf_counter() - t0)
    med = {m: statistics.median(v) for m, v in times.items()}
    return {"random_s": med["random"], "marl_s": med["marl"], "ratio": med["marl"] / med["random"]}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation (over seeds, n - 1) of the report part's VOI and ARAND per
    regime and arm, and how the MARL arm compares with scratch and with random masking."""
    out: dict[str, Any] = {}
    for regime in REGIMES:
        arms: dict[str, Any] = {}
        for arm in ARMS:
            rs = [r for r in runs if r["regime"] == regime and r["arm"] == arm]
            if not rs:
                continue
            stats: dict[str, Any] = {"n": len(rs)}
            for k in ("voi", "arand"):
                v = [r["report"][k] for r in rs]
                stats[f"{k}_mean"] = statistics.mean(v)
                stats[f"{k}_std"] = statistics.stdev(v) if len(v) > 1 else 0.0
            arms[arm] = stats
        verdict = {}
        for other in ("scratch", "random_mae"):
            if "marl_mae" in arms and other in arms:
                a, b = arms["marl_mae"], arms[other]
                gap = b["voi_mean"] - a["voi_mean"]  # > 0: MARL MAE is better (lower VOI)
                spread = max(a["voi_std"], b["voi_std"])
                verdict[f"marl_mae_vs_{other}"] = {
                    "voi_gain": gap,
                    "larger_std": spread,
                    "beyond_one_std": gap > spread,
                }
        out[regime] = {"arms": arms, "verdict": verdict}
    return out


# --- outputs ---


def render_table(result: dict[str, Any] | None) -> str:
    """The docs' table (markdown) from the ablation JSON (``None``: not run yet)."""
    if result is None:
        return (
            "The full ablation has not been run yet (it takes many CPU-hours); no result is "
            "claimed. Run it with\n`python benchmarks/pretrain_ablation.py "
            "configs/ablation_medulla.json`, which writes `docs/figures/pretrain_ablation.json` "
            "and this table.\n"
        )
    b = result["budget"]
    lines = [
        f"Report part of `{result['validation']}` (z >= {REPORT_BEGIN_Z}); checkpoint and "
        f"threshold chosen on z < {SELECT_END_Z}. Seeds {result['seeds']}; pretraining "
        f"{b['pretrain_iterations']} iterations x batch {b['pretrain_batch']}; fine-tuning "
        f"{b['finetune_iterations']['full']} (full) / {b['finetune_iterations']['scarce']} "
        f"(scarce) iterations x batch {b['finetune_batch']}."
        + (" **Quick smoke run: the numbers mean nothing.**" if result.get("quick") else ""),
        "",
        "| regime | arm | VOI (mean +- std) | ARAND (mean +- std) | seeds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for regime, s in result["summary"].items():
        for arm, a in s["arms"].items():
            lines.append(
                f"| {regime} | {arm} | {a['voi_mean']:.3f} +- {a['voi_std']:.3f} | "
                f"{a['arand_mean']:.3f} +- {a['arand_std']:.3f} | {a['n']} |"
            )
    lines.append("")
    for regime, s in result["summary"].items():
        for name, v in s["verdict"].items():
            lines.append(
                f"- {regime}, {name.replace('_vs_', ' vs ')}: VOI gain {v['voi_gain']:+.3f}, "
                f"larger std {v['larger_std']:.3f}: "
                + ("beyond one std" if v["beyond_one_std"] else "within one std")
            )
    t = result["step_time"]
    lines.append(
        f"- MARL / random pretraining step: {t['ratio']:.2f}x ({t['marl_s'] * 1e3:.0f} against "
        f"{t['random_s'] * 1e3:.0f} ms)"
    )
    return "\n".join(lines) + "\n"


def write_docs_table(doc: Path, result: dict[str, Any] | None) -> None:
    """Replace the text between the ablation markers of ``doc`` with :func:`render_table`."""
    text = doc.read_text()
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ConfigError(str(doc), f"no {BEGIN} ... {END} section")
    doc.write_text(f"{head}{BEGIN}\n{render_table(result)}{END}{tail}")


def plot(result: dict[str, Any], png: Path) -> None:
    """Report-part VOI and ARAND per arm and regime: every seed a dot, mean +- std a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(REGIMES), figsize=(5 * len(REGIMES), 7), squeeze=False)
    arms = list(ARMS)
    for j, regime in enumerate(REGIMES):
        for i, key in enumerate(("voi", "arand")):
            ax = axes[i, j]
            stats = result["summary"].get(regime, {}).get("arms", {})
            for x, arm in enumerate(arms):
                if arm not in stats:
                    continue
                ys = [
                    r["report"][key]
                    for r in result["runs"]
                    if r["regime"] == regime and r["arm"] == arm
                ]
                ax.scatter([x] * len(ys), ys, color="k", s=12, zorder=3)
                ax.errorbar(
                    x, stats[arm][f"{key}_mean"], yerr=stats[arm][f"{key}_std"], fmt="o", capsize=6
                )
            ax.set_xticks(range(len(arms)), arms, rotation=15)
            ax.set_title(f"{regime}: {key.upper()} on the report part (lower is better)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)


def run_ablation(
    config: Config, seeds: list[int], out: Path, quick: bool, steps: int, log=print
) -> dict[str, Any]:
    """Every arm x seed x regime (resumable), the step-time ratio and the summary."""
    parts = split(config.train.validation, quick)
    t = step_time_ratio(config, steps=steps, warmup=1 if quick else 5)
    log(f"MARL / random step: {t['ratio']:.2f}x")
    runs, curves = [], {}
    for seed in seeds:
        for arm in ARMS:
            mae = pretrain_arm(config, arm, seed, out)
            if mae is not None:
                rows = read_log(mae.parent / "log.csv")
                curves[f"{arm}/seed{seed}"] = [
                    [
                        int(r["iteration"]),
                        round(float(r["mse"]), 4),
                        round(float(r["mask_ratio"]), 3),
                    ]
                    for r in rows
                ]
            for regime in REGIMES:
                r = finetune_and_score(config, parts, arm, seed, regime, mae, out)
                log(
                    f"{regime} {arm} seed {seed}: report VOI {r['report']['voi']:.3f} ARAND "
                    f"{r['report']['arand']:.3f} (threshold {r['threshold']}, checkpoint "
                    f"{r['checkpoint_iteration']})"
                )
                runs.append(r)
    tc, p = config.train, config.pretrain
    return {
        "quick": quick,
        "seeds": seeds,
        "validation": str(config.train.validation.labels.path),
        "parts": {
            k: v.model_dump(mode="json", include={"offset", "shape"}) for k, v in parts.items()
        },
        "budget": {
            "pretrain_iterations": p.iterations,
            "pretrain_batch": p.batch_size,
            "finetune_iterations": {k: max(1, tc.iterations // d) for k, d in REGIMES.items()},
            "finetune_batch": tc.batch_size,
        },
        "step_time": t,
        "runs": runs,
        "pretrain_curves": curves,
        "summary": summarise(runs),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="e.g. configs/ablation_medulla.json")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (quick: 0 1)")
    ap.add_argument("--out", type=Path, default=Path("runs/pretrain_ablation"))
    ap.add_argument("--quick", action="store_true", help="smoke version (tests)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per masking mode")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument(
        "--publish",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write docs/figures/pretrain_ablation.{json,png} and the docs' table "
        "(default: on, off with --quick)",
    )
    ap.add_argument("--table", action="store_true", help="only regenerate the docs' table")
    ap.add_argument(
        "--timing", action="store_true", help="only time MARL against random-mask steps"
    )
    args = ap.parse_args(argv)
    if args.table:
        result = json.loads(PUBLISHED.read_text()) if PUBLISHED.is_file() else None
        write_docs_table(DOC, result)
        print(render_table(result), end="")
        return 0
    torch.set_num_threads(args.threads)
    seeds = args.seeds if args.seeds is not None else ([0, 1] if args.quick else [0, 1, 2])
    steps = args.steps if args.steps is not None else (3 if args.quick else 30)
    publish = args.publish if args.publish is not None else not args.quick
    try:
        config = load_config(args.config, (QUICK if args.quick else []) + args.set)
        if args.timing:
            t = step_time_ratio(config, steps=steps, warmup=1 if args.quick else 5)
            print(
                f"MARL / random pretraining step: {t['ratio']:.2f}x ({t['marl_s'] * 1e3:.0f} "
                f"against {t['random_s'] * 1e3:.0f} ms, median of {steps})"
            )
            return 0
        result = run_ablation(config, seeds, args.out, args.quick, steps)
    except MarlsegError as e:
        print(f"error: {e.line()}", file=sys.stderr)
        return e.exit_code
    result["command"] = " ".join(
        ["python benchmarks/pretrain_ablation.py", *(argv or sys.argv[1:])]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "ablation.png")
    if publish:
        PUBLISHED.write_text(json.dumps(result, indent=2))
        plot(result, PUBLISHED.with_suffix(".png"))
        write_docs_table(DOC, result)
    print(render_table(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
