"""Split an annotated crop into a *selection* part and a *report* part along z.

A user's one annotated crop has to serve two purposes that must not share voxels: choosing
(checkpoints, thresholds, post-processing settings) and reporting (the figure others trust).
This writes two CREMI-layout HDF5 files, sections ``[select)`` and ``[report)`` of the crop, with
a gap of unused sections between them so that no object is cut into both parts without a
margin. Offsets are kept in world units, so each part knows where it lay in the crop.

``python -m marlseg.splits IN.h5 SELECT.h5 REPORT.h5 --select 0:24 --report 26:50``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from marlseg.errors import ConfigError, MarlsegError

DATASETS = ("volumes/raw", "volumes/labels/neuron_ids")


def parse_range(text: str, field: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise ConfigError(field, f"expected BEGIN:END sections, got {text!r}") from None
    if not 0 <= a < b:
        raise ConfigError(field, f"expected 0 <= BEGIN < END, got {text!r}")
    return a, b


def write_part(src: Path, dst: Path, z: tuple[int, int], role: str) -> None:
    """Sections ``z`` of every dataset in :data:`DATASETS` of ``src``, to ``dst``."""
    import h5py

    with h5py.File(src, "r") as fin:
        for name in DATASETS:
            if name not in fin:
                raise ConfigError(str(src), f"has no dataset {name}")
        depth = fin[DATASETS[0]].shape[0]
        if z[1] > depth:
            raise ConfigError(f"--{role}", f"sections {z[0]}:{z[1]} exceed {src}'s {depth}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".tmp")
        with h5py.File(tmp, "w") as fout:
            for key, value in fin.attrs.items():
                fout.attrs[key] = value
            fout.attrs["split"] = f"{role}: sections {z[0]}:{z[1]} of {src.name}"
            for name in DATASETS:
                ds = fin[name]
                res = np.asarray(ds.attrs.get("resolution", [1, 1, 1]))
                offset = np.asarray(ds.attrs.get("offset", [0, 0, 0])).copy()
                offset[0] += z[0] * res[0]
                out = fout.create_dataset(
                    name, data=ds[z[0] : z[1]], compression="gzip", compression_opts=6
                )
                out.attrs["resolution"] = res
                out.attrs["offset"] = offset
        tmp.replace(dst)


def split(src: Path, select: Path, report: Path, zs: tuple[int, int], zr: tuple[int, int]):
    if max(zs[0], zr[0]) < min(zs[1], zr[1]):
        raise ConfigError("--report", f"sections {zr} overlap the selection part {zs}")
    write_part(src, select, zs, "select")
    write_part(src, report, zr, "report")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m marlseg.splits", description=__doc__)
    p.add_argument("crop", type=Path)
    p.add_argument("select_out", type=Path)
    p.add_argument("report_out", type=Path)
    p.add_argument("--select", default="0:24")
    p.add_argument("--report", default="26:50")
    a = p.parse_args(argv)
    try:
        if not a.crop.is_file():
            raise ConfigError(str(a.crop), "no such file")
        split(
            a.crop,
            a.select_out,
            a.report_out,
            parse_range(a.select, "--select"),
            parse_range(a.report, "--report"),
        )
    except MarlsegError as e:
        print(f"error: {e.line()}", file=sys.stderr)
        return e.exit_code
    print(f"wrote {a.select_out} ({a.select}) and {a.report_out} ({a.report})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
