"""`python workflows/05_extract_segmentation.py config.json`: stage `extract` (see README)."""

import sys

from marlseg.cli import main

if __name__ == "__main__":
    sys.exit(main("extract", prog="05_extract_segmentation.py"))
