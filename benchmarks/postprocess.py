"""Throughput and memory of the post-processing chain (02-06) on a large tiled volume.

fib_train's boundary map (50 x 100 x 200 voxels) and its labels are mirror-tiled into a zarr
of ``--size`` voxels per side (z scaled by each ``--scales`` factor: 2 and 4 give twice and
four times the volume), under ``--out`` (default ``benchmarks/out``). The chain then runs on
it with real workers and MongoDB (embedded under the run directory unless
``MARLSEG_MONGODB_URI`` is set). Per stage it reports wall time, voxels per second (write
voxels / wall time; the runner's figure) and peak RSS per worker, sampled every 0.2 s from the
worker processes (``python -m marlseg.worker``); the whole-volume stage ``segments`` runs in
this process, whose RSS is sampled instead.

    python benchmarks/postprocess.py                         # 256^3, minutes
    python benchmarks/postprocess.py --size 512 --scales 1 2 4
    python benchmarks/postprocess.py --size 512 --method mutex --workers 2

Figures are printed as a table and saved as ``<out>/postprocess_<size>.json``.
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


def run(size: int, scale: int, args: argparse.Namespace) -> list[dict]:
    shape = (size * scale, size, size)
    work = Path(args.out) / f"pp_{shape[0]}x{shape[1]}x{shape[2]}"
    vol = work / "input.zarr"
    predict = getattr(args, "predict", False)
    if not (vol / ".zgroup").exists() or not (vol / "raw").exists() or args.retile:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        t = time.perf_counter()
        tile_volume(vol, shape)
        print(f"tiled {shape} in {time.perf_counter() - t:.1f} s -> {vol}", flush=True)
    run_dir = work / f"run_{args.method}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
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
            "segments.thresholds=[0.3, 0.5, 0.7]",
            "extract.threshold=0.5",
        ],
    )
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
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="voxels per side (default 256)")
    p.add_argument("--scales", type=int, nargs="+", default=[1], help="z multiples, e.g. 1 2 4")
    p.add_argument("--block", type=int, default=128, help="block side, voxels")
    p.add_argument("--context", type=int, default=8, help="context, voxels")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--method", choices=["watershed", "mutex"], default="watershed")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    p.add_argument("--retile", action="store_true", help="rebuild the tiled input")
    p.add_argument("--keep", action="store_true", help="keep the run directories")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = [r for s in args.scales for r in run(args.size, s, args)]
    print(
        f"\n{'shape':>16} {'stage':>12} {'wall s':>8} {'Mvox/s':>8} {'workers':>7} "
        f"{'RSS max MB':>10} {'RSS mean MB':>11} {'sched MB':>8}"
    )
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        print(
            f"{shape:>16} {r['stage']:>12} {r['wall_s']:>8.1f} {r['voxels_per_s'] / 1e6:>8.3f} "
            f"{r['workers']:>7} {r['peak_rss_mb_max'] or '-':>10} {r['peak_rss_mb_mean'] or '-':>11} "
            f"{r['scheduler_rss_mb']:>8}"
        )
    out = Path(args.out) / f"postprocess_{args.size}_{args.method}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"figures in {out}")


if __name__ == "__main__":
    main()
