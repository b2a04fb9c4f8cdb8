"""`python workflows/07_learn_edge_weights.py config.json`: stage `edge_rl` (see README)."""

import sys

from marlseg.cli import main

if __name__ == "__main__":
    sys.exit(main("edge_rl", prog="07_learn_edge_weights.py"))
