"""`python workflows/03_agglomerate.py config.json`: stage `agglomerate` (see README)."""

import sys

from marlseg.cli import main

if __name__ == "__main__":
    sys.exit(main("agglomerate", prog="03_agglomerate.py"))
