"""`python workflows/08_weak_labels.py config.json`: stage `weak_labels` (see README)."""

import sys

from marlseg.cli import main

if __name__ == "__main__":
    sys.exit(main("weak_labels", prog="08_weak_labels.py"))
