"""Throughput and memory of the post-processing chain (02-06) on a large tiled volume.

fib_train's boundary map (50 x 100 x 200 voxels) and its labels are mirror-tiled into a zarr
of ``--size`` voxels per side (z scaled by each ``--scales`` factor: 2 and 4 give twice and
four times the volume), under ``--out`` (default ``benchmarks/out``). The chain then runs on
it with real workers and MongoDB (embedded under the run directory unless
``MARLSEG_MONGODB_URI`` is set). Per stage it reports wall time, voxels per second (write
voxels / wall time; the runner's figure) and peak RSS per worker, sampled every 0.2 s from the
worker processes (``python -m marlseg.worker``); the whole-volume stage ``segments`` runs in
this process, whose RSS is sampled instead.

Every figure is also given as a ratio to one in-memory waterz pass (its own watershed and
agglomeration, ``hist_quant_75``, one core, no I/O) over the same affinities, measured in the
same run (twice, after the chains): the machine is shared and noisy, the ratio survives it.
``--methods`` runs one chain per ``fragments.method``; with several ``--scales`` the marginal
rate (the slope of wall time against voxels: start-up cancels) is reported too, per core.
Fragment quality: the best VOI over ``segments.thresholds`` of each chain, beside waterz's.

    python benchmarks/postprocess.py                         # 256^3, minutes
    python benchmarks/postprocess.py --size 512 --scales 1 2 4
    python benchmarks/postprocess.py --methods watershed waterz --scales 1 2   # marginal rates

Figures are printed as a table and saved as ``<out>/postprocess_<size>.json`` (and ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from marlseg.config import load_config  # noqa: E402
from marlseg.stages import get_stage  # noqa: E402

DATA = ROOT / "data" / "fib_train.h5"
STAGES = ["fragments", "agglomerate", "segments", "extract", "evaluate"]
THRESHOLDS = [0.3, 0.5, 0.7]


def mirror_index(n_out: int, n_in: int, start: int = 0) -> np.ndarray:
    """Indices ``start .. start + n_out`` folded into ``[0, n_in)`` by mirroring (period 2n)."""
    i = np.arange(start, start + n_out) % (2 * n_in)
    return np.where(i < n_in, i, 2 * n_in - 1 - i)


def tile_volume(out: Path, shape: tuple[int, int, int], chunk: int = 128) -> None:
    """Mirror-tile fib_train's boundary map and labels to ``shape`` (chunk by chunk)."""
    with h5py.File(DATA, "r") as f:
        boundary = f["volumes/predictions/boundary_p1"][:]
        labels = f["volumes/labels/neuron_ids"][:]
        raw = f["volumes/raw"][:]
    root = zarr.open_group(str(out), mode="w")
    attrs = {"voxel_size": [10, 10, 10], "resolution": [10, 10, 10], "offset": [0, 0, 0]}
    comp = zarr.Blosc(cname="zstd", clevel=3, shuffle=zarr.Blosc.BITSHUFFLE)
    b = root.create_dataset(
        "boundary", shape=shape, chunks=(chunk,) * 3, dtype=np.float32, compressor=comp
    )
    g = root.create_dataset(
        "gt", shape=shape, chunks=(chunk,) * 3, dtype=np.uint64, compressor=comp
    )
    r = root.create_dataset(
        "raw", shape=shape, chunks=(chunk,) * 3, dtype=np.uint8, compressor=comp
    )
    b.attrs.update(attrs)
    g.attrs.update(attrs)
    r.attrs.update(attrs)
    for z in range(0, shape[0], chunk):
        for y in range(0, shape[1], chunk):
            for x in range(0, shape[2], chunk):
                n = [min(chunk, s - o) for s, o in zip(shape, (z, y, x))]
                idx = np.ix_(
                    mirror_index(n[0], boundary.shape[0], z),
                    mirror_index(n[1], boundary.shape[1], y),
                    mirror_index(n[2], boundary.shape[2], x),
                )
                sl = (slice(z, z + n[0]), slice(y, y + n[1]), slice(x, x + n[2]))
                b[sl] = boundary[idx]
                g[sl] = labels[idx]
                r[sl] = raw[idx]


