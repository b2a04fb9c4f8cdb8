"""Stage ``pretrain``: MAE pretraining of the shared ViT encoder with multi-agent-RL masking.

``python workflows/00_pretrain.py config.json``. The work is :func:`marlseg.pretrain.pretrain`;
this stage checks the config and the raw volumes first, writing nothing.
"""

from __future__ import annotations

from typing import Any

from marlseg.errors import ConfigError
from marlseg.stage import Stage


class PretrainStage(Stage):
    """MAE pretraining with multi-agent reinforcement-learning masks (resumable)."""

    name = "pretrain"

    def check(self) -> None:
        super().check()
        p, net = self.config.pretrain, self.config.network
        if not p.raw:
            raise ConfigError("pretrain.raw", "no raw volumes to pretrain on")
        from marlseg.volumes import open_volume

        shape_nm = None
        for i, ref in enumerate(p.raw):
            array = open_volume(ref, field=f"pretrain.raw[{i}]")
            have = list(array.roi.shape / array.voxel_size)
            if any(h < n for h, n in zip(have, net.input_shape)):
                raise ConfigError(
                    f"pretrain.raw[{i}]",
                    f"{ref} has {have} voxels, smaller than network.input_shape {net.input_shape}",
                )
            if shape_nm is not None and array.voxel_size != shape_nm:
                raise ConfigError(
                    f"pretrain.raw[{i}]",
                    f"voxel size {list(array.voxel_size)} differs from pretrain.raw[0]'s "
                    f"{list(shape_nm)}",
                )
            shape_nm = array.voxel_size
        py, px = net.patch_size[1:]
        if py % p.hog_cell or px % p.hog_cell:
            raise ConfigError(
                "pretrain.hog_cell",
                f"{p.hog_cell} does not divide network.patch_size in y and x ({py}, {px})",
            )
        from marlseg.networks.voxel_target import VoxelTarget

        for key, args in (
            ("target_sigma", (p.target_sigma, (1, 1, 1))),
            ("target_pool", ((0.0, 0.0, 0.0), p.target_pool)),
        ):
            try:
                VoxelTarget(net.patch_size, *args)
            except ValueError as e:
                raise ConfigError(f"pretrain.{key}", str(e)) from None
        if p.decoder_dim % p.decoder_heads:
            raise ConfigError(
                "pretrain.decoder_heads",
                f"{p.decoder_heads} does not divide pretrain.decoder_dim {p.decoder_dim}",
            )
        from marlseg.networks.marl import ratio_counts

        n = 1
        for i, s in zip(net.input_shape, net.patch_size):
            n *= i // s
        if n < 2:
            raise ConfigError(
                "network.input_shape", "the input holds one patch: nothing to mask and see"
            )
        if p.masking == "marl":
            try:
                ratio_counts(n, p.min_ratio, p.max_ratio)
            except ValueError as e:
                raise ConfigError("pretrain.min_ratio", str(e)) from None
        if p.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("pretrain.device", "cuda requested but no GPU is available")

    def run(self, restart: bool = False) -> Any:
        from marlseg.pretrain import pretrain

        return pretrain(self.config, restart=restart)
