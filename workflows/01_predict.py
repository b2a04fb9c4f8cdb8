"""`python workflows/01_predict.py config.json`: stage `predict` (see README)."""

import sys

from marlseg.cli import main

if __name__ == "__main__":
    sys.exit(main("predict", prog="01_predict.py"))
