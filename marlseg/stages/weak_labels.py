"""Weak labels from image-level tags by self-play. Not built yet: the self-play issue builds it."""

from __future__ import annotations

from marlseg.errors import NotBuiltYet
from marlseg.stage import Stage


class WeakLabelsStage(Stage):
    """Weak labels from image-level tags by self-play."""

    name = "weak_labels"

    def check(self) -> None:
        raise NotBuiltYet(self.name, "not built yet (the self-play issue); nothing was run")
