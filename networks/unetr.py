"""UNETR for affinities, with per-axis up-sampling so anisotropic patches work.

The design is UNETR's (Hatamizadeh et al., 2021): a ViT encoder (:class:`~marlseg.networks.vit.
ViTEncoder`, the very module MAE pretraining trains, so a pretraining checkpoint loads key for
key), skip connections taken from three intermediate transformer layers and projected back to
1/2, 1/4 and 1/8 of the patch size, a convolutional stem on the input, and a decoder of monai's
:class:`~monai.networks.blocks.UnetrBasicBlock` / :class:`~monai.networks.blocks.UnetrUpBlock`
that goes from the token grid back to full resolution in four stages.

monai's own ``UNETR`` fixes the patch to 16 and each stage to a factor 2 on every axis. Here
each axis's patch size is split into four per-stage factors whose product is the patch size
(:func:`upsampling_factors`): the larger factors go to the coarse stages, so with a ``(4, 16,
16)`` patch the two stages nearest full resolution up-sample in y and x only, like the
anisotropic U-Nets used on ssTEM. A factor of 1 on an axis is a transposed conv of kernel and
stride 1 there (a per-voxel linear map).

Output: ``forward`` returns sigmoid affinities in [0, 1] (``final_activation="sigmoid"``, the
default) or raw logits (``final_activation=None``); :meth:`UNETR.logits` always returns logits
(for ``BCEWithLogitsLoss``).

Checkpoint format (written by pretraining and training, read by :func:`load_encoder` and
prediction)::

    torch.save({
        "kind": "mae" | "unetr",
        "network": NetworkConfig.model_dump(mode="json"),   # the architecture
        "model": state_dict,        # MAE: MaskedAutoencoder; UNETR: UNETR. Encoder keys are
                                    # "encoder.<...>" in both, so they load key for key
        "iteration": n,             # iterations done
        ...                         # trainer state: optimisers, policy, RNG, config
    }, path)

Checkpoints hold only tensors, dicts, lists, strings and numbers, so they load with
``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.networks.blocks import UnetBasicBlock, UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from monai.networks.blocks.dynunet_block import get_conv_layer
from torch import nn

from marlseg.errors import ConfigError
from marlseg.networks.vit import ViTEncoder, as_triple

if TYPE_CHECKING:
    from marlseg.config import NetworkConfig

NUM_STAGES = 4


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


def upsampling_factors(
    patch_size: Sequence[int], stages: int = NUM_STAGES
) -> list[tuple[int, ...]]:
    """Per-stage, per-axis up-sampling factors, coarsest stage first.

    Each axis's patch size is split into its prime factors; while there are more factors than
    stages the two smallest are merged; the largest factors go to the coarsest stages, the
    rest of the stages get 1. ``(4, 16, 16)`` -> ``[(2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2)]``.
    The product over stages is the patch size on every axis.
    """
    per_axis = []
    for p in patch_size:
        f = sorted(_prime_factors(int(p)))
        while len(f) > stages:
            f = sorted([f[0] * f[1], *f[2:]])
        f = sorted(f, reverse=True) + [1] * (stages - len(f))
        per_axis.append(f)
    return [tuple(axis[s] for axis in per_axis) for s in range(stages)]


class ProjectionUp(nn.Module):
    """UNETR's projection-upsampling path (monai's ``UnetrPrUpBlock`` with ``conv_block=True``),
    but each step has its own per-axis factor: a transposed conv, then for every further step a
    transposed conv + :class:`~monai.networks.blocks.UnetBasicBlock`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        factors: Sequence[Sequence[int]],
        norm_name: str | tuple = "instance",
    ) -> None:
        super().__init__()
        self.transp_conv_init = get_conv_layer(
            3,
            in_channels,
            out_channels,
            kernel_size=tuple(factors[0]),
            stride=tuple(factors[0]),
            conv_only=True,
            is_transposed=True,
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(
                get_conv_layer(
                    3,
                    out_channels,
                    out_channels,
                    kernel_size=tuple(f),
                    stride=tuple(f),
                    conv_only=True,
                    is_transposed=True,
                ),
                UnetBasicBlock(3, out_channels, out_channels, 3, 1, norm_name=norm_name),
            )
            for f in factors[1:]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transp_conv_init(x)
        for blk in self.blocks:
            x = blk(x)
        return x


def skip_layers(num_layers: int) -> tuple[int, int, int]:
    """Indices of the transformer layers feeding the 1/2, 1/4 and 1/8 skips (3, 6, 9 of 12 in
    UNETR): the layers at 1/4, 1/2 and 3/4 of the depth."""
    return tuple(max(0, round(num_layers * k / 4) - 1) for k in (1, 2, 3))  # type: ignore[return-value]


class UNETR(nn.Module):
    """UNETR with a per-axis patch size.

    Args:
        in_channels: input channels (1 for EM).
        out_channels: output channels (one per affinity offset).
        img_size, patch_size, hidden_size, mlp_dim, num_layers, num_heads: the
            :class:`~marlseg.networks.vit.ViTEncoder`'s.
        feature_size: decoder width at full resolution (doubles per stage, as in UNETR).
        norm_name: decoder normalisation (monai name: ``"instance"``, ``"batch"``, ...).
        res_block: residual conv blocks in the decoder.
        final_activation: ``"sigmoid"`` (affinities in [0, 1]) or ``None`` (logits).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: int | Sequence[int],
        patch_size: int | Sequence[int],
        hidden_size: int = 192,
        mlp_dim: int = 384,
        num_layers: int = 4,
        num_heads: int = 4,
        feature_size: int = 16,
        norm_name: str | tuple = "instance",
        res_block: bool = True,
        dropout_rate: float = 0.0,
        final_activation: str | None = "sigmoid",
    ) -> None:
        super().__init__()
        if final_activation not in ("sigmoid", None):
            raise ValueError(f"final_activation must be 'sigmoid' or None, got {final_activation}")
        self.final_activation = final_activation
        self.encoder = ViTEncoder(
            in_channels,
            img_size,
            patch_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            dropout_rate=dropout_rate,
        )
        self.patch_size = as_triple(patch_size, "patch_size")
        self.factors = upsampling_factors(self.patch_size)
        self.skips = skip_layers(num_layers)
        fs, f = feature_size, self.factors
        self.stem = UnetrBasicBlock(3, in_channels, fs, 3, 1, norm_name, res_block=res_block)
        # skip paths: layer -> 1/2 (3 steps), 1/4 (2 steps), 1/8 (1 step) of the patch size
        self.skip2 = ProjectionUp(hidden_size, fs * 2, f[0:3], norm_name)
        self.skip3 = ProjectionUp(hidden_size, fs * 4, f[0:2], norm_name)
        self.skip4 = ProjectionUp(hidden_size, fs * 8, f[0:1], norm_name)

        def up(cin: int, cout: int, factor: Sequence[int]) -> UnetrUpBlock:
            return UnetrUpBlock(3, cin, cout, 3, tuple(factor), norm_name, res_block=res_block)

        self.up4 = up(hidden_size, fs * 8, f[0])
        self.up3 = up(fs * 8, fs * 4, f[1])
        self.up2 = up(fs * 4, fs * 2, f[2])
        self.up1 = up(fs * 2, fs, f[3])
        self.out = UnetOutBlock(3, fs, out_channels)

    def _tokens_to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        b, _, d = tokens.shape
        return tokens.transpose(1, 2).reshape(b, d, *self.encoder.grid)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation output ``(B, out_channels, Z, Y, X)``."""
        tokens, hidden = self.encoder(x)
        s2 = self.skip2(self._tokens_to_grid(hidden[self.skips[0]]))
        s3 = self.skip3(self._tokens_to_grid(hidden[self.skips[1]]))
        s4 = self.skip4(self._tokens_to_grid(hidden[self.skips[2]]))
        d = self.up4(self._tokens_to_grid(tokens), s4)
        d = self.up3(d, s3)
        d = self.up2(d, s2)
        d = self.up1(d, self.stem(x))
        return self.out(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.logits(x)
        return torch.sigmoid(y) if self.final_activation == "sigmoid" else y


def build_unetr(
    network: NetworkConfig, out_channels: int, in_channels: int = 1, **kwargs: Any
) -> UNETR:
    """The UNETR described by a ``network`` config section."""
    return UNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        img_size=network.input_shape,
        patch_size=network.patch_size,
        hidden_size=network.hidden_size,
        mlp_dim=network.mlp_dim,
        num_layers=network.num_layers,
        num_heads=network.num_heads,
        feature_size=network.feature_size,
        **kwargs,
    )


def build_encoder(network: NetworkConfig, in_channels: int = 1) -> ViTEncoder:
    """The ViT encoder described by a ``network`` config section (the same as the UNETR's)."""
    return ViTEncoder(
        in_channels,
        network.input_shape,
        network.patch_size,
        hidden_size=network.hidden_size,
        mlp_dim=network.mlp_dim,
        num_layers=network.num_layers,
        num_heads=network.num_heads,
    )


def read_checkpoint(path: str | Path, field: str = "checkpoint") -> dict[str, Any]:
    """Load a marlseg checkpoint (see the module docstring); ConfigError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(field, f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise ConfigError(field, f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "kind" not in ckpt:
        raise ConfigError(field, f"{path} is not a marlseg checkpoint (no 'kind'/'model' keys)")
    return ckpt


def encoder_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` entries of a model state dict, with the prefix removed."""
    return {k[len("encoder.") :]: v for k, v in state_dict.items() if k.startswith("encoder.")}


def load_encoder(
    model: UNETR | ViTEncoder, checkpoint_path: str | Path, field: str = "train.init_encoder"
) -> dict[str, Any]:
    """Load the encoder weights of an MAE (or UNETR) checkpoint into ``model``'s encoder, key
    for key and strictly; returns the checkpoint. A missing, unexpected or differently shaped
    key raises ConfigError naming the checkpoint file and the first offending key."""
    ckpt = read_checkpoint(checkpoint_path, field)
    enc = model.encoder if isinstance(model, UNETR) else model
    state = encoder_state(ckpt["model"])
    own = enc.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]!r}")
        if shaped:
            k = shaped[0]
            parts.append(
                f"{k!r} has shape {tuple(state[k].shape)} in the checkpoint, "
                f"{tuple(own[k].shape)} in this network"
            )
        raise ConfigError(
            field,
            f"encoder of {checkpoint_path} does not match the configured network "
            f"({'; '.join(parts)}); checkpoint network: {ckpt.get('network')}",
        )
    enc.load_state_dict(state, strict=True)
    return ckpt
