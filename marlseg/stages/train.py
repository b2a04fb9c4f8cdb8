"""Train the UNETR on affinities. Not built yet: the training issue builds it."""

from __future__ import annotations

from marlseg.errors import NotBuiltYet
from marlseg.stage import Stage


class TrainStage(Stage):
    """Train the UNETR on affinities."""

    name = "train"

    def check(self) -> None:
        raise NotBuiltYet(self.name, "not built yet (the training issue); nothing was run")
