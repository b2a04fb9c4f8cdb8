"""``workflows/tune.py``: choose the post-processing parameters on an annotated crop.

A user with a small labelled crop (``gt``, optionally cut to ``tune.offset``/``tune.shape``) of
the volume they want segmented sweeps the fragment parameters (``tune.fragments``: a grid over
any key of the ``fragments`` section, block shape included), the merge functions
(``tune.merge_functions``) and the thresholds (``tune.thresholds``), and gets the best setting
back as a config (``run.dir/tuned.json``) plus every row (``run.dir/tune.json``).

It runs in memory on the crop, with the functions the blockwise stages use, on the same
block grid, so what it picks is what the chain does:

* **fragments** (as ``02``): for every block of ``fragments.block_shape`` on the grid anchored
  at the affinities' begin that the crop needs, :func:`marlseg.watershed.compute_fragments`
  over the block's write ROI grown by ``fragments.context``, cropped to the write ROI, given the
  block's id range (:func:`marlseg.watershed.block_fragment_ids`). Fragments are cut at the
  block faces exactly where the chain cuts them, so the block shape is a real choice.
* **merge scores** (as ``03``): per block of ``agglomerate.block_shape``,
  :func:`marlseg.watershed.agglomerate_edges` over the read ROI, keeping the edges whose ``u``
  the block owns.
* **scores** (as ``04`` + ``06``): one contingency table of fragments against ``gt`` per
  fragment setting; per threshold, the connected components of the edges with score ``<=``
  the threshold (:func:`marlseg.luts.connected_luts`) relabel its fragment column
  and :func:`marlseg.metrics.scores` gives VOI and ARAND.

Reuse: the affinities are read (or predicted, when the config has neither stored affinities
nor a boundary map) once, over the region every setting needs; fragments and the table are
computed once per fragment setting and shared by every merge function; the agglomeration runs
once per (fragment setting, merge function) and every threshold comes from its edges.

When the crop is the whole volume the emulation is exact (a test compares it with the
chain). When it is a sub-ROI, blocks that the crop's agglomeration blocks read around them
are not computed: their context sees no fragments there, which moves scores of edges near the
faces of the crop's block cover a little.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array

from marlseg import metrics
from marlseg import watershed as W
from marlseg.config import Config, FragmentsConfig
from marlseg.errors import ConfigError
from marlseg.luts import apply_lut, connected_luts
from marlseg.stage import Stage
from marlseg.volumes import check_multiple, dataset_exists, open_volume, read
from marlseg.watershed import compute_fragments

UNUSED_BY = {
    "watershed": ("mutex_offsets", "mutex_bias"),
    "mutex": ("boundary_threshold", "min_seed_distance"),
}
"""Fragment parameters a method ignores: settings differing only in these are one setting."""


@dataclass
class Counts:
    """How much work a sweep did (what the reuse saves shows here)."""

    affinity_reads: int = 0
    fragment_runs: int = 0
    fragment_blocks: int = 0
    agglomerations: int = 0
    agglomerate_blocks: int = 0
    scorings: int = 0


@dataclass
class Setting:
    """One point of the fragment grid."""

    section: FragmentsConfig
    values: dict[str, Any]
    """The grid keys' values (what the table shows)."""
    baseline: bool = False
    """The input config's own setting."""


@dataclass
class Result:
    rows: list[dict[str, Any]]
    """One per (fragment setting, merge function), best VOI first."""
    crop: Roi
    keys: list[str]
    counts: Counts
    seconds: float
    thresholds: list[float] = field(default_factory=list)

    @property
    def best(self) -> dict[str, Any]:
        return self.rows[0]


# --------------------------------------------------------------------------- inputs


