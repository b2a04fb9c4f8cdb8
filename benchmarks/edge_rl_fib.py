"""Learned edge weights (``07``, stateless actor-critic) against waterz merge scores on fib_train.

Runs the workflow CLIs on ``configs/edge_rl_fib.json`` (fib_train's boundary map and raw,
10 nm voxels, 50 x 100 x 200): ``02`` fragments and ``03`` waterz merge scores, then ``07``
learns ``rl_weight`` from the priors (no ground truth), then ``04``-``06`` twice, once per edge
score (``merge_score``, ``rl_weight``), each over ``segments.thresholds``. It also scores the
partition the actor-critic was trained with (graph mutex watershed, no threshold) for both
edge scores, directly from node labels (fib_train is small enough to relabel whole).

    python benchmarks/edge_rl_fib.py                      # everything, a few minutes
    python benchmarks/edge_rl_fib.py --skip-chain         # reuse 02/03 of an earlier run
    python benchmarks/edge_rl_fib.py --iterations 800 --retrain
    python benchmarks/edge_rl_fib.py --out benchmarks/out/edge_rl_fib_init \
        --set edge_rl.init_from=merge_score           # start the policy at waterz's scores

Prints VOI (split + merge) and ARAND per threshold for each score and the best of each, and
saves everything as ``<out>/edge_rl_fib.json`` (``--out`` default ``benchmarks/out/edge_rl_fib``;
the run itself, with its embedded MongoDB, lives in ``<out>/run``). The ground truth is read
only by ``06`` and by the mutex scoring here, never by ``07``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from marlseg.config import load_config  # noqa: E402

SCORES = ("merge_score", "rl_weight")


def cli(script: str, config: Path, sets: list[str], restart: bool = False) -> float:
    """Run ``workflows/<script>.py`` like a user would; returns its wall time."""
    cmd = [sys.executable, str(ROOT / "workflows" / f"{script}.py"), str(config)]
    for s in sets:
        cmd += ["--set", s]
    if restart:
        cmd.append("--restart")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SystemExit(f"{script} failed (exit {proc.returncode}): " + " | ".join(tail))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("edge_rl", "  iteration"))]
    for ln in lines:
        print(f"    {ln}")
    return wall


def mutex_scores(config_path: Path, sets: list[str]) -> dict[str, dict[str, float]]:
    """VOI/ARAND of the graph mutex watershed partition of each edge score (no threshold)."""
    from marlseg import metrics
    from marlseg.partition import mutex_partition
    from marlseg.rag import graph_service, open_rag
    from marlseg.volumes import open_volume

    cfg = load_config(config_path, sets)
    with graph_service(cfg) as uri:
        rag = open_rag(cfg, uri)
        try:
            ids = rag.read_node_ids()
            batches = list(rag.iter_edges(attrs=list(SCORES)))
        finally:
            rag.close()
    u = np.concatenate([b["u"] for b in batches])
    v = np.concatenate([b["v"] for b in batches])
    edges = np.stack([np.searchsorted(ids, u), np.searchsorted(ids, v)], axis=1)
    frags = np.asarray(open_volume(cfg.fragments_ds)._source_data[:])
    gt = np.asarray(open_volume(cfg.gt)._source_data[:])
    out = {}
    for attr in SCORES:
        w = np.nan_to_num(np.concatenate([b[attr] for b in batches]), nan=1.0)
        labels = mutex_partition(len(ids), edges, w) + 1
        pos = np.clip(np.searchsorted(ids, frags), 0, len(ids) - 1)
        seg = np.where(ids[pos] == frags, labels[pos], 0)
        s = metrics.evaluate(seg, gt, ignore_label=cfg.evaluate.ignore_label)
        out[attr] = {"voi": s["voi_split"] + s["voi_merge"], **s, "segments": int(labels.max())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "edge_rl_fib.json")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "edge_rl_fib")
    parser.add_argument("--iterations", type=int, default=None, help="edge_rl.iterations")
    parser.add_argument("--skip-chain", action="store_true", help="reuse 02/03 of an earlier run")
    parser.add_argument("--retrain", action="store_true", help="07 with --restart")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="extra config overrides for every stage, e.g. --set edge_rl.init_from=merge_score",
    )
    args = parser.parse_args()

    out = args.out.absolute()
    run_dir = out / "run"
    if not args.skip_chain and run_dir.exists():
        shutil.rmtree(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets = [f"run.dir={run_dir}", *args.set]
    if args.iterations is not None:
        sets.append(f"edge_rl.iterations={args.iterations}")
    timings: dict[str, float] = {}

    if not args.skip_chain:
        for script in ("02_extract_fragments", "03_agglomerate"):
            print(f"{script} ...", flush=True)
            timings[script] = cli(script, args.config, sets)
    print("07_learn_edge_weights ...", flush=True)
    timings["07_learn_edge_weights"] = cli(
        "07_learn_edge_weights", args.config, sets, restart=args.retrain or not args.skip_chain
    )
    results: dict[str, list[dict[str, float]]] = {}
    for attr in SCORES:
        s = [*sets, f"segments.edge_score={attr}"]
        for script in ("04_find_segments", "05_extract_segmentation", "06_evaluate"):
            print(f"{script} ({attr}) ...", flush=True)
            timings[f"{script}:{attr}"] = cli(
                script, args.config, s, restart=script != "04_find_segments"
            )
        rows = json.loads((run_dir / "scores.json").read_text())
        (out / f"scores_{attr}.json").write_text(json.dumps(rows, indent=2))
        results[attr] = rows
    mutex = mutex_scores(args.config, sets)
    summary = json.loads((run_dir / "edge_rl" / "summary.json").read_text())

    print(f"\nfib_train: {summary['fragments']} fragments, {summary['edges']} edges")
    print(
        f"07: best reward {summary['best_reward']:.4f} at iteration {summary['best_iteration']}, "
        f"{timings['07_learn_edge_weights']:.0f} s"
    )
    print(f"\n  {'threshold':>9}  " + "  ".join(f"{a + ' voi':>16} {'arand':>7}" for a in SCORES))
    for i, row in enumerate(results[SCORES[0]]):
        cells = []
        for attr in SCORES:
            r = results[attr][i]
            cells.append(f"{r['voi_split'] + r['voi_merge']:>16.4f} {r['arand']:>7.4f}")
        print(f"  {row['threshold']:>9.3f}  " + "  ".join(cells))
    best = {}
    for attr in SCORES:
        b = min(results[attr], key=lambda r: r["voi_split"] + r["voi_merge"])
        best[attr] = {**b, "voi": b["voi_split"] + b["voi_merge"]}
        print(
            f"  best {attr:<12} VOI {best[attr]['voi']:.4f} (split {b['voi_split']:.4f}, merge "
            f"{b['voi_merge']:.4f}) ARAND {b['arand']:.4f} at threshold {b['threshold']}"
        )
    for attr in SCORES:
        m = mutex[attr]
        print(
            f"  mutex {attr:<11} VOI {m['voi']:.4f} (split {m['voi_split']:.4f}, merge "
            f"{m['voi_merge']:.4f}) ARAND {m['arand']:.4f}, {m['segments']} segments"
        )
    report = {
        "config": str(args.config),
        "edge_rl": summary,
        "thresholded": results,
        "best": best,
        "mutex": mutex,
        "timings_s": timings,
    }
    (out / "edge_rl_fib.json").write_text(json.dumps(report, indent=2))
    print(
        f"\nsaved {out / 'edge_rl_fib.json'}; reward curves {run_dir / 'edge_rl' / 'rewards.png'}"
    )


if __name__ == "__main__":
    main()
