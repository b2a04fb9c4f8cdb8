"""``workflows/run.py``: the stages in order, one command, resumable.

Runs predict -> fragments -> agglomerate -> segments -> extract -> evaluate (or a slice of it
with ``--from``/``--to``), keeping one database service up for the whole chain. Each stage
checks its own inputs right before it runs, so a chain interrupted anywhere resumes where it
stopped when the same command is run again: finished stages skip all their blocks.

Prediction is left out when the fragments read something other than the predicted
affinities (``fragments.boundary`` or an explicit ``fragments.affs``). ``edge_rl`` (07) runs
between agglomerate and segments when ``segments.edge_score`` is its ``edge_rl.weight_attr``
(or with ``--to edge_rl`` / ``--from edge_rl``).
"""

from __future__ import annotations

import argparse
import contextlib
import time

from marlseg.errors import ConfigError
from marlseg.stage import Stage
from marlseg.stages import CHAIN, get_stage
from marlseg.volumes import open_volume


class ChainStage(Stage):
    """Run the post-processing chain (and prediction) end to end."""

    name = "run"
    description = (
        "Run the whole chain: predict, fragments, agglomerate, segments, extract, evaluate"
    )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--from", dest="first", choices=CHAIN, help="first stage to run")
        parser.add_argument("--to", dest="last", choices=CHAIN, help="last stage to run")

    def stages(self) -> list[str]:
        names = list(CHAIN)
        f = self.config.fragments
        if f.boundary is not None or (f.affs is not None and f.affs != self.config.affs):
            names.remove("predict")
        first = getattr(self.options, "first", None)
        last = getattr(self.options, "last", None)
        asked = "edge_rl" in (first, last)
        if self.config.segments.edge_score != self.config.edge_rl.weight_attr and not asked:
            names.remove("edge_rl")  # 07 runs in the chain when 04 reads what it writes
        if first:
            if first not in names:
                raise ConfigError(
                    "--from", f"{first} is not part of this chain ({', '.join(names)})"
                )
            names = names[names.index(first) :]
        if last:
            if last not in names:
                raise ConfigError("--to", f"{last} is not part of this chain ({', '.join(names)})")
            names = names[: names.index(last) + 1]
        return names

    def check(self) -> None:
        super().check()
        names = self.stages()
        # what can be checked before anything runs: the inputs no stage produces
        if "predict" in names:
            if self.config.raw is None:
                raise ConfigError("raw", "required to predict affinities")
            open_volume(self.config.raw, field="raw")
        if "evaluate" in names:
            if self.config.gt is None:
                raise ConfigError("gt", "required to evaluate (or run with --to extract)")
            open_volume(self.config.gt, field="gt")
        get_stage(names[0])(self.config).check()

    def run(self, restart: bool = False) -> None:
        names = self.stages()
        t0 = time.perf_counter()
        with self.shared_services():
            for i, name in enumerate(names):
                stage = get_stage(name)(self.config)
                stage.options = self.options
                print(f"\n=== [{i + 1}/{len(names)}] {name} ===", flush=True)
                if i:
                    stage.check()
                stage.run(restart=restart)
        print(f"\nchain done in {time.perf_counter() - t0:.1f} s: {' -> '.join(names)}")

    @contextlib.contextmanager
    def shared_services(self):
        """Keep the database up across stages (each stage would otherwise start and stop
        the embedded server)."""
        from marlseg.rag import graph_service

        with graph_service(self.config):
            yield