def crop_roi(config: Config) -> tuple[Roi, Array]:
    """The crop to tune on, and ``gt`` (one-line errors for a missing or misplaced one)."""
    if config.gt is None:
        raise ConfigError("gt", "required: the annotated crop to tune on ({path, dataset})")
    gt = open_volume(config.gt, field="gt")
    dtype = np.dtype(gt.dtype)
    if gt.channel_dims or dtype.kind not in "ui" or len(gt.voxel_size) != 3:
        raise ConfigError("gt.dataset", f"{config.gt} is not a 3D label volume ({dtype})")
    t = config.tune
    offset = Coordinate(t.offset) if t.offset is not None else gt.roi.offset
    shape = Coordinate(t.shape) if t.shape is not None else gt.roi.end - offset
    field_ = "tune.shape" if t.shape is not None else "tune.offset"
    if any(int(s) <= 0 for s in shape):
        raise ConfigError(field_, f"the crop at {list(offset)} nm is empty")
    roi = Roi(offset, shape)
    vs = gt.voxel_size
    check_multiple("tune.offset", list(roi.offset - gt.roi.offset), vs)
    check_multiple("tune.shape", list(roi.shape), vs)
    if not gt.roi.contains(roi):
        raise ConfigError(field_, f"crop {roi} nm is not inside gt's ROI {gt.roi}")
    return roi, gt


