"""The stage registry: stage name -> the class that implements it.

Stages are imported lazily so a worker loads only what its stage needs (torch stays out of
the fragment workers). Each workflow script is ``cli.main(<name>)`` over one entry here.
"""

from __future__ import annotations

import importlib

from marlseg.stage import Stage

STAGES: dict[str, str] = {
    "pretrain": "marlseg.stages.pretrain:PretrainStage",
    "train": "marlseg.stages.train:TrainStage",
    "predict": "marlseg.stages.predict:PredictStage",
    "fragments": "marlseg.stages.fragments:FragmentsStage",
    "agglomerate": "marlseg.stages.agglomerate:AgglomerateStage",
    "segments": "marlseg.stages.segments:SegmentsStage",
    "extract": "marlseg.stages.extract:ExtractStage",
    "evaluate": "marlseg.stages.evaluate:EvaluateStage",
    "edge_rl": "marlseg.stages.edge_rl:EdgeRlStage",
    "weak_labels": "marlseg.stages.weak_labels:WeakLabelsStage",
    "view": "marlseg.viewer:ViewStage",
    "run": "marlseg.chain:ChainStage",
    "tune": "marlseg.tune:TuneStage",
}

CHAIN = ["predict", "fragments", "agglomerate", "edge_rl", "segments", "extract", "evaluate"]
"""What ``workflows/run.py`` runs, in order (``edge_rl`` only when ``segments.edge_score`` is
the learned weight)."""


def get_stage(name: str) -> type[Stage]:
    """The stage class for a registered name, or for ``"package.module:Class"`` (plugins and
    tests run their own stages through the same runner and worker)."""
    target = name if ":" in name else STAGES.get(name)
    if target is None:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(STAGES)}")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)
