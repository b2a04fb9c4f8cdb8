"""Worker entry point: ``python -m marlseg.worker STAGE CONFIG``.

Every launcher (local, Slurm, LSF) runs this. It rebuilds the stage from the config the
scheduler saved, calls ``init_worker`` once (load the model, connect to the database), then
processes blocks until daisy has none left. ``DAISY_CONTEXT`` in the environment says where
the scheduler is.
"""

from __future__ import annotations

import sys

import daisy

from marlseg.config import load_config
from marlseg.stages import get_stage


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m marlseg.worker STAGE CONFIG", file=sys.stderr)
        return 2
    name, config_path = argv
    stage = get_stage(name)(load_config(config_path))
    stage.init_worker()
    client = daisy.Client()
    n = 0
    while True:
        with client.acquire_block() as block:
            if block is None:
                break
            stage.process_block(block)
            n += 1
    print(f"{name} worker: processed {n} blocks", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