class Affinities:
    """The affinities of the region a sweep needs, read (or predicted) once."""

    def __init__(self, config: Config):
        self.config = config
        f = config.fragments
        self.predicted = f.boundary is None and not dataset_exists(config.fragment_affs)
        if self.predicted and f.affs is None and config.raw is not None:
            from marlseg.inference import checkpoint_path

            ckpt = checkpoint_path(config.predict.checkpoint)
            if not ckpt.is_file():
                raise ConfigError("predict.checkpoint", f"file not found: {ckpt}")
            raw = open_volume(config.raw, field="raw")
            self.roi, self.voxel_size = raw.roi, raw.voxel_size
        else:
            from marlseg.affinities import affinity_source

            self.source = affinity_source(config)  # one line if there are none
            self.predicted = False
            self.roi, self.voxel_size = self.source.roi, self.source.voxel_size

    def read(self, region: Roi) -> np.ndarray:
        """Float32 ``(3, z, y, x)`` over ``region``, padded as the chain pads outside the data."""
        if not self.predicted:
            return self.source.read(region)
        return self._predict(region)

    def _predict(self, region: Roi) -> np.ndarray:
        """As ``01_predict.py`` writes and ``02`` reads them: the chain's window grid,
        quantised to uint8, affinity 0 outside the raw."""
        from marlseg.affinities import to_unit
        from marlseg.inference import (
            checkpoint_path,
            default_margin,
            load_model,
            predict_region,
            select_device,
            to_uint8,
        )

        p = self.config.predict
        raw = open_volume(self.config.raw, field="raw")
        vs = raw.voxel_size
        device = select_device(p.device, "predict.device")
        model, _ = load_model(checkpoint_path(p.checkpoint), device)
        inp = list(model.encoder.img_size)
        margin = default_margin(inp) if p.margin is None else [m // v for m, v in zip(p.margin, vs)]
        inside = region.intersect(raw.roi)
        begin = (inside.begin - raw.roi.begin) / vs
        affs = predict_region(
            model, raw._source_data, begin, inside.shape / vs, inp, margin, device, p.batch_size
        )
        stored = Array(to_unit(to_uint8(affs[:3])), inside.offset, vs)
        return to_unit(read(stored, region, fill_value=0))


# --------------------------------------------------------------------------- the grid


def _key(section: FragmentsConfig) -> str:
    params = section.model_dump(mode="json", exclude={"workers", *UNUSED_BY[section.method]})
    return json.dumps(params, sort_keys=True)


def fragment_settings(config: Config) -> list[Setting]:
    """The product of ``tune.fragments``, plus the config's own setting; duplicates (settings
    that differ only in parameters their method ignores) once."""
    grid = config.tune.fragments
    keys = list(grid)
    base = config.fragments.model_dump()
    settings: list[Setting] = []
    seen: dict[str, Setting] = {}
    own = Setting(config.fragments, {k: base[k] for k in keys}, baseline=True)
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        section = FragmentsConfig.model_validate({**base, **values})
        key = _key(section)
        if key not in seen:
            seen[key] = Setting(section, values)
            settings.append(seen[key])
    if _key(config.fragments) in seen:
        seen[_key(config.fragments)].baseline = True
    else:
        settings.append(own)
    return settings


def check_merge_function(name: str, field_: str = "tune.merge_functions") -> str:
    """The waterz scoring function of ``name``, usable here (one line if not)."""
    try:
        function = W.scoring_function(name)
    except KeyError:
        raise ConfigError(field_, f"unknown merge function {name!r}") from None
    if not W.is_prebuilt(function):
        try:
            import witty  # noqa: F401
        except ImportError:
            raise ConfigError(
                field_, f"{name!r} is not compiled into waterz and witty is not installed"
            ) from None
    return function


def merge_functions(config: Config) -> list[str]:
    """``tune.merge_functions``, with the config's own first if it is not among them."""
    names = list(dict.fromkeys(config.tune.merge_functions))
    own = config.agglomerate.merge_function
    return names if own in names else [own, *names]


# --------------------------------------------------------------------------- geometry


def _snap(roi: Roi, origin: Coordinate, block: Coordinate) -> Roi:
    """``roi`` grown to whole blocks of the grid anchored at ``origin``."""
    begin = origin + ((roi.begin - origin) // block) * block
    end = origin + ((roi.end - origin + block - Coordinate((1,) * 3)) // block) * block
    return Roi(begin, end - begin)


def blocks(total: Roi, block: Coordinate, region: Roi) -> list[tuple[int, Roi]]:
    """``(index, write ROI)`` of the blocks (grid anchored at ``total``'s begin, shrunk at its
    end as daisy's ``fit="shrink"``) that intersect ``region``; ``index`` is the block's
    C-order position in the whole grid, as the fragments stage numbers it."""
    grid = [-(-int(t) // int(b)) for t, b in zip(total.shape, block)]
    cover = _snap(region, total.offset, block).intersect(total)
    first = (cover.begin - total.offset) / block
    counts = [-(-int(s) // int(b)) for s, b in zip(cover.shape, block)]
    out = []
    for pos in np.ndindex(*counts):
        offset = total.offset + (first + Coordinate(pos)) * block
        write = Roi(offset, block).intersect(total)
        out.append((W.block_index(offset, total.offset, block, grid), write))
    return out


def _cut(data: np.ndarray, data_roi: Roi, roi: Roi, vs: Coordinate) -> np.ndarray:
    begin = (roi.begin - data_roi.begin) / vs
    shape = roi.shape / vs
    index = tuple(slice(int(b), int(b) + int(s)) for b, s in zip(begin, shape))
    return data[(slice(None),) * (data.ndim - 3) + index]


# --------------------------------------------------------------------------- the sweep


class Sweep:
    """Everything a sweep shares: the crop, its labels, the affinities of the region every
    setting needs, and the counts of the work done."""

    def __init__(self, config: Config):
        self.config = config
        self.crop, gt = crop_roi(config)
        self.affinities = Affinities(config)
        self.vs = self.affinities.voxel_size
        self.total = self.affinities.roi
        if gt.voxel_size != self.vs:
            raise ConfigError(
                "gt", f"voxel size {list(gt.voxel_size)} differs from the affinities' {self.vs}"
            )
        if not self.total.contains(self.crop):
            raise ConfigError(
                "tune.shape" if config.tune.shape else "gt",
                f"crop {self.crop} nm is not inside the affinities' ROI {self.total}",
            )
        self.gt = read(gt, self.crop)
        self.settings = fragment_settings(config)
        self.merge_functions = merge_functions(config)
        self.functions = {m: check_merge_function(m) for m in self.merge_functions}
        for s in self.settings:
            self._check_geometry(s.section)
        self.counts = Counts()
        self.affs_roi = Roi((0, 0, 0), (0, 0, 0))
        self.affs = np.zeros((3, 0, 0, 0), np.float32)

    def _agg_block(self, section: FragmentsConfig) -> Coordinate:
        return Coordinate(self.config.agglomerate.block_shape or section.block_shape)

    def _check_geometry(self, section: FragmentsConfig) -> None:
        if section.mask is not None:
            raise ConfigError("fragments.mask", "tune does not support masked fragments")
        if section.method == "watershed" and section.min_seed_distance < 1:
            raise ConfigError("tune.fragments.min_seed_distance", "must be >= 1")
        check_multiple("tune.fragments.block_shape", section.block_shape, self.vs)
        check_multiple("tune.fragments.context", section.context, self.vs)
        agg = self._agg_block(section)
        if any(a % b for a, b in zip(agg, section.block_shape)):
            raise ConfigError(
                "tune.fragments.block_shape",
                f"{section.block_shape} nm does not divide agglomerate.block_shape {list(agg)}",
            )
        check_multiple("agglomerate.context", self.config.agglomerate.context, self.vs)
        if any(c < v for c, v in zip(self.config.agglomerate.context, self.vs)):
            raise ConfigError("agglomerate.context", "at least one voxel per axis is needed")

    def fragment_region(self, section: FragmentsConfig) -> Roi:
        """The fragment blocks of the agglomeration blocks that cover the crop."""
        agg = self._agg_block(section)
        return _snap(self.crop, self.total.offset, agg).intersect(self.total)

    def load_affinities(self) -> None:
        """Read (or predict) the affinities once, over what every setting reads."""
        ctx_agg = Coordinate(self.config.agglomerate.context)
        region = None
        for s in self.settings:
            ctx = Coordinate(max(a, b) for a, b in zip(s.section.context, ctx_agg))
            need = self.fragment_region(s.section).grow(ctx, ctx)
            region = need if region is None else region.union(need)
        self.affs_roi = region
        self.affs = self.affinities.read(region)
        self.counts.affinity_reads += 1

    def affs_in(self, roi: Roi) -> np.ndarray:
        return _cut(self.affs, self.affs_roi, roi, self.vs)

    def fragments(self, section: FragmentsConfig) -> tuple[Array, np.ndarray]:
        """The fragments of ``02`` over :meth:`fragment_region`, and their ids."""
        region = self.fragment_region(section)
        block = Coordinate(section.block_shape)
        ctx = Coordinate(section.context)
        out = np.zeros(tuple(region.shape / self.vs), dtype=np.uint64)
        per_block = int(np.prod(block / self.vs))
        for index, write in blocks(self.total, block, region):
            frags = compute_fragments(self.affs_in(write.grow(ctx, ctx)), section)
            inner = _cut(frags, write.grow(ctx, ctx), write, self.vs)
            _cut(out, region, write, self.vs)[...] = W.block_fragment_ids(inner, index, per_block)
            self.counts.fragment_blocks += 1
        self.counts.fragment_runs += 1
        ids = np.unique(out)
        return Array(out, region.offset, self.vs), ids[ids != 0]

    def edges(
        self, frags: Array, section: FragmentsConfig, function: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The RAG edges ``03`` writes, ``(u, v, merge_score)``."""
        ctx = Coordinate(self.config.agglomerate.context)
        us, vs_, scores = [], [], []
        for _, write in blocks(self.total, self._agg_block(section), frags.roi):
            read_roi = write.grow(ctx, ctx)
            data = read(frags, read_roi, fill_value=0)
            owned = np.unique(_cut(data, read_roi, write, self.vs))
            owned = owned[owned != 0]
            self.counts.agglomerate_blocks += 1
            if owned.size == 0:
                continue
            u, v, s = W.agglomerate_edges(self.affs_in(read_roi), data, function)
            keep = np.isin(u, owned)
            us.append(u[keep])
            vs_.append(v[keep])
            scores.append(s[keep])
        self.counts.agglomerations += 1
        if not us:
            return np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0)
        return np.concatenate(us), np.concatenate(vs_), np.concatenate(scores)

    def table(self, frags: Array) -> metrics.Table:
        """Fragments against ``gt`` inside the crop (what ``06`` tabulates)."""
        seg = read(frags, self.crop)
        return metrics.contingency(seg, self.gt, self.config.evaluate.ignore_label)

    def score(
        self, table: metrics.Table, ids: np.ndarray, edges: tuple, thresholds: list[float]
    ) -> list[dict[str, float]]:
        """VOI and ARAND at every threshold, from one set of edges (``04`` + ``06``)."""
        luts = connected_luts(ids, [edges], thresholds)
        rows = []
        for t in thresholds:
            seg = apply_lut(table.seg, *luts[float(t)])
            s = metrics.scores(metrics.Table(seg, table.gt, table.count))
            rows.append({"threshold": float(t), **s, "voi": s["voi_split"] + s["voi_merge"]})
            self.counts.scorings += 1
        return rows

    def run(self, progress: bool = True) -> Result:
        from marlseg.validation import quiet_stdout

        t0 = time.perf_counter()
        thresholds = sorted({round(float(t), 6) for t in self.config.tune.thresholds})
        self.load_affinities()
        bar = _progress(len(self.settings) * len(self.merge_functions), progress)
        try:
            with quiet_stdout():  # waterz's C++ core reports every merge on stdout
                rows = [row for s in self.settings for row in self._rows(s, thresholds, bar)]
                _flush_c_stdout()
        finally:
            bar.close()
        rows.sort(key=lambda r: (r["voi"], r["arand"]))
        for rank, r in enumerate(rows, 1):
            r["rank"] = rank
        keys = list(self.config.tune.fragments)
        return Result(rows, self.crop, keys, self.counts, time.perf_counter() - t0, thresholds)

    def _rows(self, setting: Setting, thresholds: list[float], bar) -> list[dict[str, Any]]:
        """The rows of one fragment setting: its fragments once, one agglomeration per merge
        function, every threshold from that agglomeration's edges."""
        t1 = time.perf_counter()
        frags, ids = self.fragments(setting.section)
        table = self.table(frags)
        frag_s = time.perf_counter() - t1
        rows = []
        for name in self.merge_functions:
            bar.set_description(_label(setting.values, name))
            t2 = time.perf_counter()
            edges = self.edges(frags, setting.section, self.functions[name])
            scores = self.score(table, ids, edges, thresholds)
            best = min(scores, key=lambda r: (r["voi"], r["arand"]))
            rows.append(
                {
                    "fragments": setting.values,
                    "merge_function": name,
                    "baseline": setting.baseline and name == self.config.agglomerate.merge_function,
                    "num_fragments": int(ids.size),
                    **best,
                    "best_arand": min(scores, key=lambda r: (r["arand"], r["voi"])),
                    "scores": scores,
                    "seconds": round(frag_s + time.perf_counter() - t2, 2),
                }
            )
            frag_s = 0.0  # the fragments' time counts once, on their first row
            bar.update(1)
        return rows


def _flush_c_stdout() -> None:
    """Flush C's stdio buffers while stdout is still silenced (else what waterz printed last
    surfaces after the silence)."""
    import ctypes

    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


def _label(values: dict[str, Any], merge_function: str) -> str:
    return " ".join([*(f"{k}={v}" for k, v in values.items()), merge_function])


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="setting", disable=not enabled, file=sys.stderr)


# --------------------------------------------------------------------------- outputs


def tuned_config(config: Config, result: Result) -> dict[str, Any]:
    """The input config (the keys it sets) with the best setting's values."""
    data = config.model_dump(mode="json", exclude_unset=True)
    best = result.best
    data.setdefault("fragments", {}).update(best["fragments"])
    data.setdefault("agglomerate", {})["merge_function"] = best["merge_function"]
    data.setdefault("segments", {})["thresholds"] = result.thresholds
    data.setdefault("extract", {})["threshold"] = best["threshold"]
    if (data.get("evaluate") or {}).get("thresholds") is not None:
        data["evaluate"]["thresholds"] = None  # score them all
    Config.model_validate(data)  # what we write loads
    return data


def table_text(result: Result, limit: int | None = None) -> str:
    """The printed table: one row per setting, best VOI first (``*``: the input config)."""
    cols = [*result.keys, "merge_function", "threshold", "voi_split", "voi_merge", "voi", "arand"]
    cells = []
    for r in result.rows[:limit] if limit else result.rows:
        vals = [json.dumps(r["fragments"][k]).replace(" ", "") for k in result.keys]
        vals += [r["merge_function"], f"{r['threshold']:.3f}"]
        vals += [f"{r[k]:.4f}" for k in ("voi_split", "voi_merge", "voi", "arand")]
        cells.append((f"{r['rank']}{'*' if r['baseline'] else ''}", vals))
    widths = [max(len(c), *(len(v[i]) for _, v in cells)) for i, c in enumerate(cols)]
    lines = ["  rank  " + "  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    for rank, vals in cells:
        lines.append(f"  {rank:>4}  " + "  ".join(v.rjust(w) for v, w in zip(vals, widths)))
    return "\n".join(lines)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def write_outputs(config: Config, result: Result) -> tuple[Path, Path]:
    """``tune.output`` (default ``run.dir/tuned.json``) and ``run.dir/tune.json``."""
    out = Path(config.tune.output or Path(config.run.dir) / "tuned.json")
    rows_path = Path(config.run.dir) / "tune.json"
    _write_json(out, tuned_config(config, result))
    summary = {
        "crop": {"offset": list(result.crop.offset), "shape": list(result.crop.shape)},
        "seconds": round(result.seconds, 2),
        "counts": vars(result.counts),
        "thresholds": result.thresholds,
        "best": {k: v for k, v in result.best.items() if k != "scores"},
        "rows": result.rows,
    }
    _write_json(rows_path, summary)
    return out, rows_path


class TuneStage(Stage):
    """Sweep fragment and agglomeration parameters on the annotated crop; write the best."""

    name = "tune"
    description = (
        "Sweep fragment/agglomeration parameters and thresholds on the gt crop; write the best "
        "as a config"
    )

    def check(self) -> None:
        super().check()
        self.sweep = Sweep(self.config)
        out = self.config.tune.output
        if out is not None and Path(out).is_dir():
            raise ConfigError("tune.output", f"{out} is a directory; name a JSON file")

    def run(self, restart: bool = False) -> Result:
        sweep = getattr(self, "sweep", None) or Sweep(self.config)
        n = len(sweep.settings) * len(sweep.merge_functions)
        voxels = int(np.prod(sweep.crop.shape / sweep.vs))
        print(
            f"tune: {len(sweep.settings)} fragment settings x {len(sweep.merge_functions)} "
            f"merge function(s) = {n} settings, {len(set(self.config.tune.thresholds))} thresholds, "
            f"crop {sweep.crop} ({voxels / 1e6:.2f} Mvoxel)",
            flush=True,
        )
        result = sweep.run(progress=True)
        out, rows_path = write_outputs(self.config, result)
        c = result.counts
        print(f"\n{table_text(result)}")
        print(
            f"\n  (* = the input config) {result.seconds:.1f} s: affinities read "
            f"{c.affinity_reads}x, fragments {c.fragment_runs}x ({c.fragment_blocks} blocks), "
            f"agglomerations {c.agglomerations}x ({c.agglomerate_blocks} blocks)"
        )
        b = result.best
        print(
            f"best: {_label(b['fragments'], b['merge_function'])} at threshold "
            f"{b['threshold']:.3f}: VOI {b['voi']:.4f} (split {b['voi_split']:.4f}, merge "
            f"{b['voi_merge']:.4f}), ARAND {b['arand']:.4f}"
        )
        edge = {result.thresholds[0], result.thresholds[-1]}
        if len(result.thresholds) > 2 and b["threshold"] in edge:
            print(
                f"warning: tune.thresholds: the best threshold {b['threshold']} is at the end of "
                "the grid; a wider grid may find a better one"
            )
        print(f"tuned config: {out}\nall rows: {rows_path}", flush=True)
        return result
