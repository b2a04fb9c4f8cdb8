"""`python workflows/06_evaluate.py config.json`: stage `evaluate` (see README)."""

import sys

from marlseg.cli import main

if __name__ == "__main__":
    sys.exit(main("evaluate", prog="06_evaluate.py"))
