"""Fragment-to-segment lookup tables per threshold. Not built yet: the post-processing issue builds it."""

from __future__ import annotations

from marlseg.errors import NotBuiltYet
from marlseg.stage import Stage


class SegmentsStage(Stage):
    """Fragment-to-segment lookup tables per threshold."""

    name = "segments"

    def check(self) -> None:
        raise NotBuiltYet(self.name, "not built yet (the post-processing issue); nothing was run")
