"""Worker entry point: ``python -m marlseg.worker STAGE CONFIG``.

Every launcher (local, Slurm, LSF) runs this. It rebuilds the stage from the config the
scheduler saved, calls ``init_worker`` once (load the model, connect to the database), then
processes blocks until daisy has none left. ``DAISY_CONTEXT`` in the environment says where
the scheduler is.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from pathlib import Path

import daisy

from marlseg.config import load_config
from marlseg.stages import get_stage

MAX_CONSECUTIVE_FAILURES = 3

DRAINED_ENV = "MARLSEG_DRAINED_FILE"
"""Set by the cluster launchers: the file a worker touches when it finds no block left."""

DRAIN_GRACE_S = 1.5
"""How long a cluster worker that found no block left keeps its job after marking the run
drained: long enough for the other launchers (polling every 0.5 s) to cancel their jobs that
still wait in the queue before this job's resources are freed and given to one of them."""

MEMORY_ENV = "MARLSEG_WORKER_MEM_MB"
"""Set by the local launcher from ``workers.mem_mb``: the worker caps its own address space."""


def limit_memory(mem_mb: int) -> None:
    """Cap this process's address space at ``mem_mb`` MB (``ulimit -v``): an allocation beyond
    it raises ``MemoryError`` in the block that made it, which fails that block (and is
    retried) instead of taking the machine's memory from the other workers."""
    import resource

    limit = int(mem_mb) * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m marlseg.worker STAGE CONFIG", file=sys.stderr)
        return 2
    name, config_path = argv
    if os.environ.get(MEMORY_ENV):
        limit_memory(int(os.environ[MEMORY_ENV]))
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
    mark_drained(os.environ.get(DRAINED_ENV))
    return 0


def mark_drained(path: str | None) -> None:
    """Tell the other launchers of this run that no block is left (see :data:`DRAIN_GRACE_S`)."""
    if not path:
        return
    with contextlib.suppress(OSError):
        Path(path).touch()
        time.sleep(DRAIN_GRACE_S)


if __name__ == "__main__":
    sys.exit(main())
