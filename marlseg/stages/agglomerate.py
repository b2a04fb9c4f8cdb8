"""Blockwise agglomeration: RAG edges with merge scores. Not built yet: the post-processing issue builds it."""

from __future__ import annotations

from marlseg.errors import NotBuiltYet
from marlseg.stage import Stage


class AgglomerateStage(Stage):
    """Blockwise agglomeration: RAG edges with merge scores."""

    name = "agglomerate"

    def check(self) -> None:
        raise NotBuiltYet(self.name, "not built yet (the post-processing issue); nothing was run")
