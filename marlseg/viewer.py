"""A run in neuroglancer: raw, affinities, fragments, a segmentation and the ground truth.

``python workflows/view.py config.json [--threshold T] [--bind ADDR] [--port N] [--no-browser]``
serves the run's arrays from this machine with the ``neuroglancer`` Python package and prints
the URL; it blocks until Ctrl-C. Every layer keeps its own voxel size and offset (a
``CoordinateSpace`` in nm and a ``LocalVolume`` voxel offset), so layers of different
resolutions line up in the world. Arrays are served lazily: neuroglancer asks for chunks and
each chunk is read from the zarr/HDF5 dataset when asked, so volumes larger than memory are
fine. A segmentation that 05 did not extract is served as the fragments relabelled through the
threshold's LUT, chunk by chunk.

:func:`viewer_state` describes the layers (names, types, dimensions, voxel sizes, offsets)
without serving anything; the served viewer is built from the same description.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
import threading
import webbrowser
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from marlseg.config import Config
from marlseg.errors import ConfigError
from marlseg.luts import lut_thresholds
from marlseg.overlays import open_layers
from marlseg.segmentations import (
    Labels,
    best_threshold,
    extracted_segmentation,
    read_scores,
    segmentation_source,
)
from marlseg.stage import Stage

AFFS_SHADER = """#uicontrol invlerp normalized
void main() {
  emitRGB(vec3(normalized(getDataValue(0)), normalized(getDataValue(1)),
               normalized(getDataValue(2))));
}
"""
"""Affinities as RGB: the z, y and x affinities (the first three channels) as red, green and
blue. The ``invlerp`` control lets users stretch the range in the layer panel."""


@dataclass
class Layer:
    """One served layer: what neuroglancer gets, and what tests inspect."""

    key: str
    """Short name for ``--show``: raw, affinities, boundary, fragments, segmentation, gt."""
    name: str
    """Layer name in neuroglancer."""
    kind: str
    """``image`` or ``segmentation``."""
    source: str
    """Where the data comes from (dataset, and the LUT when relabelled on the fly)."""
    data: Any
    """The array-like neuroglancer reads from (zarr / h5py dataset or a lazy relabelling)."""
    voxel_size: tuple[int, ...]
    """z, y, x in nm."""
    offset: tuple[int, ...]
    """z, y, x in nm (world position of voxel 0)."""
    channels: int = 0
    """Number of leading channel axes (affinities: 1)."""
    visible: bool = True
    shader: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def voxel_offset(self) -> tuple[int, ...]:
        """Offset in voxels, channels included (neuroglancer's ``LocalVolume`` convention)."""
        spatial = [o // v for o, v in zip(self.offset, self.voxel_size)]
        return tuple([0] * self.channels + spatial)

    @property
    def dimensions(self) -> dict[str, list]:
        """Neuroglancer coordinate space of the data axes (channels are local ``c^``)."""
        return {
            "names": ["c^"] * self.channels + ["z", "y", "x"],
            "units": [""] * self.channels + ["nm"] * 3,
            "scales": [1] * self.channels + [int(v) for v in self.voxel_size],
        }

    def describe(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "type": self.kind,
            "source": self.source,
            "shape": list(self.shape),
            "dtype": str(np.dtype(self.data.dtype)),
            "dimensions": self.dimensions,
            "voxel_size": list(self.voxel_size),
            "offset": list(self.offset),
            "voxel_offset": list(self.voxel_offset),
            "visible": self.visible,
            "shader": self.shader,
        }


class RelabelledVolume:
    """Fragments seen through a LUT, read lazily: each ``__getitem__`` reads the requested
    box of fragments and relabels it (neuroglancer asks chunk by chunk)."""

    def __init__(self, labels: Labels):
        self._labels = labels
        self._data = labels.array._source_data
        self.shape = tuple(self._data.shape)
        self.dtype = np.dtype(np.uint64)
        self.ndim = len(self.shape)

    def __getitem__(self, item: Any) -> np.ndarray:
        assert self._labels.lut is not None
        return self._labels.lut.apply(np.asarray(self._data[item]))


@dataclass
class ViewPlan:
    threshold: float | None
    reason: str
    layers: list[Layer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def global_dimensions(self) -> dict[str, list]:
        """The display space: x, y, z in nm at the finest layer resolution (raw's if any)."""
        first = next((la for la in self.layers if la.name == "raw"), self.layers[0])
        z, y, x = first.voxel_size
        return {"names": ["x", "y", "z"], "units": ["nm"] * 3, "scales": [x, y, z]}

    def position(self) -> list[float]:
        """The centre of the first layer, in global voxel coordinates (x, y, z)."""
        first = next((la for la in self.layers if la.name == "raw"), self.layers[0])
        spatial = first.shape[first.channels :]
        centre_nm = [o + s * v / 2 for o, s, v in zip(first.offset, spatial, first.voxel_size)]
        scales = self.global_dimensions()["scales"]
        return [centre_nm[2] / scales[0], centre_nm[1] / scales[1], centre_nm[0] / scales[2]]

    def zoom(self) -> float:
        """Cross-section scale (voxels per screen pixel): the first layer fits ~400 pixels,
        but never zoomed out beyond one voxel per pixel."""
        first = next((la for la in self.layers if la.name == "raw"), self.layers[0])
        z, y, x = first.shape[first.channels :]
        return min(1.0, max(y, x) / 400.0)


def choose_threshold(config: Config, threshold: float | None) -> tuple[float | None, str]:
    """The segmentation threshold to show, and why: ``--threshold``; else ``extract.threshold``
    when 05 extracted it; else the best by ``scores.json``; else ``extract.threshold``."""
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError("--threshold", f"must be in [0, 1], got {threshold}")
        if segmentation_source(config, threshold) is None:
            have = ", ".join(f"{t:g}" for t in lut_thresholds(config)) or "none"
            raise ConfigError(
                "--threshold",
                f"no segmentation at {threshold:g}: not extracted ({config.segmentation_ds(threshold)})"
                f" and no LUT under {config.run.dir / 'luts'} (LUTs for: {have})",
            )
        return threshold, "--threshold"
    t = config.extract.threshold
    if extracted_segmentation(config, t) is not None:
        return t, "extract.threshold, extracted by 05"
    best = best_threshold(read_scores(config.run.dir))
    if best is not None:
        return best, "best VOI in scores.json"
    return t, "extract.threshold"


LAYER_KEYS = ("raw", "affinities", "boundary", "fragments", "segmentation", "gt")
DEFAULT_SHOW = ("raw", "affinities", "boundary", "segmentation")
"""Layers visible when the viewer opens; the others are one click away in the layer list."""


def parse_show(text: str | None) -> tuple[str, ...]:
    """``--show``: comma-separated layer keys, or ``all``."""
    if text is None:
        return DEFAULT_SHOW
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    if keys == ("all",):
        return LAYER_KEYS
    bad = [k for k in keys if k not in LAYER_KEYS]
    if bad:
        raise ConfigError(
            "--show", f"unknown layer {bad[0]!r}; known: all, {', '.join(LAYER_KEYS)}"
        )
    return keys


def plan(
    config: Config, threshold: float | None = None, show: tuple[str, ...] = DEFAULT_SHOW
) -> ViewPlan:
    """Every layer the run has, ready to serve; those in ``show`` visible."""
    t, reason = choose_threshold(config, threshold)
    run = open_layers(config, t)
    view = ViewPlan(threshold=t, reason=reason, notes=list(run.notes))

    def add(key, name, kind, array, source, shader=None, data=None):
        view.layers.append(
            Layer(
                key=key,
                name=name,
                kind=kind,
                source=source,
                data=array._source_data if data is None else data,
                voxel_size=tuple(int(v) for v in array.voxel_size),
                offset=tuple(int(o) for o in array.roi.offset),
                channels=array.channel_dims,
                visible=key in show,
                shader=shader,
            )
        )

    if run.raw is not None:
        add("raw", "raw", "image", run.raw, str(config.raw))
    if run.affs is not None:
        affs = str(config.fragment_affs)
        if run.affs.channel_dims != 1 or run.affs.shape[0] < 3:
            view.notes.append(f"affinities {affs}: not 3+ channels, shown as is")
            add("affinities", "affinities", "image", run.affs, affs)
        else:
            add("affinities", "affinities", "image", run.affs, affs, shader=AFFS_SHADER)
    if run.boundary is not None:
        add("boundary", "boundary", "image", run.boundary, str(config.fragments.boundary))
    if run.fragments is not None:
        add("fragments", "fragments", "segmentation", run.fragments, str(config.fragments_ds))
    seg = run.segmentation
    if seg is not None:
        data = RelabelledVolume(seg) if seg.lut is not None else None
        add("segmentation", seg.name, "segmentation", seg.array, seg.describe(), data=data)
    if run.gt is not None:
        add("gt", "ground truth", "segmentation", run.gt, str(config.gt))
    if not view.layers:
        raise ConfigError(
            "raw",
            f"nothing to view in {config.run.dir}: no raw in the config and no outputs yet",
        )
    return view


def viewer_state(
    config: Config, threshold: float | None = None, show: tuple[str, ...] = DEFAULT_SHOW
) -> dict[str, Any]:
    """What :func:`serve` would show, as plain data: the chosen threshold (and why), the
    display dimensions and position, and each layer's key, name, type, source, shape, dtype,
    dimensions, voxel size, offset (nm), voxel offset and visibility."""
    view = plan(config, threshold, show)
    return {
        "threshold": view.threshold,
        "threshold_reason": view.reason,
        "dimensions": view.global_dimensions(),
        "position": view.position(),
        "layers": [layer.describe() for layer in view.layers],
        "notes": view.notes,
    }


def _local_volume_class():
    import neuroglancer

    class LoggedVolume(neuroglancer.LocalVolume):
        """A LocalVolume that can print one line per data chunk it serves (``--log-requests``):
        the way to see, from the server side, that a browser is really loading a layer."""

        def __init__(self, *args, layer_name: str, log: bool, **kwargs):
            super().__init__(*args, **kwargs)
            self.layer_name = layer_name
            self.log = log

        def get_encoded_subvolume(self, data_format, start, end, scale_key):
            out = super().get_encoded_subvolume(data_format, start, end, scale_key)
            if self.log:
                box = (
                    ",".join(str(int(s)) for s in start) + "-" + ",".join(str(int(e)) for e in end)
                )
                print(f"chunk {self.layer_name!r} {box} scale {scale_key}", flush=True)
            return out

    return LoggedVolume


def build_viewer(view: ViewPlan, log_requests: bool = False):
    """A ``neuroglancer.Viewer`` showing ``view`` (the server must be configured first)."""
    import neuroglancer

    volume = _local_volume_class()
    viewer = neuroglancer.Viewer()
    with viewer.txn() as s:
        g = view.global_dimensions()
        s.dimensions = neuroglancer.CoordinateSpace(**g)
        s.position = view.position()
        # Small volumes fill the panels; large ones open at one voxel per screen pixel.
        s.cross_section_scale = view.zoom()
        for layer in view.layers:
            d = layer.dimensions
            source = volume(
                layer.data,
                dimensions=neuroglancer.CoordinateSpace(**d),
                voxel_offset=list(layer.voxel_offset),
                volume_type=layer.kind,
                layer_name=layer.name,
                log=log_requests,
            )
            if layer.kind == "image":
                kwargs = {"shader": layer.shader} if layer.shader else {}
                s.layers[layer.name] = neuroglancer.ImageLayer(source=source, **kwargs)
            else:
                s.layers[layer.name] = neuroglancer.SegmentationLayer(source=source)
            s.layers[layer.name].visible = layer.visible
    return viewer


def serve(
    config: Config,
    threshold: float | None = None,
    bind: str = "127.0.0.1",
    port: int = 8080,
    log_requests: bool = False,
    show: tuple[str, ...] = DEFAULT_SHOW,
) -> tuple[Any, str, ViewPlan]:
    """Start serving (in a background thread) and return ``(viewer, url, plan)``."""
    import neuroglancer

    view = plan(config, threshold, show)
    neuroglancer.set_server_bind_address(bind, bind_port=port)
    try:
        viewer = build_viewer(view, log_requests)
    except OSError as e:
        neuroglancer.stop()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                "--port", f"{bind}:{port} is in use; pick another --port (0: any free port)"
            ) from None
        raise ConfigError("--bind", f"cannot listen on {bind}:{port}: {e.strerror or e}") from None
    return viewer, viewer.get_viewer_url(), view


def has_display() -> bool:
    """Whether opening a browser here can work: macOS/Windows, or an X11/Wayland display."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def tunnel_hint(url: str, bind: str, port: int) -> str:
    """How to reach this server from a laptop when it runs on a cluster node."""
    host = socket.gethostname()
    local = url.replace(f"//{bind}:", "//localhost:") if bind in ("127.0.0.1", "localhost") else url
    return (
        f"from another machine: ssh -L {port}:localhost:{port} {host}   then open {local}"
        if bind in ("127.0.0.1", "localhost")
        else f"listening on {bind}: anyone who can reach {host}:{port} can see this data"
    )


class ViewStage(Stage):
    """Serve the run's arrays in neuroglancer (raw, affinities, fragments, segmentation, ground
    truth) and print the URL; Ctrl-C stops."""

    name = "view"
    description = (
        "Look at a run in neuroglancer: raw, affinities, fragments, a segmentation, ground truth."
    )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--threshold",
            type=float,
            default=None,
            help="segmentation threshold to show (default: extract.threshold if extracted, "
            "else the best by scores.json)",
        )
        parser.add_argument(
            "--bind",
            default="127.0.0.1",
            help="address to listen on (default 127.0.0.1: reach it through an ssh tunnel)",
        )
        parser.add_argument(
            "--port", type=int, default=8080, help="port to listen on (0: any free port)"
        )
        parser.add_argument(
            "--no-browser",
            action="store_true",
            help="do not open a browser (never opened anyway on a machine without a display)",
        )
        parser.add_argument(
            "--show",
            default=None,
            metavar="LAYER,...",
            help=f"layers visible at start: 'all' or some of {', '.join(LAYER_KEYS)} "
            f"(default: {','.join(DEFAULT_SHOW)}; the others are in the layer list)",
        )
        parser.add_argument(
            "--log-requests",
            action="store_true",
            help="print a line for every data chunk served (to see that a browser loads data)",
        )

    def _opt(self, name: str, default: Any) -> Any:
        return getattr(self.options, name, default) if self.options is not None else default

    def check(self) -> None:
        # Viewing writes nothing, so run.dir need not be writable: check the layers instead.
        port = self._opt("port", 8080)
        if not 0 <= port <= 65535:
            raise ConfigError("--port", f"must be in 0..65535, got {port}")
        plan(self.config, self._opt("threshold", None), parse_show(self._opt("show", None)))

    def run(self, restart: bool = False) -> None:
        bind, port = self._opt("bind", "127.0.0.1"), self._opt("port", 8080)
        viewer, url, view = serve(
            self.config,
            self._opt("threshold", None),
            bind=bind,
            port=port,
            log_requests=self._opt("log_requests", False),
            show=parse_show(self._opt("show", None)),
        )
        actual_port = int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        seg = (
            f"segmentation at threshold {view.threshold:g} ({view.reason})"
            if any(la.key == "segmentation" for la in view.layers)
            else "no segmentation"
        )
        print(f"view: {self.config.run.dir}: {seg}", flush=True)
        for layer in view.layers:
            shown = "" if layer.visible else "  (hidden)"
            print(f"  {layer.name:<22} {layer.source}{shown}", flush=True)
        for note in view.notes:
            print(f"  note: {note}", flush=True)
        print(f"neuroglancer: {url}", flush=True)
        print(tunnel_hint(url, bind, actual_port), flush=True)
        if not self._opt("no_browser", False) and has_display():
            webbrowser.open(url)
        print("serving; Ctrl-C to stop", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("\nview: stopped", flush=True)
        finally:
            import neuroglancer

            neuroglancer.stop()
        del viewer
        return None
