"""`python workflows/tune.py config.json`: choose post-processing parameters on the gt crop
(see README)."""

import sys

from marlseg.cli import main

if __name__ == "__main__":
    sys.exit(main("tune", prog="tune.py"))
