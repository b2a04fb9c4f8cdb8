"""`python workflows/04_find_segments.py config.json`: stage `segments` (see README)."""

import sys

from marlseg.cli import main

if __name__ == "__main__":
    sys.exit(main("segments", prog="04_find_segments.py"))
