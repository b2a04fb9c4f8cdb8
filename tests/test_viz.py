"""Looking at results: overlays and the errors they mark, the neuroglancer view, the report.

A small synthetic run (8 x 32 x 40 voxels of 40 x 8 x 8 nm, offset off the origin) carries
planted errors: ground-truth bodies 1 and 2 are one segment (a merge), body 4 is cut in two
segments (a split). The figures must mark exactly those voxels; the viewer must place every
layer where it is in the world; the report must embed what the run holds.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from funlib.geometry import Roi

from marlseg import volumes
from marlseg.config import Config, DatasetRef
from marlseg.errors import ConfigError
from marlseg.luts import Lut
from marlseg.overlays import write_overlays
from marlseg.report import write_report
from marlseg.section_errors import find_errors
from marlseg.sections import choose_sections, read_section
from marlseg.segmentations import best_threshold
from marlseg.viewer import viewer_state

REPO = Path(__file__).parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

VS = (40, 8, 8)
OFFSET = (80, 16, 24)
SHAPE = (8, 32, 40)
ROI = Roi(OFFSET, tuple(s * v for s, v in zip(SHAPE, VS)))
SCORES = [
    {"threshold": 0.3, "voi_split": 1.2, "voi_merge": 0.1, "arand": 0.3},
    {"threshold": 0.5, "voi_split": 0.4, "voi_merge": 0.3, "arand": 0.2},
    {"threshold": 0.7, "voi_split": 0.2, "voi_merge": 0.9, "arand": 0.4},
]


def ground_truth() -> np.ndarray:
    gt = np.zeros(SHAPE, np.uint64)
    gt[:, :, :12] = 1
    gt[:, :, 12:24] = 2
    gt[:, :16, 24:] = 3
    gt[:, 16:, 24:] = 4
    gt[:, 0, :] = 0  # an unlabelled row: not scored
    return gt


def planted_segmentation(gt: np.ndarray) -> np.ndarray:
    seg = np.zeros_like(gt)
    seg[(gt == 1) | (gt == 2)] = 100  # merge: two bodies, one segment
    seg[gt == 3] = 300
    x = np.arange(SHAPE[2])[None, None, :]
    seg[(gt == 4) & (x < 32)] = 401  # split: one body, two segments
    seg[(gt == 4) & (x >= 32)] = 402
    return seg


def fragments_of(seg: np.ndarray) -> np.ndarray:
    """Each segment cut in two along z: a LUT is needed to get the segments back."""
    z = np.arange(SHAPE[0])[:, None, None]
    frags = np.where(seg != 0, seg * 10 + (z >= SHAPE[0] // 2), 0)
    return frags.astype(np.uint64)


def put(path: Path, dataset: str, data: np.ndarray, channels: int | None = None):
    ref = DatasetRef(path=path, dataset=dataset)
    a = volumes.prepare_volume(ref, ROI, VS, data.dtype, ROI.shape, num_channels=channels)
    volumes.write(a, ROI, data)
    return ref


def make_run(tmp_path: Path, extract: bool = False, affs: bool = True) -> Config:
    """A run as the chain leaves it, with or without the extracted segmentation."""
    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    gt = ground_truth()
    seg = planted_segmentation(gt)
    frags = fragments_of(seg)
    raw = (rng.integers(90, 200, SHAPE)).astype(np.uint8)
    raw[seg == 0] = 20
    data = tmp_path / "data.zarr"
    cfg = {
        "run": {"dir": str(run)},
        "raw": {"path": str(data), "dataset": "raw"},
        "gt": {"path": str(data), "dataset": "gt"},
        "extract": {"threshold": 0.5},
    }
    put(data, "raw", raw)
    put(data, "gt", gt)
    config = Config.model_validate(cfg)
    if affs:
        a = np.zeros((3, *SHAPE), np.uint8)
        a[0, 1:] = (gt[1:] == gt[:-1]) * 255
        a[1, :, 1:] = (gt[:, 1:] == gt[:, :-1]) * 255
        a[2, :, :, 1:] = (gt[:, :, 1:] == gt[:, :, :-1]) * 255
        put(config.affs.path, config.affs.dataset, a, channels=3)
    put(config.fragments_ds.path, config.fragments_ds.dataset, frags)
    (run / "luts").mkdir(parents=True)
    f_ids = np.unique(frags[frags != 0])
    np.savez(run / "luts" / "merge_score_0.500.npz", fragment_ids=f_ids, segment_ids=f_ids // 10)
    np.savez(run / "luts" / "merge_score_0.300.npz", fragment_ids=f_ids, segment_ids=f_ids)
    if extract:
        ref = config.segmentation_ds(0.5)
        put(ref.path, ref.dataset, seg)
    (run / "scores.json").write_text(json.dumps(SCORES))
    return config


# --- errors ---------------------------------------------------------------------------------


def test_find_errors_marks_exactly_the_planted_merge_and_split():
    gt = ground_truth()[3]
    seg = planted_segmentation(ground_truth())[3]
    e = find_errors(seg, gt)
    assert [(m.segment, sorted(m.bodies)) for m in e.merges] == [(100, [1, 2])]
    assert [(s.body, sorted(s.segments)) for s in e.splits] == [(4, [401, 402])]
    np.testing.assert_array_equal(e.merge_ids != 0, (gt == 1) | (gt == 2))
    np.testing.assert_array_equal(e.split_ids != 0, gt == 4)
    # sizes are voxels of the section: segment 100 covers 31 rows of 24 columns
    assert e.merges[0].size == 31 * 24 and e.merges[0].wrong == 31 * 12
    assert e.splits[0].size == 16 * 16 and e.splits[0].wrong == 16 * 8


def test_find_errors_ignores_small_overlaps_and_perfect_segmentations():
    gt = ground_truth()[0]
    assert not find_errors(gt, gt).merges and not find_errors(gt, gt).splits
    seg = gt.copy()
    seg[5, 12] = 1  # one voxel of body 2 in segment 1: boundary jitter, not a merge
    e = find_errors(seg, gt)
    assert e.merges == [] and e.splits == []
    assert not e.merge_ids.any() and not e.split_ids.any()


def test_lut_relabels_and_keeps_unknown_ids(tmp_path):
    np.savez(tmp_path / "l.npz", fragment_ids=[30, 10, 20], segment_ids=[3, 1, 1])
    lut = Lut.load(tmp_path / "l.npz")
    out = lut.apply(np.array([[0, 10, 20], [30, 40, 10]], np.uint64))
    np.testing.assert_array_equal(out, [[0, 1, 1], [3, 40, 1]])
    np.savez(tmp_path / "bad.npz", fragment_ids=[1, 2], segment_ids=[1])
    with pytest.raises(ConfigError, match="differ"):
        Lut.load(tmp_path / "bad.npz")


# --- overlays -------------------------------------------------------------------------------


@pytest.mark.parametrize("extract", [False, True], ids=["through-lut", "extracted"])
def test_overlays_mark_the_planted_errors(tmp_path, monkeypatch, extract):
    config = make_run(tmp_path, extract=extract)
    reads = []
    real_read = volumes.read

    def spy(array, roi, *args, **kwargs):
        reads.append(roi)
        return real_read(array, roi, *args, **kwargs)

    monkeypatch.setattr(volumes, "read", spy)
    written = write_overlays(config, SCORES)
    figures = config.run.dir / "figures"
    names = {p.name for p in written}
    # three z sections at 1/4, 1/2, 3/4 of the 8 sections (global z = 2 + k) and one xz
    zs = ["z0004", "z0006", "z0008"]
    for s in [*zs, "xz_y0018"]:
        assert {f"overlay_{s}.png", f"errors_{s}.png", f"errors_{s}.npz"} <= names
    assert {"scores.png", "errors.json"} <= names
    assert all(p.exists() and p.stat().st_size > 0 for p in written)
    # only sections were read: every ROI is one voxel thick in z or in y
    assert reads and all(r.shape[0] == VS[0] or r.shape[1] == VS[1] for r in reads)

    gt = ground_truth()
    for s, k in zip(zs, (2, 4, 6)):
        stored = np.load(figures / f"errors_{s}.npz")
        np.testing.assert_array_equal(stored["merge_ids"] != 0, (gt[k] == 1) | (gt[k] == 2))
        np.testing.assert_array_equal(stored["split_ids"] != 0, gt[k] == 4)
        assert set(np.unique(stored["merge_ids"])) == {0, 100}
        assert set(np.unique(stored["split_ids"])) == {0, 4}
        assert list(stored["roi_offset"]) == [OFFSET[0] + k * VS[0], OFFSET[1], OFFSET[2]]
    # the xz section at y = 18 (global) = row 16: body 4 is split there, bodies 1+2 merged
    xz = np.load(figures / "errors_xz_y0018.npz")
    np.testing.assert_array_equal(xz["merge_ids"] != 0, (gt[:, 16] == 1) | (gt[:, 16] == 2))
    np.testing.assert_array_equal(xz["split_ids"] != 0, gt[:, 16] == 4)

    report = json.loads((figures / "errors.json").read_text())
    assert report["threshold"] == 0.5  # the best by VOI
    assert ("luts" in report["segmentation"]) != extract
    first = report["sections"][0]
    assert [m["segment"] for m in first["merges"]] == [100]
    assert [s["body"] for s in first["splits"]] == [4]

    # the PNGs are real images of the right kind: the error figure has the marked colours
    import matplotlib.image as mpimg

    img = mpimg.imread(figures / "errors_z0006.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 200
    assert np.ptp(img[..., :3]) > 0.5  # not blank


def test_overlays_skip_missing_layers(tmp_path):
    config = make_run(tmp_path, affs=False)
    (config.run.dir / "luts" / "merge_score_0.500.npz").unlink()
    written = write_overlays(config, SCORES)
    names = {p.name for p in written}
    # no affinities, no segmentation at the best threshold: overlays of what exists, no errors
    assert "overlay_z0006.png" in names and "scores.png" in names
    assert not any(n.startswith("errors") for n in names)


def test_overlays_without_scores_use_extract_threshold(tmp_path):
    config = make_run(tmp_path, extract=True)
    written = write_overlays(config, [])
    names = {p.name for p in written}
    assert "scores.png" not in names and "errors_z0006.png" in names


def test_sections_of_another_voxel_size_are_sampled_on_the_section_grid(tmp_path):
    """Raw at twice the lateral resolution of the labels lands voxel for voxel in place."""
    fine = (40, 4, 4)
    data = np.arange(8 * 64 * 80, dtype=np.uint32).reshape(8, 64, 80)
    ref = DatasetRef(path=tmp_path / "fine.zarr", dataset="raw")
    a = volumes.prepare_volume(ref, ROI, fine, data.dtype, ROI.shape)
    volumes.write(a, ROI, data)
    sections = choose_sections(ROI, VS, num_z=1)
    xy, xz = sections
    assert xy.name == "z0006" and xz.name == "xz_y0018" and xy.shape == (32, 40)
    img = read_section(a, xy)
    # section pixel (r, c) samples the fine voxel under the coarse voxel's centre, which is
    # the corner (8r + 4 nm) between fine voxels 2r and 2r + 1: the half-open 2r + 1
    np.testing.assert_array_equal(img, data[4, 1::2, 1::2])
    img = read_section(a, xz)
    np.testing.assert_array_equal(img, data[:, 33, 1::2])


def test_sections_are_cropped_around_the_centre():
    xy, xz = choose_sections(ROI, VS, num_z=1, max_size=10)
    assert xy.shape == (10, 10) and xz.shape == (8, 10)
    assert xy.roi.offset == (OFFSET[0] + 4 * 40, OFFSET[1] + 11 * 8, OFFSET[2] + 15 * 8)


def test_best_threshold():
    assert best_threshold(SCORES) == 0.5
    assert best_threshold([]) is None
    assert best_threshold([{"threshold": 0.1, "voi_split": None}]) is None


# --- viewer ---------------------------------------------------------------------------------


def test_viewer_state_lists_every_layer_in_world_units(tmp_path):
    config = make_run(tmp_path)
    state = viewer_state(config)
    assert state["threshold"] == 0.5 and "scores.json" in state["threshold_reason"]
    layers = {la["key"]: la for la in state["layers"]}
    assert list(layers) == ["raw", "affinities", "fragments", "segmentation", "gt"]
    voxel_offset = [o // v for o, v in zip(OFFSET, VS)]
    for key, la in layers.items():
        assert la["voxel_size"] == list(VS) and la["offset"] == list(OFFSET), key
        channels = 1 if key == "affinities" else 0
        assert la["voxel_offset"] == [0] * channels + voxel_offset
        assert la["shape"] == [3] * channels + list(SHAPE)
        assert la["dimensions"]["scales"] == [1] * channels + list(VS)
        assert la["dimensions"]["units"][channels:] == ["nm"] * 3
        assert la["dimensions"]["names"] == ["c^"] * channels + ["z", "y", "x"]
    assert layers["raw"]["type"] == "image" and layers["affinities"]["type"] == "image"
    assert "emitRGB" in layers["affinities"]["shader"]
    assert layers["segmentation"]["type"] == "segmentation"
    assert layers["segmentation"]["name"] == "segmentation_0.500"
    assert "merge_score_0.500.npz" in layers["segmentation"]["source"]  # relabelled via LUT
    assert layers["gt"]["visible"] is False and layers["raw"]["visible"] is True
    assert state["dimensions"] == {
        "names": ["x", "y", "z"],
        "units": ["nm"] * 3,
        "scales": [8, 8, 40],
    }
    # the centre of raw, in global voxels (x, y, z)
    assert state["position"] == [3 + 20, 2 + 16, 2 + 4]


def test_viewer_serves_what_the_state_says(tmp_path):
    """The LocalVolumes handed to neuroglancer carry the same geometry, and the lazily
    relabelled segmentation returns the planted segments."""
    from marlseg.viewer import _local_volume_class, plan

    config = make_run(tmp_path)
    view = plan(config, 0.5)
    seg = next(la for la in view.layers if la.key == "segmentation")
    np.testing.assert_array_equal(seg.data[2:4, :, :], planted_segmentation(ground_truth())[2:4])
    import neuroglancer

    for la in view.layers:
        vol = _local_volume_class()(
            la.data,
            dimensions=neuroglancer.CoordinateSpace(**la.dimensions),
            voxel_offset=list(la.voxel_offset),
            volume_type=la.kind,
            layer_name=la.name,
            log=False,
        )
        info = vol.info()
        assert list(info["voxelOffset"]) == list(la.voxel_offset)
        # a data chunk as the browser gets it: the box of the source, voxel for voxel
        start, end = np.zeros(len(la.shape), int), np.array(la.shape)
        end[-3:] = (2, 5, 7)
        payload, _ = vol.get_encoded_subvolume("npz", start, end, ",".join(["1"] * len(la.shape)))
        chunk = np.load(io.BytesIO(zlib.decompress(payload)))
        box = tuple(slice(0, e) for e in end)
        expected = la.data[box]
        np.testing.assert_array_equal(chunk, expected)
        if la.key == "segmentation":
            np.testing.assert_array_equal(chunk, planted_segmentation(ground_truth())[box])
        assert info["volumeType"] == la.kind
        scales = info["coordinateSpace"]
        assert [scales[n][0] for n in ("z", "y", "x")] == [v * 1e-9 for v in VS]


def test_viewer_threshold_choice_and_errors(tmp_path):
    config = make_run(tmp_path, extract=True)
    assert viewer_state(config)["threshold_reason"].startswith("extract.threshold")
    assert viewer_state(config, 0.3)["layers"][3]["name"] == "segmentation_0.300"
    with pytest.raises(ConfigError) as e:
        viewer_state(config, 0.9)
    assert e.value.where == "--threshold" and "LUTs for: 0.3, 0.5" in e.value.what
    empty = Config.model_validate({"run": {"dir": str(tmp_path / "nothing")}})
    with pytest.raises(ConfigError, match="nothing to view"):
        viewer_state(empty)


def test_serve_on_a_taken_port_is_a_one_line_error(tmp_path):
    import socket

    from marlseg.viewer import serve

    config = make_run(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as e:
            serve(config, bind="127.0.0.1", port=port)
    assert e.value.where == "--port" and "pick another --port" in e.value.what


def test_view_cli_errors_are_one_line(tmp_path):
    config = make_run(tmp_path)
    cfg = tmp_path / "config.json"
    cfg.write_text(config.model_dump_json())
    proc = subprocess.run(
        [sys.executable, str(REPO / "workflows" / "view.py"), str(cfg), "--threshold", "0.9"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --threshold: no segmentation at 0.9")


# --- report ---------------------------------------------------------------------------------


def test_report_embeds_curves_images_and_summaries(tmp_path):
    config = make_run(tmp_path, extract=True)
    run = config.run.dir
    write_overlays(config, SCORES)
    (run / "pretrain").mkdir()
    (run / "pretrain" / "log.csv").write_text(
        "iteration,mse,hog,mask_ratio,entropy,value_loss,reward\n"
        + "".join(f"{i},{1 / (i + 1)},{0.5},{0.75},{0.6},{0.1},{i / 10}\n" for i in range(20))
        + "20,0.1,0.5\n"  # a line being written: skipped
    )
    (run / "train").mkdir()
    (run / "train" / "loss.csv").write_text("step,loss,note\n0,1.0,a\n1,0.5,b\n")
    (run / "train" / "snapshots").mkdir()
    for i in range(30):
        shutil.copy(run / "figures" / "scores.png", run / "train" / "snapshots" / f"it{i:03d}.png")
    (run / "summaries").mkdir()
    (run / "summaries" / "fragments.json").write_text(
        json.dumps(
            {
                "stage": "fragments",
                "blocks_total": 16,
                "blocks_done": 16,
                "blocks_skipped": 0,
                "blocks_failed": 0,
                "blocks_orphaned": 0,
                "wall_s": 12.5,
                "voxels": 1000000,
                "voxels_per_s": 80000.0,
                "num_workers": 2,
                "worker_type": "local",
                "log_dir": "x",
            }
        )
    )
    path = write_report(run)
    assert path == run / "report.html"
    page = path.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    decoded = [base64.b64decode(i) for i in images]
    assert all(d.startswith(b"\x89PNG") for d in decoded)
    # two CSV plots + figures (4 overlays + 4 error figures + scores) + 24 sampled snapshots
    assert len(images) == 2 + 9 + 24
    assert "figures/errors_z0006.png" in page and "pretrain/log.csv" in page
    assert "train/snapshots/it029.png" in page and "it000.png" in page  # first and last kept
    assert "(24 of 30, evenly spaced)" in page
    assert '<td class="l">fragments</td>' in page and "80,000" in page  # summary table
    assert 'class="best"' in page and "0.5" in page  # scores table, best row marked
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched: opens offline


def test_report_of_an_empty_run(tmp_path):
    (tmp_path / "run").mkdir()
    page = write_report(tmp_path / "run").read_text()
    assert "not evaluated yet" in page and "no images yet" in page
    with pytest.raises(ConfigError):
        write_report(tmp_path / "missing")


# --- end to end: a browser loads every layer ------------------------------------------------


class _Lines:
    """Collect a process's output lines in a thread (so reading never blocks the test)."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._t.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float) -> re.Match | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                m = re.search(pattern, line)
                if m:
                    return m
            time.sleep(0.2)
        return None


