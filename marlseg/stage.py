"""What a stage is: a named step of the workflow that checks its inputs, then runs.

A stage checks everything it can before writing anything (files exist, datasets exist, block
shapes are whole voxels, the run directory is writable), so bad input costs one line and no
debris. Blockwise stages (:mod:`marlseg.blockwise`) add geometry and a per-block function;
whole-volume stages (segment finding, training) implement :meth:`Stage.run` directly.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import ClassVar

from marlseg.config import Config
from marlseg.errors import ConfigError


class Stage:
    """Base of every stage. Subclasses set ``name`` and implement :meth:`run`."""

    name: ClassVar[str]
    """Stage name: the key in the stage registry and the worker command line."""
    description: ClassVar[str] = ""
    options: object = None
    """Parsed command-line options (stages that add arguments read them here)."""

    def __init__(self, config: Config):
        self.config = config

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run.dir)

    def check(self) -> None:
        """Validate inputs without writing anything. Raise ConfigError."""
        check_writable("run.dir", self.run_dir)

    def run(self, restart: bool = False) -> object:
        """Do the work. ``restart``: forget earlier progress of this stage."""
        raise NotImplementedError


def check_writable(field: str, path: Path) -> None:
    """``path`` exists and is writable, or could be created: checked without creating it."""
    path = Path(path).absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(field, f"{probe} is a file, not a directory")
    # Probe by creating (and removing) a file: permission bits lie for root and on
    # read-only mounts, a real attempt does not.
    try:
        fd, tmp = tempfile.mkstemp(prefix=".marlseg-probe-", dir=probe)
    except OSError as e:
        raise ConfigError(field, f"{path} is not writable ({e.strerror} in {probe})") from None
    os.close(fd)
    os.unlink(tmp)
