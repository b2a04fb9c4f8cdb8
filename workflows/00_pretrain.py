"""`python workflows/00_pretrain.py config.json`: stage `pretrain` (see README)."""

import sys

from marlseg.cli import main

if __name__ == "__main__":
    sys.exit(main("pretrain", prog="00_pretrain.py"))
