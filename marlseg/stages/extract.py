"""Blockwise relabelling of fragments into a segmentation. Not built yet: the post-processing issue builds it."""

from __future__ import annotations

from marlseg.errors import NotBuiltYet
from marlseg.stage import Stage


class ExtractStage(Stage):
    """Blockwise relabelling of fragments into a segmentation."""

    name = "extract"

    def check(self) -> None:
        raise NotBuiltYet(self.name, "not built yet (the post-processing issue); nothing was run")
