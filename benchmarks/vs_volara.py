"""marlseg 02-05 against volara on the same affinities and the same number of workers.

fib_train's boundary map and labels are mirror-tiled (``benchmarks/postprocess.py``'s tiling,
imported) to ``--size``^3 voxels and turned into nearest-neighbour affinities
(``aff_d(x) = 1 - max(b(x), b(x + d))``, :func:`marlseg.affinities.boundary_to_affinities`),
stored once as a float32 zarr both tools read. Then, with ``--workers`` local workers each:

* volara (in its own venv, ``benchmarks/.volara-venv``, made by this script on first use:
  ``torch==2.13.0`` first — the local CPU wheel — then ``volara``): ``ExtractFrags`` (mutex
  watershed per block), ``AffAgglom`` (mean affinity per edge), ``GraphMWS`` (LUT) and
  ``Relabel``;
* marlseg 02 fragments, 03 agglomerate, 04 segments, 05 extract, with the default
  ``fragments.method`` (waterz-style seeded watershed + hist_quant_75) and again with
  ``fragments.method=mutex`` (the same algorithm family as volara).

Reported per tool: wall time of the four stages, voxels per second, peak RSS (largest worker
process; for volara ``ru_maxrss`` of its children, for marlseg psutil sampling), VOI and ARAND
against the tiled labels (ignore label 0, :func:`marlseg.metrics.evaluate`), and the ratios;
plus an in-memory waterz pass over the whole volume (the VOI reference of issue 11's goal:
marlseg >= 5x volara's throughput at VOI <= in-memory waterz + 0.10).

    python benchmarks/vs_volara.py                  # 256^3 (install ~5 min the first time)
    python benchmarks/vs_volara.py --size 64        # a quick look

Figures are printed and saved as ``<out>/vs_volara_<size>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.postprocess import measure_stage, tile_volume  # noqa: E402

VENV = ROOT / "benchmarks" / ".volara-venv"
VOXEL = 10

VOLARA_DRIVER = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    from volara.blockwise import AffAgglom, ExtractFrags, GraphMWS, Relabel
    from volara.datasets import Affs, Labels
    from volara.dbs import SQLite
    from volara.lut import LUT

    store, out, block, context, workers = sys.argv[1:6]
    out = Path(out)
    block, context, workers = int(block), int(context), int(workers)
    nbhd = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    affs = Affs(store=f"{store}/affs", neighborhood=nbhd)
    frags = Labels(store=out / "volara.zarr" / "frags")
    seg = Labels(store=out / "volara.zarr" / "seg")
    db = SQLite(path=out / "volara.sqlite", edge_attrs={"mean_aff": "float"})
    lut = LUT(path=out / "volara_lut.npz")
    bs = [block] * 3
    ctx = [context] * 3
    tasks = [
        ("extract_frags", ExtractFrags(db=db, affs_data=affs, frags_data=frags,
            block_size=bs, context=ctx, bias=[-0.5, -0.5, -0.5], num_workers=workers)),
        ("aff_agglom", AffAgglom(db=db, affs_data=affs, frags_data=frags, block_size=bs,
            context=ctx, scores={"mean_aff": nbhd}, num_workers=workers)),
        ("graph_mws", GraphMWS(db=db, lut=lut, weights={"mean_aff": (1.0, -0.5)},
            roi=[[0, 0, 0], [s * 10 for s in affs.array("r").shape[1:]]])),
        ("relabel", Relabel(frags_data=frags, seg_data=seg, lut=lut, block_size=bs,
            num_workers=workers)),
    ]
    rows = []
    for name, task in tasks:
        t = time.perf_counter()
        task.run_blockwise(multiprocessing=True)
        rows.append({"stage": name, "wall_s": round(time.perf_counter() - t, 2),
            "children_maxrss_mb": round(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)})
        print(json.dumps(rows[-1]), flush=True)
    (out / "volara_times.json").write_text(json.dumps(rows))
    import numpy as np  # volara writes zarr 3; the caller's zarr 2 reads .npy
    np.save(out / "volara_seg.npy", seg.array("r")[:])
    """
)


