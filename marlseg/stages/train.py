"""Train the UNETR on affinities (``00_train.py``): checks, then :func:`marlseg.train.train`.

A whole-volume stage (no blocks). Everything that can be wrong in the config is found before
anything is written: datasets exist and share one voxel size, the network's input fits every
volume (after rotation, if augmenting), the encoder checkpoint matches the network, the
validation crop is labelled, and an earlier run in ``run.dir`` was made with the same network
(else ``--restart``).
"""

from __future__ import annotations

from pathlib import Path

from marlseg.errors import ConfigError
from marlseg.stage import Stage, check_writable


class TrainStage(Stage):
    """Train the UNETR on affinities (resumes from the last checkpoint in run.dir/train)."""

    name = "train"

    def check(self) -> None:
        super().check()
        tc = self.config.train
        if not tc.raw:
            raise ConfigError("train.raw", "no training volumes given")
        from marlseg.gp_pipelines.augment import options
        from marlseg.gp_pipelines.recipes import check_sources

        try:
            options(tc.augment)
        except ValueError as e:
            raise ConfigError("train.augment", str(e)) from None
        shape = list(self.config.network.input_shape)
        check_sources(
            tc.raw,
            tc.labels,
            tc.masks or None,
            shape,
            shape,
            tc.augment,
            field="train",
        )
        if tc.init_encoder is not None:
            self._check_encoder(tc.init_encoder)
        if tc.validation is not None:
            from marlseg.validation import Validation

            Validation(tc.validation)
        if tc.export is not None:
            if Path(tc.export).suffix != ".pt":
                raise ConfigError("train.export", f"expected a .pt file, got {tc.export}")
            check_writable("train.export", Path(tc.export).absolute().parent)
        if tc.device == "cuda":
            from marlseg.inference import select_device

            select_device("cuda")
        from marlseg.train import check_resumable

        check_resumable(self.config, restart=bool(getattr(self.options, "restart", False)))

    def _check_encoder(self, path: Path) -> None:
        from marlseg.networks.unetr import build_encoder, load_encoder

        load_encoder(build_encoder(self.config.network), path, field="train.init_encoder")

    def run(self, restart: bool = False) -> dict:
        from marlseg.train import train

        return train(self.config, restart=restart)
