"""The ``network`` section: the ViT / UNETR architecture that ``pretrain``, ``train`` and
``predict`` share. Imports only :mod:`marlseg.config.base`."""

from __future__ import annotations

from pydantic import model_validator

from marlseg.config.base import PosInt, Section, check_block


class NetworkConfig(Section):
    """The ViT / UNETR architecture shared by pretraining, training and prediction."""

    patch_size: list[int] = [4, 8, 8]
    """ViT patch size per axis, voxels (``[16,16,16]`` isotropic, ``[4,16,16]`` ssTEM, ...)."""
    input_shape: list[int] = [16, 64, 64]
    """Network input shape, voxels; a multiple of ``patch_size`` on every axis."""
    hidden_size: PosInt = 192
    """ViT embedding width."""
    mlp_dim: PosInt = 384
    """Width of the transformer blocks' MLP."""
    num_layers: PosInt = 4
    """Transformer blocks in the ViT."""
    num_heads: PosInt = 4
    """Attention heads; must divide ``hidden_size``."""
    feature_size: PosInt = 16
    """UNETR decoder width."""

    @model_validator(mode="after")
    def _multiple(self) -> NetworkConfig:
        check_block(self.patch_size)
        check_block(self.input_shape)
        for i, p in zip(self.input_shape, self.patch_size):
            if i % p:
                raise ValueError(
                    f"input_shape {self.input_shape} is not a multiple of patch_size "
                    f"{self.patch_size}"
                )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads {self.num_heads} does not divide hidden_size {self.hidden_size}"
            )
        return self
