"""One page per run: ``run.dir/report.html``, self-contained so it opens offline (and survives
being copied off the cluster or attached to an e-mail).

It collects, whatever of it exists:

- scores (``scores.json``: VOI split/merge and ARAND per threshold, the best marked);
- the stage summaries (``summaries/*.json``: blocks, workers, wall time, voxels/s);
- curves plotted from every CSV under ``pretrain/``, ``train/`` (and ``edge_rl/``) (loss, MSE/HOG, mask ratio,
  entropy, value loss, reward, ...): one small plot per numeric column against the iteration;
- every PNG under the run directory (overlays, training snapshots, reconstructions, edge-RL
  curves, ...), grouped by folder; folders with many (snapshots) are sampled evenly, the
  latest always included.

Images are embedded as base64 data URIs. ``python -m marlseg.report RUN_DIR`` writes it by
hand.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from marlseg.errors import ConfigError, MarlsegError
from marlseg.segmentations import best_threshold

MAX_IMAGES_PER_FOLDER = 24
"""Folders with more PNGs (training snapshots) are sampled evenly down to this many."""
MAX_IMAGE_BYTES = 8 * 1024 * 1024
"""Larger PNGs are listed, not embedded."""
X_COLUMNS = ("iteration", "iter", "step", "epoch", "it")
"""Column names taken as the x axis of a CSV, in this order of preference."""
SKIP_DIRS = {"db", "tracking", "logs", "__pycache__"}
"""Run sub-folders never searched for images (large, and hold none)."""

SUMMARY_COLUMNS = [
    ("stage", "stage"),
    ("blocks_total", "blocks"),
    ("blocks_done", "done"),
    ("blocks_skipped", "skipped"),
    ("blocks_failed", "failed"),
    ("blocks_orphaned", "orphaned"),
    ("num_workers", "workers"),
    ("worker_type", "type"),
    ("wall_s", "wall (s)"),
    ("voxels", "voxels"),
    ("voxels_per_s", "voxels/s"),
]

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td.l, th.l { text-align: left; }
tr.best td { background: #e6f4e6; font-weight: bold; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 640px; border: 1px solid #ddd; }
figcaption { font-size: 0.8em; color: #555; }
.note { color: #777; font-size: 0.85em; }
"""


