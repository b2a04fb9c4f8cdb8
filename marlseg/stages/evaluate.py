"""VOI and ARAND against ground truth. Not built yet: the post-processing issue builds it."""

from __future__ import annotations

from marlseg.errors import NotBuiltYet
from marlseg.stage import Stage


class EvaluateStage(Stage):
    """VOI and ARAND against ground truth."""

    name = "evaluate"

    def check(self) -> None:
        raise NotBuiltYet(self.name, "not built yet (the post-processing issue); nothing was run")
