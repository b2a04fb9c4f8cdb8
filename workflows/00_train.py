"""`python workflows/00_train.py config.json`: stage `train` (see README)."""

import sys

from marlseg.cli import main

if __name__ == "__main__":
    sys.exit(main("train", prog="00_train.py"))