def ensure_venv() -> Path:
    py = VENV / "bin" / "python"
    probe = [str(py), "-c", "import volara, daisy"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    print(f"setting up volara in {VENV} (about 5 minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # first: the local CPU wheel
    subprocess.run([*pip, "volara"], check=True)
    return py


def make_affinities(work: Path, size: int) -> Path:
    """Tiled boundary + labels, then float32 affinities (3, z, y, x) in ``work/input.zarr``."""
    from marlseg.affinities import boundary_to_affinities

    vol = work / "input.zarr"
    if (vol / "affs" / ".zarray").exists():
        return vol
    shape = (size, size, size)
    tile_volume(vol, shape)
    root = zarr.open_group(str(vol), mode="a")
    boundary = root["boundary"][:]
    affs = boundary_to_affinities(boundary)
    ds = root.create_dataset(
        "affs", data=affs, chunks=(3, 64, 64, 64), dtype=np.float32, overwrite=True
    )
    ds.attrs.update(
        {
            "voxel_size": [VOXEL] * 3,
            "resolution": [VOXEL] * 3,
            "offset": [0, 0, 0],
            "axis_names": ["c^", "z", "y", "x"],
            "units": ["nm"] * 3,
        }
    )
    for name in ("boundary", "gt"):
        root[name].attrs.update({"axis_names": ["z", "y", "x"], "units": ["nm"] * 3})
    return vol


def scores_of(seg: np.ndarray, gt: np.ndarray) -> dict:
    from marlseg.metrics import evaluate

    s = evaluate(seg.astype(np.uint64), gt.astype(np.uint64), ignore_label=0)
    return {k: round(float(v), 4) for k, v in s.items()}


def run_volara(py: Path, vol: Path, work: Path, args) -> dict:
    out = work / "volara"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    driver = out / "driver.py"
    driver.write_text(VOLARA_DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t = time.perf_counter()
    proc = subprocess.run(
        [str(py), str(driver), str(vol), str(out), str(args.block * VOXEL),
         str(args.context * VOXEL), str(args.workers)],
        cwd=out, env=env, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1], "wall_total_s": wall}
    rows = json.loads((out / "volara_times.json").read_text())
    seg = np.load(out / "volara_seg.npy")
    return {
        "stages": rows,
        "wall_s": round(sum(r["wall_s"] for r in rows), 2),
        "peak_rss_mb": max(r["children_maxrss_mb"] for r in rows),
        "segmentation": seg,
    }


def run_marlseg(vol: Path, work: Path, method: str, threshold: float, args) -> dict:
    from marlseg.config import load_config

    run_dir = work / f"marlseg_{method}"
    shutil.rmtree(run_dir, ignore_errors=True)
    bs, ctx = args.block * VOXEL, args.context * VOXEL
    config = load_config(
        None,
        [
            f"run.dir={run_dir}",
            f"db.name=vs_volara_{method}_{args.size}",
            f"workers.num_workers={args.workers}",
            f'fragments.affs={{"path": "{vol}", "dataset": "affs"}}',
            f'gt={{"path": "{vol}", "dataset": "gt"}}',
            f"fragments.block_shape=[{bs}, {bs}, {bs}]",
            f"fragments.context=[{ctx}, {ctx}, {ctx}]",
            f"agglomerate.context=[{ctx}, {ctx}, {ctx}]",
            f"fragments.method={method}",
            f"segments.thresholds=[{threshold}]",
            f"extract.threshold={threshold}",
        ],
    )
    rows = []
    for name in ("fragments", "agglomerate", "segments", "extract"):
        wall, rss = measure_stage(name, config)
        peak = max([*rss.peaks.values(), rss.own_peak])
        rows.append({"stage": name, "wall_s": round(wall, 2), "peak_rss_mb": round(peak / 2**20)})
        print(json.dumps({"marlseg": method, **rows[-1]}), flush=True)
    seg_ref = config.segmentation_ds(threshold)
    seg = zarr.open(str(seg_ref.path), mode="r")[seg_ref.dataset][:]
    shutil.rmtree(run_dir / "db", ignore_errors=True) if not args.keep else None
    return {
        "stages": rows,
        "wall_s": round(sum(r["wall_s"] for r in rows), 2),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
        "segmentation": seg,
    }


def waterz_in_memory(vol: Path, threshold: float) -> tuple[np.ndarray, float]:
    import waterz

    affs = zarr.open(str(vol), mode="r")["affs"][:]
    t = time.perf_counter()
    seg = next(iter(waterz.agglomerate(affs, thresholds=[threshold])))
    return seg.copy(), time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="voxels per side (default 256)")
    p.add_argument("--block", type=int, default=64, help="block side, voxels")
    p.add_argument("--context", type=int, default=8, help="context, voxels")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threshold", type=float, default=0.5, help="marlseg/waterz threshold")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    p.add_argument("--skip-volara", action="store_true")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(args.out) / f"vs_volara_{args.size}"
    work.mkdir(parents=True, exist_ok=True)
    py = None if args.skip_volara else ensure_venv()
    vol = make_affinities(work, args.size)
    gt = zarr.open(str(vol), mode="r")["gt"][:]
    voxels = args.size**3

    results: dict[str, dict] = {}
    seg, wall = waterz_in_memory(vol, args.threshold)
    results["waterz in memory"] = {"wall_s": round(wall, 2), **scores_of(seg, gt)}
    for method in ("watershed", "mutex"):
        r = run_marlseg(vol, work, method, args.threshold, args)
        r.update(scores_of(r.pop("segmentation"), gt))
        results[f"marlseg {method}"] = r
    if py is not None:
        r = run_volara(py, vol, work, args)
        if "segmentation" in r:
            r.update(scores_of(r.pop("segmentation"), gt))
        results["volara"] = r

    print(f"\n{args.size}^3 voxels, {args.workers} workers")
    print(f"{'':>18} {'wall s':>8} {'Mvox/s':>8} {'RSS MB':>7} {'VOI':>7} {'ARAND':>7}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:>18} failed: {r['error']}")
            continue
        r["voxels_per_s"] = round(voxels / r["wall_s"]) if r["wall_s"] else None
        voi = r.get("voi", r.get("voi_split", 0) + r.get("voi_merge", 0))
        r["voi"] = round(voi, 4)
        print(
            f"{name:>18} {r['wall_s']:>8.1f} {r['voxels_per_s'] / 1e6:>8.3f} "
            f"{r.get('peak_rss_mb', '-'):>7} {r['voi']:>7.3f} {r.get('arand', 0):>7.3f}"
        )
    vol_r = results.get("volara", {})
    if "wall_s" in vol_r and "error" not in vol_r:
        ref_voi = results["waterz in memory"]["voi"]
        for name in ("marlseg watershed", "marlseg mutex"):
            r = results[name]
            r["speedup_vs_volara"] = round(vol_r["wall_s"] / r["wall_s"], 2)
            r["rss_ratio_vs_volara"] = round(r["peak_rss_mb"] / max(vol_r["peak_rss_mb"], 1), 2)
            fast = r["speedup_vs_volara"] >= 5
            good = r["voi"] <= ref_voi + 0.10
            print(
                f"{name}: {r['speedup_vs_volara']}x volara's throughput (goal >= 5x: "
                f"{'met' if fast else 'NOT met'}), VOI {r['voi']:.3f} vs waterz {ref_voi:.3f} "
                f"+ 0.10 ({'met' if good else 'NOT met'}), RSS ratio {r['rss_ratio_vs_volara']}"
            )
    out = Path(args.out) / f"vs_volara_{args.size}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"figures in {out}")


if __name__ == "__main__":
    main()