def _cdp(ws_url: str, method: str, params: dict | None = None) -> dict:
    """One Chrome DevTools Protocol call (tornado is there already, as neuroglancer's server)."""
    import asyncio

    from tornado.websocket import websocket_connect

    async def call():
        conn = await websocket_connect(ws_url, max_message_size=64 << 20)
        conn.write_message(json.dumps({"id": 1, "method": method, "params": params or {}}))
        while True:
            msg = json.loads(await conn.read_message())
            if msg.get("id") == 1:
                conn.close()
                return msg

    return asyncio.run(asyncio.wait_for(call(), 60))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_view_end_to_end_in_headless_chromium(tmp_path):
    config = make_run(tmp_path)
    cfg = tmp_path / "config.json"
    cfg.write_text(config.model_dump_json())
    layers = [la["name"] for la in viewer_state(config)["layers"]]
    ARTIFACTS.mkdir(exist_ok=True)
    view = subprocess.Popen(
        [sys.executable, str(REPO / "workflows" / "view.py"), str(cfg)]
        + ["--no-browser", "--port", "0", "--log-requests", "--show", "all"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO), DISPLAY=""),
    )
    out = _Lines(view.stdout)
    browser = None
    try:
        m = out.wait_for(r"neuroglancer: (http://127\.0\.0\.1:\d+/v/\w+/)", 60)
        assert m, "\n".join(out.lines)
        url = m.group(1)
        profile = tmp_path / "chromium"
        browser = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic"]
            + ["--no-first-run", "--disable-background-networking", "--disable-component-update"]
            + ["--disable-sync", f"--user-data-dir={profile}", "--window-size=1200,800"]
            + ["--remote-debugging-port=0", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # every layer's data is asked for and served (seen from the server side)
        missing = list(layers)
        end = time.monotonic() + 90
        while missing and time.monotonic() < end:
            text = "\n".join(out.lines)
            missing = [name for name in layers if f"chunk {name!r}" not in text]
            time.sleep(0.5)
        assert not missing, f"no chunks served for {missing}:\n" + "\n".join(out.lines[-30:])
        time.sleep(2)  # let the last chunks render
        port_file = profile / "DevToolsActivePort"
        port = port_file.read_text().split()[0]
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list").read())
        page = next(t for t in targets if t["type"] == "page")
        shot = _cdp(page["webSocketDebuggerUrl"], "Page.captureScreenshot", {"format": "png"})
        png = base64.b64decode(shot["result"]["data"])
        (ARTIFACTS / "view_neuroglancer.png").write_bytes(png)
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
    finally:
        if browser is not None:
            browser.terminate()
            browser.wait(30)
        view.send_signal(signal.SIGINT)  # how users stop it
        rc = view.wait(30)
    assert rc == 0, "\n".join(out.lines[-20:])
    assert any("view: stopped" in line for line in out.lines)