def _img(data: bytes, caption: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    cap = html.escape(caption)
    return f'<figure><img src="{uri}" alt="{cap}"><figcaption>{cap}</figcaption></figure>'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def _table(header: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    out = ["<table><tr>"]
    out += [
        f'<th class="{"l" if i == 0 else ""}">{html.escape(h)}</th>' for i, h in enumerate(header)
    ]
    out.append("</tr>")
    for n, row in enumerate(rows):
        cls = f' class="{classes[n]}"' if classes and classes[n] else ""
        cells = [
            f'<td class="{"l" if i == 0 else ""}">{html.escape(_fmt(v))}</td>'
            for i, v in enumerate(row)
        ]
        out.append(f"<tr{cls}>{''.join(cells)}</tr>")
    out.append("</table>")
    return "".join(out)


# --- scores and summaries -----------------------------------------------------------------


def scores_section(run_dir: Path) -> str:
    path = run_dir / "scores.json"
    if not path.exists():
        return '<p class="note">not evaluated yet (no scores.json)</p>'
    try:
        scores = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        return f'<p class="note">scores.json unreadable: {html.escape(str(e))}</p>'
    best = best_threshold(scores)
    rows, classes = [], []
    for s in sorted(scores, key=lambda s: float(s.get("threshold", math.inf))):
        split, merge = s.get("voi_split"), s.get("voi_merge")
        total = (
            split + merge
            if isinstance(split, int | float) and isinstance(merge, int | float)
            else None
        )
        rows.append([s.get("threshold"), split, merge, total, s.get("arand")])
        classes.append("best" if best is not None and s.get("threshold") == best else "")
    header = ["threshold", "VOI split", "VOI merge", "VOI total", "ARAND"]
    text = (
        f"<p>best threshold (lowest VOI total): <b>{_fmt(best)}</b></p>" if best is not None else ""
    )
    return text + _table(header, rows, classes)


def summaries_section(run_dir: Path) -> str:
    files = sorted((run_dir / "summaries").glob("*.json"))
    if not files:
        return '<p class="note">no stage summaries (summaries/*.json)</p>'
    known = [k for k, _ in SUMMARY_COLUMNS]
    rows, extras = [], []
    for f in files:
        try:
            s = json.loads(f.read_text())
        except json.JSONDecodeError:
            extras.append(f"{f.name}: unreadable")
            continue
        if not isinstance(s, dict):
            continue
        s.setdefault("stage", f.stem)
        rows.append([s.get(k) for k in known])
        other = {k: v for k, v in s.items() if k not in known and k not in ("log_dir",)}
        if other.get("first_error") is None:
            other.pop("first_error", None)
        if other:
            extras.append(f"{s['stage']}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in other.items()))
    out = _table([h for _, h in SUMMARY_COLUMNS], rows)
    if extras:
        out += "<ul class=note>" + "".join(f"<li>{html.escape(e)}</li>" for e in extras) + "</ul>"
    return out


# --- curves from CSVs ---------------------------------------------------------------------


def read_csv(path: Path) -> dict[str, list[float]]:
    """Numeric columns of a CSV (non-numeric columns dropped, empty cells as NaN). Rows that do
    not parse (a line being written while we read) are skipped."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            return {}
        columns: dict[str, list[float]] = {h: [] for h in header}
        numeric = dict.fromkeys(header, True)
        for row in reader:
            if len(row) != len(header):
                continue
            for h, cell in zip(header, row):
                cell = cell.strip()
                try:
                    columns[h].append(float(cell) if cell else math.nan)
                except ValueError:
                    numeric[h] = False
                    columns[h].append(math.nan)
    return {h: v for h, v in columns.items() if numeric[h] and v}


def plot_csv(path: Path, title: str) -> bytes | None:
    """One small plot per numeric column against the iteration column (or the row number)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = read_csv(path)
    xname = next((c for c in X_COLUMNS if c in columns), None)
    if xname is None:
        xname = next((c for c in columns if c.lower() in X_COLUMNS), None)
    ys = [c for c in columns if c != xname and any(math.isfinite(v) for v in columns[c])]
    if not ys:
        return None
    n = len(ys)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.2 * ncols, 2.8 * nrows), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, ys):
        y = columns[name]
        x = columns[xname] if xname else list(range(len(y)))
        pts = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
        ax.plot(
            [p[0] for p in pts], [p[1] for p in pts], lw=1.2, marker="." if len(pts) < 30 else None
        )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xname or "row", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def curves_section(run_dir: Path, sub: str) -> str:
    folder = run_dir / sub
    files = sorted(folder.rglob("*.csv")) if folder.is_dir() else []
    if not files:
        return f'<p class="note">no CSV logs under {html.escape(sub)}/</p>'
    parts = []
    for f in files:
        rel = f.relative_to(run_dir).as_posix()
        try:
            png = plot_csv(f, rel)
        except (OSError, csv.Error, UnicodeDecodeError) as e:
            parts.append(
                f'<p class="note">{html.escape(rel)}: unreadable ({html.escape(str(e))})</p>'
            )
            continue
        if png is None:
            parts.append(f'<p class="note">{html.escape(rel)}: no numeric columns yet</p>')
        else:
            parts.append(_img(png, rel))
    return "".join(parts)


# --- images -------------------------------------------------------------------------------


def _sample(paths: list[Path], k: int) -> list[Path]:
    """``k`` evenly spaced, the first and the last included."""
    if len(paths) <= k:
        return paths
    idx = sorted({round(i * (len(paths) - 1) / (k - 1)) for i in range(k)})
    return [paths[i] for i in idx]


def images_section(run_dir: Path, exclude: Path) -> str:
    groups: dict[str, list[Path]] = {}
    for p in sorted(run_dir.rglob("*.png")):
        rel = p.relative_to(run_dir)
        if p == exclude or any(
            part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]
        ):
            continue
        groups.setdefault(rel.parent.as_posix(), []).append(p)
    if not groups:
        return '<p class="note">no images yet</p>'
    parts = []
    for folder, paths in groups.items():
        shown = _sample(paths, MAX_IMAGES_PER_FOLDER)
        more = f" ({len(shown)} of {len(paths)}, evenly spaced)" if len(shown) < len(paths) else ""
        parts.append(f"<h3>{html.escape(folder if folder != '.' else run_dir.name)}/{more}</h3>")
        for p in shown:
            rel = p.relative_to(run_dir).as_posix()
            size = p.stat().st_size
            if size > MAX_IMAGE_BYTES:
                parts.append(
                    f'<p class="note">{html.escape(rel)}: {size >> 20} MB, not embedded</p>'
                )
                continue
            parts.append(_img(p.read_bytes(), rel))
    return "".join(parts)


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` from whatever the run has produced; return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError("run.dir", f"{run_dir} does not exist")
    out = run_dir / "report.html"
    title = f"marlseg run {run_dir.resolve().name}"
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{html.escape(str(run_dir))} &middot; written '
        f"{html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
        "<h2>Scores</h2>",
        scores_section(run_dir),
        "<h2>Stages</h2>",
        summaries_section(run_dir),
        "<h2>Pretraining</h2>",
        curves_section(run_dir, "pretrain"),
        "<h2>Training</h2>",
        curves_section(run_dir, "train"),
    ]
    if (run_dir / "edge_rl").is_dir():
        body += ["<h2>Edge weights (actor-critic)</h2>", curves_section(run_dir, "edge_rl")]
    body += [
        "<h2>Images</h2>",
        images_section(run_dir, exclude=out),
    ]
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m marlseg.report RUN_DIR", file=sys.stderr)
        return 2
    try:
        print(write_report(Path(args[0])))
    except MarlsegError as e:
        print(f"error: {e.line()}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
