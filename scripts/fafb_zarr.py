"""Make a FAFB-style zarr (``volumes/raw``, 64^3 chunks, voxel size and offset attributes) from
a dataset of an HDF5 or zarr container, mirror-tiled to ``--shape``.

``configs/pretrain_medulla.json`` reads ``data/medulla_raw.zarr``, which the repo does not ship;
this makes a stand-in of the same layout and size from the repo's own FIB-SEM (fly medulla)::

    python scripts/fafb_zarr.py data/fib_train.h5 volumes/raw data/medulla_raw.zarr

(or copy a real FAFB-style volume there). The output is refused if it exists.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi

from marlseg.config import DatasetRef
from marlseg.errors import MarlsegError
from marlseg.volumes import open_volume, prepare_volume, read, write


def mirror(n_out: int, n_in: int) -> np.ndarray:
    i = np.arange(n_out) % (2 * n_in)
    return np.where(i < n_in, i, 2 * n_in - 1 - i)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="HDF5 or zarr container")
    ap.add_argument("dataset", help="dataset inside it, e.g. volumes/raw")
    ap.add_argument("out", type=Path, help="the zarr container to create")
    ap.add_argument("--shape", type=int, nargs=3, default=[250, 250, 250], help="voxels, z y x")
    ap.add_argument("--chunk", type=int, default=64)
    args = ap.parse_args(argv)
    try:
        if args.out.exists():
            raise MarlsegError(str(args.out), "exists; delete it or choose another path")
        src = open_volume(DatasetRef(path=args.source, dataset=args.dataset), field="source")
        data = read(src, src.roi)
        vs = Coordinate(src.voxel_size)
        data = data[np.ix_(*(mirror(n, s) for n, s in zip(args.shape, data.shape)))]
        roi = Roi((0, 0, 0), Coordinate(args.shape) * vs)
        ref = DatasetRef(path=args.out, dataset="volumes/raw")
        out = prepare_volume(ref, roi, vs, data.dtype, vs * args.chunk, field="out")
        write(out, roi, data)
        print(f"{args.out}/volumes/raw: {tuple(args.shape)} voxels of {tuple(vs)} nm")
        return 0
    except MarlsegError as e:
        print(f"error: {e.line()}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
