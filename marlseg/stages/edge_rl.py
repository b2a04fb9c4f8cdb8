"""Learn RAG edge weights with a stateless actor-critic. Not built yet: the actor-critic issue builds it."""

from __future__ import annotations

from marlseg.errors import NotBuiltYet
from marlseg.stage import Stage


class EdgeRlStage(Stage):
    """Learn RAG edge weights with a stateless actor-critic."""

    name = "edge_rl"

    def check(self) -> None:
        raise NotBuiltYet(self.name, "not built yet (the actor-critic issue); nothing was run")
