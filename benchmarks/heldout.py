"""Held-out segmentation quality of affinity networks: choose on one part, report on another.

The protocol (docs/network.md): a user's annotated crop of the target acquisition is split
along z (``python -m marlseg.splits``) into a *selection* part and a *report* part with a gap
between them. For every arm (a trained network), the whole blockwise chain 01-06 runs on each
part with the config's post-processing; the merge threshold is chosen on the selection part
only, and the report part is scored at that threshold. The best threshold of the report
part's own grid is recorded too (that is what an acceptance check "at the best threshold of
the default grid" reads), labelled as such. Nothing here trains; checkpoints are chosen by
their training runs' validation on the selection part.

    python benchmarks/heldout.py configs/demo.json \
        --select data/medulla_select.h5 --report data/medulla_report.h5 \
        --arm baseline=OLD.pt --arm context=runs/train_medulla/train/export.pt ... \
        --out docs/heldout.json --png docs/figures/heldout.png

Writes the JSON (per arm: the selection scores, the chosen threshold, the report scores at it
and at the report's best threshold, prediction throughput and the margin overlap factor) and
a figure; ``python benchmarks/heldout.py --table docs/heldout.json`` prints the docs table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from marlseg.config import Config, load_config
from marlseg.errors import MarlsegError

TABLE_HEADER = (
    "| arm | how scored | threshold (chosen on selection) | VOI split | VOI merge | VOI "
    "| ARAND | report's best threshold | VOI there | ARAND there |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def overlap_factor(input_shape: list[int], margin: list[int]) -> float:
    """How many times each voxel is predicted: windows of ``input_shape`` whose outputs are
    cropped by ``margin`` on every side."""
    return math.prod(i / (i - 2 * m) for i, m in zip(input_shape, margin))


def part_config(base: Config, volume: Path, run_dir: Path, db_name: str, ckpt: Path) -> Config:
    data = base.model_dump(mode="json")
    data["run"]["dir"] = str(run_dir)
    data["db"]["name"] = db_name
    data["raw"] = {"path": str(volume), "dataset": "volumes/raw"}
    data["gt"] = {"path": str(volume), "dataset": "volumes/labels/neuron_ids"}
    data["predict"]["checkpoint"] = str(ckpt)
    return Config.model_validate(data)


def run_chain(config: Config) -> dict:
    """01-06 on ``config``; returns the per-threshold scores and stage wall times."""
    from marlseg.chain import ChainStage
    from marlseg.stages import get_stage

    chain = ChainStage(config)
    chain.check()
    walls = {}
    with chain.shared_services():
        for name in chain.stages():
            stage = get_stage(name)(config)
            stage.check()
            t0 = time.perf_counter()
            stage.run()
            walls[name] = round(time.perf_counter() - t0, 2)
    scores = json.loads((config.run.dir / "scores.json").read_text())
    rows = [
        {
            "threshold": float(s["threshold"]),
            "voi_split": float(s["voi_split"]),
            "voi_merge": float(s["voi_merge"]),
            "voi": float(s["voi_split"] + s["voi_merge"]),
            "arand": float(s["arand"]),
        }
        for s in scores
    ]
    return {"per_threshold": rows, "wall_s": walls}


def at_threshold(rows: list[dict], t: float) -> dict:
    return min(rows, key=lambda r: abs(r["threshold"] - t))


GRID = [round(0.02 * k, 2) for k in range(1, 16)] + [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
"""Merge thresholds of the in-memory chain: finer where merge scores concentrate."""


def score_in_memory(ckpt: Path, volume: Path, merge_function: str) -> dict:
    """The in-memory chain training validates with (prediction with 01's windows, waterz's
    own watershed and agglomeration) over a whole part."""
    from marlseg.config import DatasetRef, ValidationConfig
    from marlseg.validation import score_checkpoint

    vc = ValidationConfig(
        raw=DatasetRef(path=volume, dataset="volumes/raw"),
        labels=DatasetRef(path=volume, dataset="volumes/labels/neuron_ids"),
        thresholds=GRID,
        merge_function=merge_function,
    )
    t0 = time.perf_counter()
    rows = score_checkpoint(ckpt, vc)
    return {"per_threshold": rows, "wall_s": {"in_memory": round(time.perf_counter() - t0, 2)}}


def run_arm(
    name: str, ckpt: Path, base: Config, select: Path, report: Path, out: Path, chain: bool
) -> dict:
    from marlseg.files import file_digest
    from marlseg.inference import read_unetr_checkpoint
    from marlseg.stages.predict import PredictStage
    from marlseg.volumes import open_volume

    ck = read_unetr_checkpoint(ckpt, "--arm")
    rep_cfg = part_config(base, report, out / name / "report", f"ho_{name}_r", ckpt)
    rep_raw = open_volume(rep_cfg.raw, field="raw")
    stage = PredictStage(rep_cfg)  # the margin 01 uses, from the config or the default
    margin = stage.margin_voxels()
    result: dict = {
        "arm": name,
        "mode": "blockwise chain 01-06" if chain else "in-memory chain",
        "checkpoint_sha256": file_digest(ckpt),
        "network": ck["network"],
        "lsds": bool(ck.get("lsds", False)),
        "iteration": ck.get("iteration"),
        "margin_voxels": margin,
        "overlap_factor": round(overlap_factor(list(stage.network().input_shape), margin), 3),
    }
    if chain:
        sel = run_chain(part_config(base, select, out / name / "select", f"ho_{name}_s", ckpt))
        rep = run_chain(rep_cfg)
        vox = math.prod(int(s) for s in rep_raw.roi.shape / rep_raw.voxel_size)
        result["predict_mvoxel_per_s_per_worker"] = round(
            vox / 1e6 / rep["wall_s"]["predict"] / base.workers.num_workers, 4
        )
    else:
        mf = base.agglomerate.merge_function
        sel = score_in_memory(ckpt, select, mf)
        rep = score_in_memory(ckpt, report, mf)
    chosen = min(sel["per_threshold"], key=lambda r: r["voi"])
    result.update(
        {
            "selection": sel,
            "chosen_threshold": chosen["threshold"],
            "report": rep,
            "report_at_chosen": at_threshold(rep["per_threshold"], chosen["threshold"]),
            "report_best": min(rep["per_threshold"], key=lambda r: r["voi"]),
        }
    )
    return result


def table(results: dict) -> str:
    lines = [TABLE_HEADER]
    for r in results["arms"]:
        c, b = r["report_at_chosen"], r["report_best"]
        lines.append(
            f"| {r['arm']} | {r['mode']} | {r['chosen_threshold']:g} | {c['voi_split']:.3f} | "
            f"{c['voi_merge']:.3f} | {c['voi']:.3f} | {c['arand']:.3f} | {b['threshold']:g} | "
            f"{b['voi']:.3f} | {b['arand']:.3f} |"
        )
    return "\n".join(lines)


BEGIN = "<!-- generated: python benchmarks/heldout.py --write-docs docs/heldout.json -->"
END = "<!-- end generated -->"
DOCS = ("docs/network.md", "checkpoints/README.md")


DEMO_BEGIN = "<!-- generated: demo scores, python benchmarks/heldout.py --write-docs -->"
DEMO_THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def demo_table(results: dict) -> str:
    """The blockwise arm's report-part scores (what ``make demo`` prints) at a few
    thresholds and at the threshold chosen on the selection part."""
    arm = next(r for r in results["arms"] if r["mode"].startswith("blockwise"))
    keep = set(DEMO_THRESHOLDS) | {arm["chosen_threshold"]}
    lines = [
        "```",
        "  threshold  voi_split  voi_merge      voi    arand",
    ]
    for r in arm["report"]["per_threshold"]:
        if any(abs(r["threshold"] - t) < 1e-9 for t in keep):
            mark = (
                "  <- chosen on the selection part"
                if r["threshold"] == arm["chosen_threshold"]
                else ""
            )
            lines.append(
                f"  {r['threshold']:9.3f}  {r['voi_split']:9.4f}  {r['voi_merge']:9.4f}  "
                f"{r['voi']:7.4f}  {r['arand']:7.4f}{mark}"
            )
    lines.append("```")
    return "\n".join(lines)


def _replace(text: str, begin: str, body: str) -> str:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{begin}\n{body}\n{END}{tail}"


def write_docs(results: dict, root: Path) -> None:
    """Put :func:`table` between the markers of every file in :data:`DOCS`, and
    :func:`demo_table` into the README."""
    for rel in DOCS:
        path = root / rel
        path.write_text(_replace(path.read_text(), BEGIN, table(results)))
    readme = root / "README.md"
    readme.write_text(_replace(readme.read_text(), DEMO_BEGIN, demo_table(results)))


def plot(results: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for r in results["arms"]:
        for ax, part in zip(axes, ("selection", "report")):
            rows = r[part]["per_threshold"]
            ax.plot([x["threshold"] for x in rows], [x["voi"] for x in rows], "o-", label=r["arm"])
    for ax, part in zip(axes, ("selection part (chooses)", "report part (reported)")):
        ax.set_xlabel("merge threshold")
        ax.set_ylabel("VOI (split + merge)")
        ax.set_title(part)
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("config", type=Path, nargs="?")
    p.add_argument("--select", type=Path)
    p.add_argument("--report", type=Path)
    p.add_argument("--arm", action="append", default=[], help="NAME=CHECKPOINT (in-memory)")
    p.add_argument(
        "--chain-arm", action="append", default=[], help="NAME=CHECKPOINT (blockwise chain)"
    )
    p.add_argument("--append", action="store_true", help="add the arms to an existing --out")
    p.add_argument("--work", type=Path, default=Path("runs/bench_heldout"))
    p.add_argument("--out", type=Path, default=Path("docs/heldout.json"))
    p.add_argument("--png", type=Path, default=Path("docs/figures/heldout.png"))
    p.add_argument("--table", type=Path, help="print the docs table of this JSON and exit")
    p.add_argument("--write-docs", type=Path, help="write this JSON's table into the docs")
    a = p.parse_args(argv)
    if a.table:
        print(table(json.loads(a.table.read_text())))
        return 0
    if a.write_docs:
        write_docs(json.loads(a.write_docs.read_text()), Path(__file__).parents[1])
        return 0
    try:
        base = load_config(a.config)
        results = {
            "protocol": "threshold chosen on the selection part; scored on the report part",
            "config": str(a.config),
            "select": str(a.select),
            "report": str(a.report),
            "arms": [],
        }
        if a.append and a.out.is_file():
            results = json.loads(a.out.read_text())
        arms = [(s, False) for s in a.arm] + [(s, True) for s in a.chain_arm]
        for spec, chain in arms:
            name, _, ckpt = spec.partition("=")
            print(f"=== arm {name}: {ckpt}", flush=True)
            results["arms"] = [r for r in results["arms"] if r["arm"] != name]
            results["arms"].append(
                run_arm(name, Path(ckpt), base, a.select, a.report, a.work, chain)
            )
    except MarlsegError as e:
        print(f"error: {e.line()}", file=sys.stderr)
        return e.exit_code
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, a.png)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
