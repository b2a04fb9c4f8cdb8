"""`python workflows/02_extract_fragments.py config.json`: stage `fragments` (see README)."""

import sys

from marlseg.cli import main

if __name__ == "__main__":
    sys.exit(main("fragments", prog="02_extract_fragments.py"))
