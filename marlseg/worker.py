"""Worker entry point: ``python -m marlseg.worker STAGE CONFIG``.

Every launcher (local, Slurm, LSF) runs this. It rebuilds the stage from the config the
scheduler saved, calls ``init_worker`` once (load the model, connect to the database), then
processes blocks until daisy has none left. ``DAISY_CONTEXT`` in the environment says where
the scheduler is.
"""

from __future__ import annotations

import sys
import traceback

import daisy

from marlseg.config import load_config
from marlseg.stages import get_stage

MAX_CONSECUTIVE_FAILURES = 3


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m marlseg.worker STAGE CONFIG", file=sys.stderr)
        return 2
    name, config_path = argv
    stage = get_stage(name)(load_config(config_path))
    stage.init_worker()
    client = daisy.Client()
    done = failed = consecutive = 0
    while True:
        try:
            with client.acquire_block() as block:
                if block is None:
                    break
                stage.process_block(block)
                done += 1
                consecutive = 0
        except Exception:
            # daisy has marked this block failed (it is retried, up to workers.max_retries);
            # the worker stays up for the healthy blocks. A worker whose every block fails
            # (lost database, broken node) exits so that daisy starts a fresh one.
            traceback.print_exc()
            failed += 1
            consecutive += 1
            if consecutive >= MAX_CONSECUTIVE_FAILURES:
                print(f"{name} worker: {consecutive} blocks failed in a row, exiting", flush=True)
                return 1
    print(f"{name} worker: processed {done} blocks, {failed} failed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
