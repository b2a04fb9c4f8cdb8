"""The trained UNETR at inference: checkpoints, devices and windowed prediction.

Owns what turns raw into affinities outside any stage, so the blockwise ``predict`` stage
(:mod:`marlseg.stages.predict`), training's validation (:mod:`marlseg.validation`) and tuning
(:mod:`marlseg.tune`) predict the same way: the shipped checkpoint and how a configured one is
found (:func:`checkpoint_path`), reading a UNETR checkpoint and building its model
(:func:`load_model`), the device (:func:`select_device`), and prediction on windows laid on
one grid anchored at voxel 0 (:func:`predict_region`, :func:`predict_volume`).

The network sees windows of its input shape; each window's output is cropped by ``margin`` on
every side (UNETR's input and output are the same size, so the margin *is* the context) and
the cropped cores tile the region. Raw outside the source is mirrored (a function of the
global position), and raw is normalised exactly as in training
(:func:`marlseg.gp_pipelines.normalize.normalize_raw`).

May import: marlseg's library modules (config, errors), networks and gp_pipelines; never a
stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from marlseg.config import NetworkConfig
from marlseg.errors import ConfigError

if TYPE_CHECKING:
    import torch

SHIPPED_CHECKPOINT = next(
    (
        p
        for p in (
            Path(__file__).resolve().parent / "checkpoints" / "unetr_fib.pt",  # installed
            Path(__file__).resolve().parents[1] / "checkpoints" / "unetr_fib.pt",  # source tree
        )
        if p.is_file()
    ),
    Path(__file__).resolve().parents[1] / "checkpoints" / "unetr_fib.pt",
)
"""The checkpoint shipped with marlseg (``predict.checkpoint: null``): package data
``marlseg/checkpoints/`` of an installed marlseg, ``checkpoints/`` of the source tree."""


# --- the model ------------------------------------------------------------------------------
def select_device(name: str, field: str = "device") -> torch.device:
    """``auto``: the (worker's) GPU if there is one, else the CPU; ``cuda`` without a GPU is
    refused naming ``field`` (the config key that asked for it)."""
    import torch

    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError(field, "cuda requested but no GPU is visible")
        return torch.device("cuda")
    return torch.device("cpu")


def checkpoint_path(path: Path | None, field: str = "predict.checkpoint") -> Path:
    if path is not None:
        return Path(path)
    if not SHIPPED_CHECKPOINT.is_file():
        raise ConfigError(field, f"null means the shipped {SHIPPED_CHECKPOINT}, which is missing")
    return SHIPPED_CHECKPOINT


def read_unetr_checkpoint(path: Path, field: str = "predict.checkpoint") -> dict[str, Any]:
    """A UNETR checkpoint (``kind: unetr``) with a valid ``network`` entry; ConfigError if not."""
    from marlseg.networks.unetr import read_checkpoint

    ckpt = read_checkpoint(path, field)
    if ckpt.get("kind") != "unetr":
        raise ConfigError(
            field,
            f"{path} is a {ckpt.get('kind')!r} checkpoint; prediction needs a trained UNETR "
            "('unetr', from 00_train.py)",
        )
    try:
        ckpt["network_config"] = NetworkConfig.model_validate(ckpt["network"])
    except Exception as e:
        raise ConfigError(field, f"{path} has no valid 'network' entry: {e}") from None
    return ckpt


def out_channels(ckpt: dict[str, Any]) -> int:
    """Channels the network outputs (affinities, then any auxiliary ones such as LSDs)."""
    return int(ckpt["model"]["out.conv.conv.weight"].shape[0])


def affinity_channels(ckpt: dict[str, Any]) -> int:
    """Channels prediction writes: the affinities (one per neighbourhood offset); auxiliary
    outputs (MTLSD's descriptors) follow them and are dropped."""
    nbh = ckpt.get("neighborhood")
    return len(nbh) if nbh is not None else out_channels(ckpt)


def load_model(path: Path, device: torch.device | str = "cpu", field: str = "predict.checkpoint"):
    """The UNETR of a checkpoint, in eval mode on ``device``; returns ``(model, checkpoint)``."""
    from marlseg.networks.unetr import build_unetr

    ckpt = read_unetr_checkpoint(path, field)
    model = build_unetr(ckpt["network_config"], out_channels(ckpt))
    model.load_state_dict(ckpt["model"], strict=True)
    model.affinity_channels = affinity_channels(ckpt)
    model.to(device).eval()
    return model, ckpt


def default_margin(input_shape: Sequence[int]) -> list[int]:
    """1/16 of the input on every axis (voxels, at least 1): windows overlap by 1/8, so each
    voxel is predicted ``prod(input / (input - 2 margin))`` times, (8/7)^3 = 1.49 for inputs
    that are multiples of 16 (2.37 with the earlier 1/8)."""
    return [max(1, s // 16) for s in input_shape]


# --- windows on a global grid ---------------------------------------------------------------
def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Map indices (possibly outside ``[0, n)``) into it by mirroring at the edges, without
    repeating the edge voxel (numpy's ``reflect``)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def read_mirrored(source: Any, begin: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """``source[begin : begin + shape]`` (voxels, spatial axes only), mirrored where it leaves
    ``source``. Reads one box from ``source`` (h5py, zarr or numpy)."""
    dims = source.shape[-3:]
    axes = [reflect_index(np.arange(b, b + s), n) for b, s, n in zip(begin, shape, dims)]
    lo = [int(a.min()) for a in axes]
    hi = [int(a.max()) + 1 for a in axes]
    box = np.asarray(source[tuple(slice(a, b) for a, b in zip(lo, hi))])
    if all(a[0] == low and np.all(np.diff(a) == 1) for a, low in zip(axes, lo)):
        return box
    return box[np.ix_(*(a - low for a, low in zip(axes, lo)))]


def predict_windows(
    model: torch.nn.Module, windows: np.ndarray, device: torch.device | str, batch_size: int
) -> np.ndarray:
    """Affinities in [0, 1] of normalised windows ``(N, 1, Z, Y, X)`` -> ``(N, C, Z, Y, X)``."""
    import torch

    keep = getattr(model, "affinity_channels", None)
    outs = []
    with torch.inference_mode():
        for i in range(0, len(windows), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(windows[i : i + batch_size])).to(device)
            outs.append(model(x)[:, :keep].float().cpu().numpy())
    return np.concatenate(outs)


def window_grid(
    begin: Sequence[int], shape: Sequence[int], core: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The windows covering ``[begin, begin + shape)`` (voxels): index of the first window
    and the number of windows per axis, on the grid of cores anchored at voxel 0."""
    begin, shape, core = np.asarray(begin), np.asarray(shape), np.asarray(core)
    first = begin // core
    last = -(-(begin + shape) // core)  # ceil
    return first, last - first


def predict_region(
    model: torch.nn.Module,
    source: Any,
    begin: Sequence[int],
    shape: Sequence[int],
    input_shape: Sequence[int],
    margin: Sequence[int],
    device: torch.device | str = "cpu",
    batch_size: int = 4,
    channels: int | None = None,
) -> np.ndarray:
    """Affinities ``(C, *shape)`` float32 of the region ``[begin, begin + shape)`` (voxels,
    relative to ``source``'s first voxel), from windows on the grid anchored at voxel 0."""
    from marlseg.gp_pipelines.normalize import normalize_raw

    inp = np.asarray(input_shape)
    m = np.asarray(margin)
    core = inp - 2 * m
    if np.any(core <= 0):
        raise ConfigError(
            "predict.margin", f"margin {list(m)} leaves no core of input {list(inp)} voxels"
        )
    first, counts = window_grid(begin, shape, core)
    begin, shape = np.asarray(begin), np.asarray(shape)
    start = first * core - m  # the first window's begin
    raw = read_mirrored(source, start, counts * core + 2 * m)
    raw = normalize_raw(raw)
    windows = np.stack(
        [
            raw[tuple(slice(k * c, k * c + i) for k, c, i in zip(ks, core, inp))]
            for ks in np.ndindex(*counts)
        ]
    )[:, None]
    pred = predict_windows(model, windows, device, batch_size)
    nc = channels or pred.shape[1]
    out = np.empty((nc, *(counts * core)), dtype=np.float32)
    for ks, p in zip(np.ndindex(*counts), pred):
        dst = tuple(slice(k * c, (k + 1) * c) for k, c in zip(ks, core))
        src = tuple(slice(mm, mm + c) for mm, c in zip(m, core))
        out[(slice(None), *dst)] = p[(slice(0, nc), *src)]
    offset = begin - first * core
    return out[(slice(None), *(slice(o, o + s) for o, s in zip(offset, shape)))]


def predict_volume(
    model: torch.nn.Module,
    raw: np.ndarray,
    margin: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
) -> np.ndarray:
    """Affinities ``(C, *raw.shape)`` float32 of an in-memory raw volume (validation)."""
    input_shape = model.encoder.img_size
    margin = default_margin(input_shape) if margin is None else margin
    return predict_region(model, raw, (0, 0, 0), raw.shape, input_shape, margin, device, batch_size)


def to_uint8(affs: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(affs * 255.0), 0, 255).astype(np.uint8)
