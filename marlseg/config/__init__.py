"""The run config: one JSON file per run, read by every stage.

Each section is a pydantic model; every field is typed and documented right under it, so this
package *is* the config reference (the README's table is generated from it: ``marlseg.config``
``--reference``). Unknown keys are errors. Sizes (block shapes, contexts) are in world units
(nm), like daisy ROIs; voxel sizes come from the data, never from the config.

Loading never writes anything. Problems surface as :class:`~marlseg.errors.ConfigError` with the
dotted field path, e.g. ``error: fragments.context: value must be >= 0, got -8``.

One module per section (or stage family), on :mod:`marlseg.config.base`; :mod:`.root` holds the
top-level :class:`Config`, :mod:`.loading` reads it, :mod:`.reference_table` documents it. This
package re-exports their public names: import them from ``marlseg.config``.
"""

from marlseg.config.agglomerate import AgglomerateConfig
from marlseg.config.base import DatasetRef, NonNegInt, PosInt, Section, Unit
from marlseg.config.edge_rl import (
    BlobPriorConfig,
    BridgePriorConfig,
    EdgeRlConfig,
    EdgeRlPriors,
    ElongationPriorConfig,
    MembranePriorConfig,
    SizePriorConfig,
    ThicknessPriorConfig,
    TinyPriorConfig,
)
from marlseg.config.evaluate import EvaluateConfig
from marlseg.config.extract import ExtractConfig
from marlseg.config.fragments import FragmentsConfig
from marlseg.config.loading import apply_overrides, dump_config, load_config, parse_override
from marlseg.config.network import NetworkConfig
from marlseg.config.predict import PredictConfig
from marlseg.config.pretrain import PretrainConfig
from marlseg.config.reference_table import reference, reference_markdown
from marlseg.config.root import STAGE_SECTIONS, Config
from marlseg.config.run import GPU_STAGES, DbConfig, RunConfig, WorkersConfig, time_limit_seconds
from marlseg.config.segments import TUNE_THRESHOLDS, SegmentsConfig, Thresholds
from marlseg.config.train import TrainConfig, ValidationConfig
from marlseg.config.tune import TUNE_FIXED_KEYS, TuneConfig
from marlseg.config.weak_labels import (
    DeriveTagsConfig,
    DetectorConfig,
    SelfPlayConfig,
    WeakLabelsConfig,
)

__all__ = [
    "GPU_STAGES",
    "STAGE_SECTIONS",
    "TUNE_FIXED_KEYS",
    "TUNE_THRESHOLDS",
    "AgglomerateConfig",
    "BlobPriorConfig",
    "BridgePriorConfig",
    "Config",
    "DatasetRef",
    "DbConfig",
    "DeriveTagsConfig",
    "DetectorConfig",
    "EdgeRlConfig",
    "EdgeRlPriors",
    "ElongationPriorConfig",
    "EvaluateConfig",
    "ExtractConfig",
    "FragmentsConfig",
    "MembranePriorConfig",
    "NetworkConfig",
    "NonNegInt",
    "PosInt",
    "PredictConfig",
    "PretrainConfig",
    "RunConfig",
    "Section",
    "SegmentsConfig",
    "SelfPlayConfig",
    "SizePriorConfig",
    "ThicknessPriorConfig",
    "Thresholds",
    "TinyPriorConfig",
    "TrainConfig",
    "TuneConfig",
    "Unit",
    "ValidationConfig",
    "WeakLabelsConfig",
    "WorkersConfig",
    "apply_overrides",
    "dump_config",
    "load_config",
    "parse_override",
    "reference",
    "reference_markdown",
    "time_limit_seconds",
]
