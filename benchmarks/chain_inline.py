"""The chain's marginal rate per core: every stage's block work in one process, on one core.

``benchmarks/postprocess.py`` runs 02-06 as a user does (daisy, worker processes, per-stage
start-up); on a loaded machine its figures are dominated by start-up and by the CPU share the
workers get. Here the same stages run in this process, one after the other, block by block
(``init_worker`` once, then ``process_block`` for every block of the stage's grid; ``04`` and
06's merge of the block tables as the scheduler runs them), with their real zarr reads and
writes and the real (embedded) MongoDB, one server for the whole chain. Each stage's set-up
(check, prepare, ``init_worker``) is timed apart and left out: what is counted is the work
that grows with the volume, i.e. the chain's marginal cost on one core. It is divided by
one in-memory waterz pass over the same affinities, timed in this process before and after.

    python benchmarks/chain_inline.py --size 192 --methods watershed waterz \\
        --json docs/results/chain_inline_192.json

Figures are printed and saved as ``<out>/chain_inline_<size>.json`` (and ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.postprocess import (  # noqa: E402
    STAGES,
    chain_config,
    save_figures,
    tiled,
    waterz_reference,
)
from marlseg.rag import graph_service  # noqa: E402
from marlseg.stages import get_stage  # noqa: E402


def blocks_of(stage):
    """The daisy blocks of ``stage``'s grid: write ROIs cut to the total ROI, read ROIs grown by
    the context (the stages fill what lies outside the data)."""
    import daisy
    from funlib.geometry import Coordinate, Roi

    total, block_shape, context = stage.geometry()
    grid = [-(-int(t) // int(b)) for t, b in zip(total.shape, block_shape)]
    for pos in np.ndindex(*grid):
        write = Roi(total.offset + Coordinate(pos) * block_shape, block_shape).intersect(total)
        read = write.grow(context, context)
        yield daisy.Block(total.grow(context, context), read, write)


def run_stage(config, name: str) -> dict:
    """One stage in this process: its set-up (check, prepare, ``init_worker``), its block work
    (the part that grows with the volume) and, for 06, the merge of the block tables."""
    stage = get_stage(name)(config)
    t = time.perf_counter()
    stage.check()
    if name == "segments":  # the scheduler's whole-volume step: all of it grows with the RAG
        setup = time.perf_counter() - t
        stage.run()
        return {"stage": name, "setup_s": setup, "work_s": time.perf_counter() - t - setup}
    with stage.services():
        stage._fresh = True  # 02: a fresh start clears the RAG
        stage.prepare()
        worker = get_stage(name)(stage.worker_config())
        worker.init_worker()
        setup = time.perf_counter() - t
        for block in blocks_of(stage):
            worker.process_block(block)
        if name == "evaluate":
            stage.merge_and_score()
        work = time.perf_counter() - t - setup
        close = getattr(getattr(worker, "rag", None), "close", None)
        if close:
            close()
    return {"stage": name, "setup_s": setup, "work_s": work}


def markdown(result: dict) -> str:
    """The table docs/performance.md shows (a test checks it against the committed JSON)."""
    ref = result["waterz_in_memory"]["voxels_per_s"]
    methods = list(result["chains"])
    lines = [
        "| stage | " + " | ".join(f"{m}: s, Mvoxel/s, x waterz" for m in methods) + " |",
        "| --- |" + " --- |" * len(methods),
    ]
    voxels = result["voxels"]
    for stage in [*STAGES, "02-06"]:
        cells = []
        for m in methods:
            c = result["chains"][m]
            wall = c["wall_s"] if stage == "02-06" else c["stages"][stage]
            rate = voxels / wall
            cell = f"{wall:.1f}, {rate / 1e6:.2f}, {rate / ref:.3f}"
            cells.append(f"**{cell}**" if stage == "02-06" else cell)
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    best = ", ".join(f"{m} {result['chains'][m]['voi']:.3f}" for m in methods)
    setup = ", ".join(f"{m} {sum(result['chains'][m]['setup_s'].values()):.1f} s" for m in methods)
    lines += [
        "",
        f"{voxels / 1e6:.1f} Mvoxel; in-memory waterz pass {ref / 1e6:.2f} Mvoxel/s (best VOI "
        f"{result['waterz_in_memory']['voi']:.3f}); chain best VOI: {best}; set-up left out: "
        f"{setup}"
        + (f"; overrides: {', '.join(result['overrides'])}." if result.get("overrides") else "."),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=192, help="voxels per side (default 192)")
    p.add_argument("--block", type=int, default=128, help="block side, voxels")
    p.add_argument("--context", type=int, default=8, help="context, voxels")
    p.add_argument(
        "--methods", nargs="+", choices=["watershed", "mutex", "waterz"], default=["waterz"]
    )
    p.add_argument(
        "--set", dest="sets", action="append", default=[], help="config override key=value"
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    args.workers = 1
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    load = [round(x, 2) for x in os.getloadavg()]
    shape = (args.size,) * 3
    vol = tiled(Path(args.out), shape)
    refs = [waterz_reference(vol)]
    chains = {}
    for method in args.methods:
        args.method = method
        run_dir = vol.parent / f"inline_{method}"
        shutil.rmtree(run_dir, ignore_errors=True)
        config = chain_config(vol, run_dir, shape, args)
        # one database server for the whole chain (each stage reuses it): its start is a
        # fixed cost, like the workers'
        with graph_service(config):
            rows = [run_stage(config, name) for name in STAGES]
        scores = json.loads((run_dir / "scores.json").read_text())
        chains[method] = {
            "stages": {r["stage"]: round(r["work_s"], 3) for r in rows},
            "setup_s": {r["stage"]: round(r["setup_s"], 3) for r in rows},
            "wall_s": round(sum(r["work_s"] for r in rows), 3),
            "voi": round(min(r["voi_split"] + r["voi_merge"] for r in scores), 4),
        }
        print(json.dumps({"method": method, **chains[method]}), flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    refs.append(waterz_reference(vol))
    result = {
        "voxels": int(np.prod(shape)),
        "block": args.block,
        "context": args.context,
        "overrides": args.sets,
        "load_average_at_start": load,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "waterz_in_memory": {
            "passes": refs,
            "voxels_per_s": round(float(np.mean([r["voxels_per_s"] for r in refs]))),
            "voi": refs[0]["voi"],
        },
        "chains": chains,
    }
    print(markdown(result))
    save_figures(result, Path(args.out) / f"chain_inline_{args.size}.json", args.json)


if __name__ == "__main__":
    main()
