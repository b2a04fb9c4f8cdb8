"""Peak memory of segment finding (``04_find_segments.py``) against the number of RAG edges.

``04`` is the one stage that sees the whole RAG at once (a segment can span the volume), in
the scheduler. It streams the edges from MongoDB in batches (``segments.BATCH``) into a
union-find per threshold, so its memory should grow with the number of fragments (ids and
parent arrays) and the batch, never with the number of edges. Two series, each point in a
fresh process whose peak RSS (``ru_maxrss``) minus its RSS before the work is reported:

* ``stream``: the union-find alone (``connected_luts``) fed synthetic batches generated on
  the fly (random edges among ``N`` fragments, uniform scores): ``N`` fixed and ``E`` growing,
  then ``E = 5 N`` growing; far beyond what fits a test database, without one;
* ``db``: the real stage over an embedded MongoDB RAG of ``E`` edges and ``E / 5`` nodes
  (written first, in the parent), once per ``--db-batches`` value of ``segments.BATCH``.

    python benchmarks/segments_memory.py                 # minutes
    python benchmarks/segments_memory.py --json docs/results/segments_memory.json

Figures are printed as a table and saved as ``<out>/segments_memory.json`` (and ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.postprocess import save_figures  # noqa: E402

THRESHOLDS = [0.3, 0.5, 0.7]
GEN_BATCH = 1_000_000


def synthetic_batches(n_nodes: int, n_edges: int, batch: int, seed: int = 0):
    """Random ``(u, v, score)`` batches over node ids ``1..n_nodes`` (times 3, so not dense)."""
    rng = np.random.default_rng(seed)
    left = n_edges
    while left > 0:
        k = min(batch, left)
        a = rng.integers(1, n_nodes + 1, size=k, dtype=np.uint64)
        b = rng.integers(1, n_nodes + 1, size=k, dtype=np.uint64)
        b = np.where(a == b, a % np.uint64(n_nodes) + np.uint64(1), b)
        yield np.minimum(a, b) * np.uint64(3), np.maximum(a, b) * np.uint64(3), rng.random(k)
        left -= k


def point_stream(n_nodes: int, n_edges: int) -> dict:
    from marlseg.luts import connected_luts

    nodes = np.arange(1, n_nodes + 1, dtype=np.uint64) * np.uint64(3)
    base = psutil.Process().memory_info().rss
    t = time.perf_counter()
    luts = connected_luts(nodes, synthetic_batches(n_nodes, n_edges, GEN_BATCH), THRESHOLDS)
    wall = time.perf_counter() - t
    segments = {t: int(np.unique(seg).size) for t, (_, seg) in luts.items()}
    return {"base_rss_mb": base / 2**20, "wall_s": wall, "segments": segments}


def point_db(run_dir: str, db_name: str, batch: str) -> dict:
    from marlseg.config import load_config
    from marlseg.stages import segments
    from marlseg.stages.segments import SegmentsStage

    segments.BATCH = int(batch)  # the stage reads its module's BATCH when it runs
    config = load_config(None, [f"run.dir={run_dir}", f"db.name={db_name}"])
    config = config.model_copy(
        update={"segments": config.segments.model_copy(update={"thresholds": THRESHOLDS})}
    )
    base = psutil.Process().memory_info().rss
    t = time.perf_counter()
    SegmentsStage(config).run()
    return {"base_rss_mb": base / 2**20, "wall_s": time.perf_counter() - t}


def populate(uri: str, run_dir: Path, db_name: str, n_nodes: int, n_edges: int) -> float:
    """Write a synthetic RAG into the server at ``uri``; returns the seconds it took."""
    from marlseg.config import load_config
    from marlseg.rag import open_rag

    config = load_config(None, [f"run.dir={run_dir}", f"db.name={db_name}"])
    rag = open_rag(config, uri)
    t = time.perf_counter()
    try:
        rag.clear()
        for lo in range(0, n_nodes, 200_000):
            ids = np.arange(lo + 1, min(lo + 200_000, n_nodes) + 1, dtype=np.uint64) * 3
            rag.write_nodes(ids, np.zeros((ids.size, 3)), np.ones(ids.size, np.int64))
        for u, v, s in synthetic_batches(n_nodes, n_edges, 200_000):
            rag.write_edges(u, v, merge_score=s, agglomerated=np.ones(u.size, bool))
    finally:
        rag.close()
    return time.perf_counter() - t


def measure(args: list[str]) -> dict:
    """Run one point in a fresh process; its growth is its peak RSS minus its base RSS."""
    out = subprocess.run(
        [sys.executable, __file__, "--point", *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["growth_mb"] = round(row["peak_rss_mb"] - row["base_rss_mb"], 1)
    return row


def markdown(result: dict) -> str:
    """The table docs/performance.md shows (a test checks it against the committed JSON)."""
    lines = [
        "| series | fragments | edges | peak growth MB | bytes per edge | bytes per fragment | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        growth = r["growth_mb"] * 2**20
        lines.append(
            f"| {r['series']} | {r['nodes']:,} | {r['edges']:,} | {r['growth_mb']:.1f} | "
            f"{growth / r['edges']:.1f} | {growth / r['nodes']:.1f} | {r['wall_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--point", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--nodes", type=int, default=1_000_000, help="stream series: fixed N")
    p.add_argument("--edges", type=int, nargs="+", default=[1_000_000, 4_000_000, 16_000_000])
    p.add_argument("--db-edges", type=int, nargs="+", default=[200_000, 1_000_000])
    p.add_argument(
        "--db-batches",
        type=int,
        nargs="+",
        default=[1_000_000, 100_000],
        help="segments.BATCH values to measure the db series with (before issue 20: 10^6)",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.point:
        kind, *rest = args.point
        row = point_stream(int(rest[0]), int(rest[1])) if kind == "stream" else point_db(*rest)
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(row))
        return
    rows = []
    series = [("N fixed", args.nodes, e) for e in args.edges]
    series += [("E = 5 N", e // 5, e) for e in args.edges]
    for name, n, e in series:
        r = measure(["stream", str(n), str(e)])
        rows.append({"series": name, "nodes": n, "edges": e, **r})
        print(json.dumps(rows[-1]), flush=True)
    from marlseg.db import EmbeddedServer

    work = Path(args.out) / "segments_memory"
    # one embedded server for the db series; the stage in the child reuses it (run.dir/db)
    with EmbeddedServer(work / "db") as server:
        for e in args.db_edges:
            name = f"seg_mem_{e}"
            write_s = populate(server.uri, work, name, e // 5, e)
            for batch in args.db_batches:
                r = measure(["db", str(work), name, str(batch)])
                rows.append(
                    {
                        "series": f"db, batch {batch}",
                        "nodes": e // 5,
                        "edges": e,
                        "write_s": round(write_s, 1),
                        **r,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    print(
        f"\n{'series':>8} {'nodes':>10} {'edges':>11} {'growth MB':>10} {'B/edge':>7} {'B/node':>7}"
    )
    for r in rows:
        print(
            f"{r['series']:>18} {r['nodes']:>10} {r['edges']:>11} {r['growth_mb']:>10.1f} "
            f"{r['growth_mb'] * 2**20 / r['edges']:>7.1f} "
            f"{r['growth_mb'] * 2**20 / r['nodes']:>7.1f} {r['wall_s']:>7.1f}"
        )
    result = {"thresholds": THRESHOLDS, "generator_batch": GEN_BATCH, "rows": rows}
    print(markdown(result))
    save_figures(result, Path(args.out) / "segments_memory.json", args.json)


if __name__ == "__main__":
    main()
