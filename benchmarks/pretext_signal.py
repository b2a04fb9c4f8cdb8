"""Does the MAE's pretext task carry signal? The first iterations of a pretraining config.

``python benchmarks/pretext_signal.py CONFIG.json [--iterations 400] [--set K=V ...]
[--json OUT.json]``

Runs the first ``--iterations`` iterations of ``CONFIG``'s pretraining *with the config's own
schedule* (warm-up and cosine decay over ``pretrain.iterations``, so the numbers are those of
the first iterations of the real run, not of a shortened one), in memory, on the CPU, one
thread, batches made in this process. Prints, per ``pretrain.log_every`` window, the masked-patch
voxel loss relative to the patch-mean predictor (``mse``, as in ``log.csv``: 1.0 = nothing
learned), the HOG loss, the mask ratio and policy entropy, and whether the collapse guard fired.
``docs/pretraining.md`` quotes these lines.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from marlseg.config import Config, load_config
from marlseg.errors import MarlsegError
from marlseg.pretrain import Pretrainer, batches


def first_iterations(config: Config, iterations: int) -> dict:
    """Log rows (means per ``log_every`` window) of the first ``iterations`` iterations."""
    p = config.pretrain
    trainer = Pretrainer(config, "cpu")
    stream = batches(config, 0)
    rows, window = [], []
    t0 = time.perf_counter()
    for _ in range(iterations):
        window.append(trainer.step(torch.from_numpy(next(stream)))["row"])
        if trainer.iteration % p.log_every == 0 or trainer.iteration == iterations:
            row = {k: float(np.mean([r[k] for r in window if k in r])) for k in window[-1]}
            row["iteration"] = trainer.iteration
            if trainer.marl:
                trainer.guard.update(row["mask_ratio"], row.get("entropy", math.log(2)))
            row["collapsed"] = int(trainer.guard.collapsed)
            rows.append(row)
            window = []
            print(
                f"{trainer.iteration:5d}  mse {row['mse']:.3f}  hog {row['hog']:.3f}  "
                f"ratio {row['mask_ratio']:.3f}"
                + (f"  entropy {row['entropy']:.3f}" if "entropy" in row else "")
                + f"  collapsed {row['collapsed']}  {row['step_s']:.2f} s/step",
                flush=True,
            )
    return {
        "rows": rows,
        "best_mse": min(r["mse"] for r in rows),
        "last_mse": rows[-1]["mse"],
        "collapse_warnings": list(trainer.guard.history),
        "wall_s": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--json", type=Path, help="write the rows and the summary here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        config = load_config(args.config, [*args.set, "pretrain.precache_workers=0"])
        result = first_iterations(config, args.iterations)
    except MarlsegError as e:
        print(f"error: {e.line()}", file=sys.stderr)
        return e.exit_code
    print(
        f"mse: last window {result['last_mse']:.3f}, best window {result['best_mse']:.3f}; "
        f"collapse warnings: {result['collapse_warnings'] or 'none'}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"sets": args.set, **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
