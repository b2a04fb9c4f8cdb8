"""The top-level :class:`Config`: one field per section, the per-stage ``workers`` merge and
the places derived from ``run.dir``. Imports the section modules and
:mod:`marlseg.config.errors`."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError, model_validator

from marlseg.config.agglomerate import AgglomerateConfig
from marlseg.config.base import DatasetRef, Section
from marlseg.config.edge_rl import EdgeRlConfig
from marlseg.config.errors import as_config_error
from marlseg.config.evaluate import EvaluateConfig
from marlseg.config.extract import ExtractConfig
from marlseg.config.fragments import FragmentsConfig
from marlseg.config.network import NetworkConfig
from marlseg.config.predict import PredictConfig
from marlseg.config.pretrain import PretrainConfig
from marlseg.config.run import DbConfig, RunConfig, WorkersConfig
from marlseg.config.segments import SegmentsConfig
from marlseg.config.train import TrainConfig
from marlseg.config.tune import TuneConfig
from marlseg.config.weak_labels import WeakLabelsConfig

STAGE_SECTIONS = ("predict", "fragments", "agglomerate", "extract", "evaluate")


class Config(Section):
    """A whole run."""

    run: RunConfig = RunConfig()
    db: DbConfig = DbConfig()
    workers: WorkersConfig = WorkersConfig()
    raw: DatasetRef | None = None
    """Raw EM (uint8)."""
    gt: DatasetRef | None = None
    """Ground-truth neuron ids, for ``06_evaluate.py``."""
    network: NetworkConfig = NetworkConfig()
    predict: PredictConfig = PredictConfig()
    fragments: FragmentsConfig = FragmentsConfig()
    agglomerate: AgglomerateConfig = AgglomerateConfig()
    segments: SegmentsConfig = SegmentsConfig()
    extract: ExtractConfig = ExtractConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    train: TrainConfig = TrainConfig()
    pretrain: PretrainConfig = PretrainConfig()
    edge_rl: EdgeRlConfig = EdgeRlConfig()
    weak_labels: WeakLabelsConfig = WeakLabelsConfig()
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="after")
    def _db_name(self) -> Config:
        if self.db.name is None:
            from marlseg.ownership import default_db_name

            self.db.name = default_db_name(self.run.dir)
        return self

    @model_validator(mode="after")
    def _stage_workers(self) -> Config:
        for name in STAGE_SECTIONS:
            self.workers_for(name)  # validates the override now, not when the stage runs
        return self

    def workers_for(self, stage: str) -> WorkersConfig:
        """The global ``workers`` section with ``<stage>.workers`` overrides applied."""
        section = getattr(self, stage, None)
        override = getattr(section, "workers", None) or {}
        merged = {**self.workers.model_dump(), **override}
        try:
            return WorkersConfig.model_validate(merged)
        except ValidationError as e:
            raise as_config_error(e, prefix=f"{stage}.workers") from None

    # --- derived places: defaults under run.dir, never stored twice ---
    def under_run(self, name: str) -> Path:
        return self.run.dir / name

    @property
    def affs(self) -> DatasetRef:
        return self.predict.affs or DatasetRef(
            path=self.under_run("affs.zarr"), dataset="volumes/affs"
        )

    @property
    def fragment_affs(self) -> DatasetRef:
        return self.fragments.affs or self.affs

    @property
    def fragments_ds(self) -> DatasetRef:
        return self.fragments.fragments or DatasetRef(
            path=self.under_run("fragments.zarr"), dataset="volumes/fragments"
        )

    def segmentation_ds(self, threshold: float | None = None) -> DatasetRef:
        if self.extract.segmentation is not None:
            return self.extract.segmentation
        t = self.extract.threshold if threshold is None else threshold
        return DatasetRef(
            path=self.under_run("segmentation.zarr"), dataset=f"volumes/segmentation_{t:.3f}"
        )

    @property
    def eval_thresholds(self) -> list[float]:
        return list(self.evaluate.thresholds or self.segments.thresholds)

    def resolved(self) -> Config:
        """A copy whose relative paths (every path field, :mod:`marlseg.paths`) are made
        absolute against the working directory (workers may run elsewhere)."""
        from marlseg.paths import rebase

        return Config.model_validate(rebase(self.model_dump(mode="json"), Config, Path.cwd()))
