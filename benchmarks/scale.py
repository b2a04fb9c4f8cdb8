"""Weak scaling of the chain (01-06 or 02-06): time against size, memory per worker.

fib_train's raw, boundary map and labels are mirror-tiled (``benchmarks/postprocess.py``'s
tiling, imported) to ``size x size x size`` voxels times each ``--factors`` multiple along z
(default 1 2 4 8), and the stages run on each with real workers and MongoDB. Per size and
stage it records wall time and the peak RSS of every worker process (psutil, sampled every
0.2 s); then it fits ``time ~ voxels ** k`` over the sizes (least squares in log-log) per
stage and for the chain, and reports how flat peak RSS per worker stays (max over sizes / min
over sizes - 1). Goals (issue 11): k = 1.0 +- 0.1 and peak RSS per worker flat within 10%.
It also fits ``time = start + voxels / rate`` (the fixed cost of a stage, worker start-up and
scheduling, and its marginal throughput): while the fixed cost dominates, ``k`` reads below 1
even for work that grows linearly.

``--predict`` adds 01: the shipped UNETR predicts affinities from the tiled raw on the CPU and
02 reads them (without it, 02 reads the tiled boundary map). ``--mem-mb`` caps every worker's
address space (``workers.mem_mb``; local workers apply it as ``ulimit -v``), so a worker that
needed memory in proportion to the volume would fail its blocks.

    python benchmarks/scale.py                                      # 64^3 x 1 2 4 8: minutes
    python benchmarks/scale.py --size 128 --block 64 --predict --mem-mb 1500
    python benchmarks/scale.py --size 1024 --block 128 --predict --factors 1 2 4
                                    # 1, 2 and 4 GiB of uint8 raw (about 10 hours on 2 cores)

Figures are printed and saved as ``<out>/scale_<size>_<method>[_predict].json``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.postprocess import STAGES, save_figures, waterz_reference  # noqa: E402
from benchmarks.postprocess import run as run_chain  # noqa: E402


def fit_exponent(voxels: list[int], walls: list[float]) -> float | None:
    """``k`` of ``wall = c * voxels ** k`` (least squares on logs)."""
    if len(voxels) < 2:
        return None
    k, _ = np.polyfit(np.log(voxels), np.log(walls), 1)
    return round(float(k), 3)


def fit_affine(voxels: list[int], walls: list[float]) -> tuple[float, float] | None:
    """``(start_s, voxels_per_s)`` of ``wall = start_s + voxels / voxels_per_s``: the fixed
    cost of a stage (worker start-up, scheduling) and its marginal throughput. While the fixed
    cost dominates, ``k`` of the power law reads below 1 even for linear work."""
    if len(voxels) < 2:
        return None
    slope, start = np.polyfit(np.asarray(voxels, float), np.asarray(walls, float), 1)
    return round(float(start), 2), (round(float(1 / slope)) if slope > 0 else None)


def markdown(result: dict) -> str:
    """The table docs/performance.md shows (a test checks it against the committed JSON)."""
    sizes = result["stages"]["chain"]["voxels"]
    lines = [
        "| stage | wall s per size | k | start-up s | marginal Mvoxel/s | peak RSS MB per worker |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for stage, st in result["stages"].items():
        marginal = st["marginal_voxels_per_s"]
        lines.append(
            f"| {stage} | {', '.join(f'{w:.1f}' for w in st['wall_s'])} | {st['exponent']} | "
            f"{st['start_s']} | {'-' if not marginal else f'{marginal / 1e6:.3f}'} | "
            f"{', '.join(str(x) for x in st['peak_rss_mb_per_worker'])} |"
        )
    ref = result["waterz_in_memory"]
    proj = result["projection"]
    lines += [
        "",
        f"Sizes {', '.join(f'{v / 1e6:.1f}' for v in sizes)} Mvoxel; scheduler peak RSS "
        f"{', '.join(str(x) for x in result['scheduler_rss_mb'])} MB; in-memory waterz pass "
        f"{ref['voxels_per_s'] / 1e6:.2f} Mvoxel/s on one core; the chain's marginal rate per "
        f"core is {result['marginal_ratio_to_waterz']} of it"
        + (
            f"; projected wall time for {proj['voxels'] / 1e9:.1f} Gvoxel: {proj['wall_h']} h."
            if proj
            else "."
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="base side, voxels (default 64)")
    p.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--block", type=int, default=32, help="block side, voxels")
    p.add_argument("--context", type=int, default=8, help="context, voxels")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--method", choices=["watershed", "mutex", "waterz"], default="watershed")
    p.add_argument(
        "--project",
        type=float,
        default=4.3e9,
        help="voxels to project the chain's wall time to (default 4.3e9: 4 GiB of uint8)",
    )
    p.add_argument(
        "--predict",
        action="store_true",
        help="also run 01: the shipped UNETR (CPU) predicts from the tiled raw, 02 reads that",
    )
    p.add_argument(
        "--mem-mb",
        type=int,
        default=None,
        help="cap each worker's address space (workers.mem_mb), e.g. 1500",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    p.add_argument("--json", default=None, help="also write the figures here (e.g. under docs/)")
    args = p.parse_args()
    args.retile = False
    args.keep = False
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    rows = [r for f in args.factors for r in run_chain(args.size, f, args)]
    sizes = sorted({r["voxels"] for r in rows})
    result: dict = {"rows": rows, "stages": {}}
    print(
        f"\n{'stage':>12} {'k (time~N^k)':>13} {'start s':>8} {'marginal Mvox/s':>16} "
        f"{'RSS/worker MB per size':>32} {'spread':>7}"
    )
    for stage in [*(["predict"] if args.predict else []), *STAGES, "chain"]:
        if stage == "chain":
            walls = [sum(r["wall_s"] for r in rows if r["voxels"] == v) for v in sizes]
            rss = [
                max((r["peak_rss_mb_max"] or 0) for r in rows if r["voxels"] == v) for v in sizes
            ]
        else:
            sel = {r["voxels"]: r for r in rows if r["stage"] == stage}
            walls = [sel[v]["wall_s"] for v in sizes]
            rss = [sel[v]["peak_rss_mb_max"] or 0 for v in sizes]
        k = fit_exponent(sizes, walls)
        affine = fit_affine(sizes, walls)
        spread = round(max(rss) / min(rss) - 1, 3) if min(rss) > 0 else None
        result["stages"][stage] = {
            "voxels": sizes,
            "wall_s": walls,
            "exponent": k,
            "start_s": affine[0] if affine else None,
            "marginal_voxels_per_s": affine[1] if affine else None,
            "peak_rss_mb_per_worker": rss,
            "rss_spread": spread,
        }
        rss_s = " ".join(f"{x:>6}" for x in rss)
        spread_s = f"{spread:.1%}" if spread is not None else "-"
        start_s = f"{affine[0]:.1f}" if affine else "-"
        marginal = f"{affine[1] / 1e6:.3f}" if affine and affine[1] else "-"
        print(
            f"{stage:>12} {k if k is not None else '-':>13} {start_s:>8} {marginal:>16} "
            f"{rss_s:>32} {spread_s:>7}"
        )
    print("goals: k = 1.0 +- 0.1; RSS spread <= 10% (segments runs in the scheduler: no workers)")
    # the yardstick, in the same run: one in-memory waterz pass over the 1x volume
    vol = Path(args.out) / f"pp_{args.size}x{args.size}x{args.size}" / "input.zarr"
    ref = waterz_reference(vol)
    chain = result["stages"]["chain"]
    marginal = chain["marginal_voxels_per_s"]
    projection = None
    if marginal:
        hours = (chain["start_s"] + args.project / marginal) / 3600
        projection = {"voxels": args.project, "wall_h": round(hours, 2)}
    result.update(
        {
            "method": args.method,
            "workers": args.workers,
            "block": args.block,
            "waterz_in_memory": ref,
            "marginal_ratio_to_waterz": (
                round(marginal / args.workers / ref["voxels_per_s"], 4) if marginal else None
            ),
            "scheduler_rss_mb": [
                max(r["scheduler_rss_mb"] for r in rows if r["voxels"] == v) for v in sizes
            ],
            "projection": projection,
        }
    )
    print(markdown(result))
    tag = "_predict" if args.predict else ""
    save_figures(result, Path(args.out) / f"scale_{args.size}_{args.method}{tag}.json", args.json)


if __name__ == "__main__":
    main()
