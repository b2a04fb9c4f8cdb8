"""MAE pretraining with multi-agent RL masking. Not built yet: the MARL pretraining issue builds it."""

from __future__ import annotations

from marlseg.errors import NotBuiltYet
from marlseg.stage import Stage


class PretrainStage(Stage):
    """MAE pretraining with multi-agent RL masking."""

    name = "pretrain"

    def check(self) -> None:
        raise NotBuiltYet(self.name, "not built yet (the MARL pretraining issue); nothing was run")
