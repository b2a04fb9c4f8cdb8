"""`python workflows/view.py config.json [--threshold T] [--port N] [--no-browser]`: the run in neuroglancer (see docs/viewing.md)."""

import sys

from marlseg.cli import main

if __name__ == "__main__":
    sys.exit(main("view", prog="view.py"))
