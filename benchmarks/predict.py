"""Prediction and training-pipeline throughput against the bare model.

Prediction: three figures on the same device, threads, window batch and block shape —

1. the bare model: ``model(x)`` on exactly the windows the blocks need (same count, same
   batches of ``--batch-size``), from random in-memory input — the compute floor of this
   tiling. What the tiling itself costs is reported apart: ``overlap_factor`` (input voxels
   per output voxel kept, i.e. the margin) and ``tiling_efficiency`` (volume voxels per core
   voxel computed: windows sticking out of the volume);
2. the stage's per-block work in this process (read raw, mirror, normalise, forward, crop,
   write uint8 zarr), block after block;
3. the whole stage through the blockwise runner (daisy scheduler, one worker process started
   for it, block tracking), as its run summary reports it, worker start-up included.

The goal is (2) and (3) >= 85% of (1). On a machine shared with other jobs wall times swing;
CPU seconds (``cpu_s``, ``of_bare_cpu``: this process, plus for (3) the scheduler and every
worker process, start-up included) are the steadier comparison. Training: batches per second of the affinity pipeline
(gunpowder, augmentations on, ``--precache`` workers) against training steps per second of the
model (forward, backward, Adam) at the same batch size; the pipeline must not starve the model
(ratio >= 1 with pre-caching).

    python benchmarks/predict.py                      # shipped checkpoint, fib25_tiny, CPU
    python benchmarks/predict.py --device cuda --batch-size 16 --raw data/fib25_tiny.h5
    python benchmarks/predict.py --tile 2             # the raw mirror-tiled 2x per axis

Figures are printed and saved as ``benchmarks/out/predict.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from funlib.geometry import Coordinate, Roi  # noqa: E402

from marlseg.config import Config, DatasetRef  # noqa: E402
from marlseg.inference import load_model, predict_windows, select_device, window_grid  # noqa: E402
from marlseg.stages.predict import PredictStage  # noqa: E402
from marlseg.volumes import open_volume, prepare_volume, write  # noqa: E402


def tiled_raw(src: DatasetRef, tile: int, out: Path) -> DatasetRef:
    """``src`` mirror-tiled ``tile`` times per axis into a zarr (a bigger volume, real data)."""
    raw = open_volume(src)
    data = np.asarray(raw._source_data[:])
    if tile > 1:
        data = np.pad(data, [(0, s * (tile - 1)) for s in data.shape], mode="symmetric")
    ref = DatasetRef(path=out / "raw.zarr", dataset="volumes/raw")
    if ref.path.exists():
        shutil.rmtree(ref.path)
    vs = raw.voxel_size
    roi = Roi((0, 0, 0), Coordinate(data.shape) * vs)
    write(prepare_volume(ref, roi, vs, np.uint8, Coordinate(64, 64, 64) * vs), roi, data)
    return ref


def block_rois(stage: PredictStage) -> list[Roi]:
    """The stage's blocks, clipped to the volume, as the runner hands them out."""
    total, block, _ = stage.geometry()
    counts = [-(-int(t) // int(b)) for t, b in zip(total.shape, block)]
    return [
        Roi(total.begin + Coordinate(k) * block, block).intersect(total)
        for k in np.ndindex(*counts)
    ]


def bench_bare(stage: PredictStage, model, device, batch_size: int) -> dict:
    """The model alone on exactly the windows the blocks need, batched as the stage batches
    them (random in-memory input: no reading, normalising, cropping or writing)."""
    import torch

    input_shape = list(model.encoder.img_size)
    core = stage.core_voxels()
    vs = stage.voxel_size()
    raw_begin = stage.geometry()[0].begin
    per_block = []
    for roi in block_rois(stage):
        _, counts = window_grid((roi.begin - raw_begin) / vs, roi.shape / vs, core)
        per_block.append(int(np.prod(counts)))
    rng = np.random.default_rng(0)
    windows = rng.uniform(-1, 1, (max(per_block), 1, *input_shape)).astype(np.float32)
    predict_windows(model, windows[:batch_size], device, batch_size)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for n in per_block:
        predict_windows(model, windows[:n], device, batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    voxels = int(np.prod(stage.geometry()[0].shape / vs))
    computed = sum(per_block) * int(np.prod(core))
    return {
        "windows": sum(per_block),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "voxels_per_s": round(voxels / wall, 1),
        "windows_per_s": round(sum(per_block) / wall, 2),
        "tiling_efficiency": round(voxels / computed, 3),
    }


def bench_in_process(config: Config) -> dict:
    stage = PredictStage(config)
    stage.check()
    stage.prepare()
    stage.init_worker()
    rois = block_rois(stage)
    stage.predict_roi(rois[0])  # warm-up (first-call allocations)
    t0, c0 = time.perf_counter(), time.process_time()
    for roi in rois:
        stage.predict_roi(roi)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    voxels = int(np.prod(stage.geometry()[0].shape / stage.voxel_size()))
    return {
        "blocks": len(rois),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "voxels_per_s": round(voxels / wall, 1),
    }


def bench_runner(config: Config) -> dict:
    stage = PredictStage(config)
    stage.check()
    c0 = time.process_time()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = stage.run(restart=True)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # scheduler + worker processes (start-up included), all CPU the stage cost
    cpu = (time.process_time() - c0) + (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    # the summary counts every block as a whole block; edge blocks clipped to the volume are
    # smaller, so count the volume's voxels instead
    total, _, _ = stage.geometry()
    voxels = int(np.prod(total.shape / stage.voxel_size()))
    return {
        "blocks": summary.blocks_done,
        "wall_s": summary.wall_s,
        "cpu_s": round(cpu, 2),
        "voxels_per_s": round(voxels / summary.wall_s, 1),
        "summary_voxels_per_s": summary.voxels_per_s,
    }


def bench_training(train_config: Path, precache: list[int], steps: int, threads: int) -> dict:
    import torch

    from marlseg.config import load_config
    from marlseg.gp_pipelines.recipes import affinity_batches
    from marlseg.networks.unetr import build_unetr
    from marlseg.train import affinity_loss

    cfg = load_config(train_config)
    tc = cfg.train
    shape = list(cfg.network.input_shape)
    out: dict = {"batch_size": tc.batch_size, "input_shape": shape}

    model = build_unetr(cfg.network, len(tc.neighborhood))
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    it = affinity_batches(tc.raw, tc.labels, shape, shape, tc.neighborhood, tc.batch_size, True, 0)
    b = next(it)
    it.close()
    x, y, w = (torch.from_numpy(b[k]) for k in ("raw", "affs", "weights"))
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        loss = affinity_loss(model.logits(x), y, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out["model_steps_per_s"] = round(steps / (time.perf_counter() - t0), 3)

    for workers in precache:
        it = affinity_batches(
            tc.raw, tc.labels, shape, shape, tc.neighborhood, tc.batch_size, True, 0, workers
        )
        next(it)  # pipeline set-up (and, with pre-caching, worker start)
        time.sleep(2.0 if workers else 0.0)  # let the cache fill as it would during a step
        n = max(10, 3 * steps)
        t0 = time.perf_counter()
        for _ in range(n):
            next(it)
        rate = n / (time.perf_counter() - t0)
        it.close()
        out[f"pipeline_batches_per_s_precache_{workers}"] = round(rate, 2)
        out[f"pipeline_over_model_precache_{workers}"] = round(rate / out["model_steps_per_s"], 2)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped one")
    p.add_argument("--raw", type=Path, default=ROOT / "data" / "fib25_tiny.h5")
    p.add_argument("--dataset", default="volumes/raw")
    p.add_argument("--tile", type=int, default=1, help="mirror-tile the raw N times per axis")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (= worker cpus)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    p.add_argument("--block-shape", type=int, nargs=3, default=None, help="nm")
    p.add_argument("--train-config", type=Path, default=ROOT / "configs" / "train_fib.json")
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--precache", type=int, nargs="*", default=[0, 1])
    p.add_argument("--skip-runner", action="store_true")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "predict_run"
    if (work / "run").exists():
        shutil.rmtree(work / "run")  # a fresh output each time (block shapes may differ)
    raw = tiled_raw(DatasetRef(path=args.raw, dataset=args.dataset), args.tile, work)
    predict = {
        "checkpoint": None if args.checkpoint is None else str(args.checkpoint),
        "device": args.device,
        "batch_size": args.batch_size,
        "workers": {"num_workers": 1, "cpus": args.threads},
    }
    if args.block_shape:
        predict["block_shape"] = args.block_shape
    config = Config.model_validate(
        {"run": {"dir": str(work / "run")}, "raw": raw.model_dump(mode="json"), "predict": predict}
    )
    stage = PredictStage(config)
    stage.check()
    device = select_device(args.device)
    model, _ = load_model(stage._checkpoint()["path"], device)
    input_shape = list(model.encoder.img_size)
    core = stage.core_voxels()
    _, block, _ = stage.geometry()
    results: dict = {
        "device": str(device),
        "threads": args.threads,
        "raw_shape": list(open_volume(raw).shape),
        "network_input": input_shape,
        "margin": stage.margin_voxels(),
        "core": core,
        "block_shape_nm": list(block),
        "batch_size": args.batch_size,
        "overlap_factor": round(float(np.prod(input_shape) / np.prod(core)), 3),
    }
    results["bare_model"] = bench_bare(stage, model, device, args.batch_size)
    bare = results["bare_model"]["voxels_per_s"]
    print(json.dumps(results, indent=2), flush=True)
    results["in_process"] = bench_in_process(config)
    results["in_process"]["of_bare"] = round(results["in_process"]["voxels_per_s"] / bare, 3)
    results["in_process"]["of_bare_cpu"] = round(
        results["bare_model"]["cpu_s"] / results["in_process"]["cpu_s"], 3
    )
    print("in-process blocks:", results["in_process"], flush=True)
    if not args.skip_runner:
        results["runner"] = bench_runner(config)
        results["runner"]["of_bare"] = round(results["runner"]["voxels_per_s"] / bare, 3)
        results["runner"]["of_bare_cpu"] = round(
            results["bare_model"]["cpu_s"] / results["runner"]["cpu_s"], 3
        )
        print("blockwise runner:", results["runner"], flush=True)
    if not args.skip_training:
        results["training"] = bench_training(
            args.train_config, args.precache, args.train_steps, args.threads
        )
        print("training:", results["training"], flush=True)
    (args.out / "predict.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
