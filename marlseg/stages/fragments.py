"""Blockwise fragment extraction (watershed) and RAG nodes. Not built yet: the post-processing issue builds it."""

from __future__ import annotations

from marlseg.errors import NotBuiltYet
from marlseg.stage import Stage


class FragmentsStage(Stage):
    """Blockwise fragment extraction (watershed) and RAG nodes."""

    name = "fragments"

    def check(self) -> None:
        raise NotBuiltYet(self.name, "not built yet (the post-processing issue); nothing was run")
