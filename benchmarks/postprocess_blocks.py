"""What each change of issue 20 bought, per block, before and after, in one process.

One block of fib_train's boundary map mirror-tiled to ``--size``^3 voxels (the read ROI of a
128^3 block with 8 voxels of context) is pushed through the per-block work of every stage,
with the library as it is and as it was at ``--before`` (the modules are loaded from that
git commit, so the old code is measured, not re-typed). Each timing is the best of
``--repeat`` runs; every figure is also given as the time of one in-memory waterz pass over
the same block (its watershed and agglomeration, ``hist_quant_75``, threshold 0.5) divided by
it, measured in the same run: the share of waterz's throughput the step reaches.

    python benchmarks/postprocess_blocks.py --json docs/results/postprocess_blocks.json \\
        --figure docs/figures/postprocess_blocks.png

Figures are printed and saved as ``<out>/postprocess_blocks.json`` (and ``--json``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.postprocess import DATA, mirror_index, save_figures  # noqa: E402
from marlseg import metrics  # noqa: E402
from marlseg import watershed as W  # noqa: E402
from marlseg.affinities import boundary_to_affinities  # noqa: E402
from marlseg.config import load_config  # noqa: E402
from marlseg.luts import apply_lut  # noqa: E402
from marlseg.watershed import compute_fragments  # noqa: E402

BEFORE = "94de7e9"
"""The last commit before issue 20's changes."""


def old_module(commit: str, path: str, name: str) -> types.ModuleType:
    """The module at ``path`` as it was at ``commit``."""
    source = subprocess.run(
        ["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{commit}:{path}", "exec"), module.__dict__)
    return module


def best_of(repeat: int, fn, *args) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t)
    return min(times), out


def markdown(result: dict) -> str:
    """The table docs/performance.md shows (a test checks it against the committed JSON)."""
    lines = [
        "| stage | step | before s | after s | speedup | x waterz before | x waterz after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        cells = [
            r["stage"],
            r["step"],
            "-" if r["before_s"] is None else f"{r['before_s']:.3f}",
            f"{r['after_s']:.3f}",
            "-" if r["speedup"] is None else f"{r['speedup']:.1f}",
            "-" if r["waterz_share_before"] is None else f"{r['waterz_share_before']:.3f}",
            f"{r['waterz_share_after']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Before/after seconds per step, log scale (the figure docs/performance.md shows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["before_s"] is not None]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    ax.barh(y + 0.2, [r["before_s"] for r in rows], 0.4, label=f"before ({result['before']})")
    ax.barh(y - 0.2, [r["after_s"] for r in rows], 0.4, label="after")
    ax.axvline(result["waterz_pass_s"], color="k", ls="--", lw=1, label="in-memory waterz pass")
    ax.set_yticks(y, [f"{r['stage'][:2]} {r['step'].split(' (')[0]}" for r in rows], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per block (best of repeats)")
    ax.invert_yaxis()
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=144, help="read ROI side, voxels")
    p.add_argument("--context", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--before", default=BEFORE)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    p.add_argument("--json", default=None)
    p.add_argument("--figure", default=None, help="also draw the figure here (a .png)")
    p.add_argument("--plot-only", default=None, help="only draw --figure from this JSON")
    args = p.parse_args()
    if args.plot_only:
        plot(json.loads(Path(args.plot_only).read_text()), Path(args.figure))
        return
    import waterz

    old_w = old_module(args.before, "marlseg/watershed.py", "old_watershed")
    old_m = old_module(args.before, "marlseg/metrics.py", "old_metrics")
    old_s = old_module(args.before, "marlseg/stages/segments.py", "old_segments")
    with h5py.File(DATA, "r") as f:
        b = f["volumes/predictions/boundary_p1"][:]
        gt = f["volumes/labels/neuron_ids"][:]
    n, c = args.size, args.context
    idx = np.ix_(*(mirror_index(n, s) for s in b.shape))
    affs = boundary_to_affinities(b[idx])
    inner = (slice(c, n - c),) * 3
    gt_block = gt[idx][inner].astype(np.uint64)
    write_voxels = (n - 2 * c) ** 3
    function = W.MERGE_FUNCTIONS["hist_quant_75"]

    def waterz_pass():
        for _ in waterz.agglomerate(affs, thresholds=[0.5], scoring_function=function):
            pass

    ref_s, _ = best_of(args.repeat, waterz_pass)
    rows: list[dict] = []

    def row(stage: str, step: str, before, after, args_before=(), args_after=None):
        if callable(before):
            tb, _ = best_of(args.repeat, before, *args_before)
        else:  # measured already (or nothing to compare)
            tb = before
        ta, out = best_of(args.repeat, after, *(args_before if args_after is None else args_after))
        rows.append(
            {
                "stage": stage,
                "step": step,
                "before_s": round(tb, 4) if tb is not None else None,
                "after_s": round(ta, 4),
                "speedup": round(tb / ta, 2) if tb else None,
                "waterz_share_before": round(ref_s / tb, 3) if tb else None,
                "waterz_share_after": round(ref_s / ta, 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        return out

    # 02's fragments before issue 20: the default seeded watershed (the only fast option
    # there was); the waterz method is measured against it
    seeded_s, _ = best_of(args.repeat, old_w.seeded_watershed, affs)
    per_method = {}
    for method in ("watershed", "waterz"):
        section = load_config(None, [f"fragments.method={method}"]).fragments
        frags = row(
            "02 fragments",
            f"{method}: fragments of the read ROI (before: seeded watershed)",
            seeded_s,
            compute_fragments,
            (),
            (affs, section),
        )
        crop = np.ascontiguousarray(frags[inner])
        ids = row(
            "02 fragments",
            f"{method}: unique ids across blocks",
            old_w.block_fragment_ids,
            W.block_fragment_ids,
            (crop, 3, write_voxels),
        )
        row(
            "02 fragments",
            f"{method}: node rows (centre, size)",
            old_w.fragment_stats,
            W.fragment_stats,
            (ids, (0, 0, 0), (10, 10, 10)),
        )
        global_ids = W.block_fragment_ids(frags, 3, n**3)
        row(
            "03 agglomerate",
            f"{method}: edges and merge scores",
            old_w.agglomerate_edges,
            W.agglomerate_edges,
            (affs, global_ids, function),
        )
        lut = np.unique(ids)
        row("05 extract", f"{method}: LUT applied", old_s.apply_lut, apply_lut, (ids, lut, lut))
        row(
            "06 evaluate",
            f"{method}: contingency table",
            old_m.contingency,
            metrics.contingency,
            (ids, gt_block, 0),
        )
        per_method[method] = int(np.unique(ids).size)
    result = {
        "block": {"read": [n] * 3, "write": [n - 2 * c] * 3},
        "before": args.before,
        "waterz_pass_s": round(ref_s, 4),
        "waterz_pass_voxels_per_s": round(n**3 / ref_s),
        "fragments_per_block": per_method,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
    }
    print(f"in-memory waterz pass over the block: {ref_s:.3f} s; fragments {per_method}")
    print(markdown(result))
    save_figures(result, Path(args.out) / "postprocess_blocks.json", args.json)
    if args.figure:
        plot(result, Path(args.figure))


if __name__ == "__main__":
    main()