class RssSampler:
    """Peak RSS per worker process (and of this process) while a stage runs."""

    def __init__(self, period: float = 0.2):
        self.period = period
        self.peaks: dict[int, int] = {}
        self.own_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                self.own_peak = max(self.own_peak, me.memory_info().rss)
                for p in me.children(recursive=True):
                    try:
                        if "marlseg.worker" in " ".join(p.cmdline()):
                            rss = p.memory_info().rss
                            self.peaks[p.pid] = max(self.peaks.get(p.pid, 0), rss)
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
            except psutil.Error:
                pass
            self._stop.wait(self.period)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure_stage(name: str, config) -> tuple[float, RssSampler]:
    """Run stage ``name`` (checked first) and return its wall time and the RSS it sampled."""
    stage = get_stage(name)(config)
    stage.check()
    with RssSampler() as rss:
        t = time.perf_counter()
        stage.run()
        wall = time.perf_counter() - t
    return wall, rss


def tiled(out: Path, shape: tuple[int, int, int], retile: bool = False) -> Path:
    """The tiled volume of ``shape`` under ``out`` (made if missing or ``retile``)."""
    work = out / f"pp_{shape[0]}x{shape[1]}x{shape[2]}"
    vol = work / "input.zarr"
    if not (vol / ".zgroup").exists() or not (vol / "raw").exists() or retile:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        t = time.perf_counter()
        tile_volume(vol, shape)
        print(f"tiled {shape} in {time.perf_counter() - t:.1f} s -> {vol}", flush=True)
    return vol


def chain_config(vol: Path, run_dir: Path, shape, args: argparse.Namespace):
    """The chain's config over the tiled volume ``vol`` (``args``: block, context, workers,
    method, and optionally predict, mem_mb and sets: further ``key=value`` overrides)."""
    predict = getattr(args, "predict", False)
    bs = args.block * 10
    ctx = args.context * 10
    # 01 (--predict): the shipped UNETR predicts affinities from the tiled raw and 02 reads
    # them; otherwise 02 reads the tiled boundary map (fib_train's own prediction)
    source = (
        [
            f'raw={{"path": "{vol}", "dataset": "raw"}}',
            "predict.device=cpu",
            "predict.block_shape=[480, 960, 960]",
        ]
        if predict
        else [f'fragments.boundary={{"path": "{vol}", "dataset": "boundary"}}']
    )
    mem = [f"workers.mem_mb={args.mem_mb}"] if getattr(args, "mem_mb", None) else []
    config = load_config(
        None,
        [
            f"run.dir={run_dir}",
            f"db.name=bench_{shape[0]}_{args.method}",
            f"workers.num_workers={args.workers}",
            *source,
            *mem,
            f'gt={{"path": "{vol}", "dataset": "gt"}}',
            f"fragments.block_shape=[{bs}, {bs}, {bs}]",
            f"fragments.context=[{ctx}, {ctx}, {ctx}]",
            f"agglomerate.context=[{ctx}, {ctx}, {ctx}]",
            f"fragments.method={args.method}",
            f"segments.thresholds={THRESHOLDS}",
            "extract.threshold=0.5",
            *(getattr(args, "sets", None) or []),
        ],
    )
    return config


