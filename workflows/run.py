"""`python workflows/run.py config.json [--from STAGE] [--to STAGE]`: the whole chain (see README)."""

import sys

from marlseg.cli import main

if __name__ == "__main__":
    sys.exit(main("run", prog="run.py"))