def run(size: int, scale: int, args: argparse.Namespace) -> list[dict]:
    shape = (size * scale, size, size)
    vol = tiled(Path(args.out), shape, args.retile)
    work = vol.parent
    predict = getattr(args, "predict", False)
    run_dir = work / f"run_{args.method}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    config = chain_config(vol, run_dir, shape, args)
    voxels = int(np.prod(shape))
    rows = []
    for name in ["predict", *STAGES] if predict else STAGES:
        wall, rss = measure_stage(name, config)
        peaks = sorted(rss.peaks.values())
        rows.append(
            {
                "shape": list(shape),
                "voxels": voxels,
                "stage": name,
                "wall_s": round(wall, 2),
                "voxels_per_s": round(voxels / wall),
                "workers": len(peaks),
                "peak_rss_mb_max": round(max(peaks) / 2**20) if peaks else None,
                "peak_rss_mb_mean": round(float(np.mean(peaks)) / 2**20) if peaks else None,
                "scheduler_rss_mb": round(rss.own_peak / 2**20),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    scores = json.loads((run_dir / "scores.json").read_text())
    rows[-1]["voi"] = round(min(r["voi_split"] + r["voi_merge"] for r in scores), 4)
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return rows


def save_figures(result: dict, out: Path, extra: str | None = None) -> None:
    """Write ``result`` as JSON to ``out`` (and to ``extra``, e.g. under docs/results)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for path in [out, *([Path(extra)] if extra else [])]:
        path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"figures in {out}" + (f" and {extra}" if extra else ""))


def waterz_reference(vol: Path, threshold: float = 0.5) -> dict:
    """One in-memory waterz pass (its own watershed + agglomeration, ``hist_quant_75`` as the
    chain, to ``threshold``) over the whole tiled volume's affinities, timed on one core, and
    the best VOI of waterz at the chain's thresholds: the yardstick every figure is divided
    by, measured in the same run because the machine is shared."""
    import waterz

    from marlseg.affinities import boundary_to_affinities
    from marlseg.metrics import evaluate
    from marlseg.watershed import MERGE_FUNCTIONS

    root = zarr.open(str(vol), mode="r")
    affs = boundary_to_affinities(root["boundary"][:])
    function = MERGE_FUNCTIONS["hist_quant_75"]
    t = time.perf_counter()
    for _ in waterz.agglomerate(affs, thresholds=[threshold], scoring_function=function):
        pass
    wall = time.perf_counter() - t
    gt = root["gt"][:]
    vois = []
    for seg in waterz.agglomerate(affs, thresholds=THRESHOLDS, scoring_function=function):
        s = evaluate(seg, gt, ignore_label=0)
        vois.append(s["voi_split"] + s["voi_merge"])
    voxels = int(np.prod(affs.shape[1:]))
    return {"wall_s": round(wall, 3), "voxels_per_s": round(voxels / wall), "voi": min(vois)}


def chain_summary(rows: list[dict], workers: int, ref_rate: float) -> dict:
    """Per method and size: the chain's wall time, Mvoxel/s per core and its ratio to the
    in-memory waterz pass; over several sizes also the marginal figures (start-up cancels)."""
    out: dict = {}
    for method in sorted({r["method"] for r in rows}):
        sizes = sorted({r["voxels"] for r in rows if r["method"] == method})
        walls = [
            sum(r["wall_s"] for r in rows if r["method"] == method and r["voxels"] == v)
            for v in sizes
        ]
        per_core = [v / w / workers for v, w in zip(sizes, walls)]
        entry = {
            "voxels": sizes,
            "wall_s": [round(w, 2) for w in walls],
            "voxels_per_s_per_core": [round(x) for x in per_core],
            "ratio_to_waterz": [round(x / ref_rate, 4) for x in per_core],
            "voi": [r["voi"] for r in rows if r["method"] == method and r["stage"] == "evaluate"],
        }
        if len(sizes) >= 2:
            slope = np.polyfit(np.asarray(sizes, float), np.asarray(walls, float), 1)[0]
            marginal = 1 / slope / workers if slope > 0 else None
            entry["marginal_voxels_per_s_per_core"] = round(marginal) if marginal else None
            entry["marginal_ratio_to_waterz"] = round(marginal / ref_rate, 4) if marginal else None
        out[method] = entry
    return out


def markdown(result: dict) -> str:
    """The tables docs/performance.md shows (a test checks them against the committed JSON):
    per stage, wall time and Mvoxel/s per core as a ratio to the waterz pass; per chain the
    totals, the marginal ratio and the VOI beside waterz's."""
    rows = result["rows"]
    scales = sorted({tuple(r["shape"]) for r in rows})
    head = " | ".join(f"{'x'.join(map(str, s))}: wall s, x waterz" for s in scales)
    lines = [f"| method | stage | {head} |", "| --- | --- |" + " --- |" * len(scales)]
    for method, chain in result["chains"].items():
        for stage in STAGES:
            cells = []
            for s in scales:
                (r,) = [
                    x
                    for x in rows
                    if x["method"] == method and x["stage"] == stage and tuple(x["shape"]) == s
                ]
                cells.append(f"{r['wall_s']:.1f}, {r['ratio_to_waterz']:.4f}")
            lines.append(f"| {method} | {stage} | " + " | ".join(cells) + " |")
        cells = [f"**{w:.1f}, {x:.4f}**" for w, x in zip(chain["wall_s"], chain["ratio_to_waterz"])]
        lines.append(f"| {method} | **02-06** | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| method | marginal Mvoxel/s per core | marginal x waterz | best VOI (per size) |",
        "| --- | --- | --- | --- |",
    ]
    ref = result["waterz_in_memory"]
    for method, chain in result["chains"].items():
        m = chain.get("marginal_voxels_per_s_per_core")
        x = chain.get("marginal_ratio_to_waterz")
        lines.append(
            f"| {method} | {'-' if m is None else f'{m / 1e6:.3f}'} | "
            f"{'-' if x is None else f'{x:.4f}'} | {', '.join(f'{v:.3f}' for v in chain['voi'])} |"
        )
    lines.append(
        f"| in-memory waterz pass | {ref['voxels_per_s'] / 1e6:.3f} (one core) | 1 | "
        f"{ref['passes'][0]['voi']:.3f} |"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="voxels per side (default 256)")
    p.add_argument("--scales", type=int, nargs="+", default=[1], help="z multiples, e.g. 1 2 4")
    p.add_argument("--block", type=int, default=128, help="block side, voxels")
    p.add_argument("--context", type=int, default=8, help="context, voxels")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--methods",
        nargs="+",
        choices=["watershed", "mutex", "waterz"],
        default=["watershed", "waterz"],
        help="fragments.method values to run, one chain each (default: watershed waterz)",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    p.add_argument("--json", default=None, help="also write the figures here (e.g. under docs/)")
    p.add_argument("--retile", action="store_true", help="rebuild the tiled input")
    p.add_argument("--keep", action="store_true", help="keep the run directories")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    load = [round(x, 2) for x in os.getloadavg()]
    rows = []
    for method in args.methods:
        args.method = method
        for s in args.scales:
            rows += [{"method": method, **r} for r in run(args.size, s, args)]
    vol = Path(args.out) / f"pp_{args.size}x{args.size}x{args.size}" / "input.zarr"
    if not vol.exists():
        run(args.size, 1, argparse.Namespace(**{**vars(args), "method": args.methods[0]}))
    ref = [waterz_reference(vol) for _ in range(2)]  # after the chains; twice, for the noise
    ref_rate = float(np.mean([r["voxels_per_s"] for r in ref]))
    for r in rows:
        r["voxels_per_s_per_core"] = round(r["voxels_per_s"] / max(r["workers"], 1))
        r["ratio_to_waterz"] = round(r["voxels_per_s_per_core"] / ref_rate, 4)
    passes = ", ".join(f"{r['wall_s']:.2f} s" for r in ref)
    print(
        f"\nin-memory waterz pass ({args.size}^3, one core): {ref_rate / 1e6:.2f} Mvoxel/s "
        f"(two passes: {passes}), best VOI "
        f"{ref[0]['voi']:.3f}; every ratio below is to this rate"
    )
    print(
        f"{'method':>10} {'shape':>14} {'stage':>12} {'wall s':>7} {'Mvox/s/core':>11} "
        f"{'x waterz':>9} {'RSS max MB':>10} {'sched MB':>8}"
    )
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        print(
            f"{r['method']:>10} {shape:>14} {r['stage']:>12} {r['wall_s']:>7.1f} "
            f"{r['voxels_per_s_per_core'] / 1e6:>11.3f} {r['ratio_to_waterz']:>9.4f} "
            f"{r['peak_rss_mb_max'] or '-':>10} {r['scheduler_rss_mb']:>8}"
        )
    chains = chain_summary(rows, args.workers, ref_rate)
    for method, c in chains.items():
        marginal = c.get("marginal_ratio_to_waterz")
        print(
            f"chain 02-06, {method}: {c['wall_s']} s, x waterz {c['ratio_to_waterz']}"
            + (f", marginal x waterz {marginal}" if marginal is not None else "")
            + f", VOI {c['voi']} (waterz {ref[0]['voi']:.3f} + 0.10 allowed)"
        )
    result = {
        "size": args.size,
        "scales": args.scales,
        "block": args.block,
        "workers": args.workers,
        "load_average_at_start": load,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "waterz_in_memory": {"passes": ref, "voxels_per_s": round(ref_rate)},
        "chains": chains,
        "rows": rows,
    }
    print(markdown(result))
    save_figures(result, Path(args.out) / f"postprocess_{args.size}.json", args.json)


if __name__ == "__main__":
    main()
