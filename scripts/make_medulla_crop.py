"""Write ``data/medulla_raw_crop.zarr``: the repo's unlabelled medulla raw for pretraining.

``python scripts/make_medulla_crop.py SOURCE.zarr [--out data/medulla_raw_crop.zarr]
[--shape Z Y X]``

SOURCE is the 250^3 FAFB-style medulla raw (``volumes/raw``, uint8, 10 nm) described in the
data README. The crop is its first ``--shape`` voxels (default 128 x 250 x 250, about 6 MB
compressed), written as zarr v2 with 64^3 blosc/zstd chunks and the source's ``resolution``,
``voxel_size`` and ``offset`` attributes, so ``configs/pretrain_medulla.json`` reads it from the
repository. The file is shipped; the script says how it was made and remakes it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numcodecs
import zarr


def make_crop(source: Path, out: Path, shape: tuple[int, int, int]) -> tuple[int, ...]:
    src = zarr.open_group(str(source), mode="r")["volumes/raw"]
    if src.ndim != 3 or any(s > h for s, h in zip(shape, src.shape)):
        raise ValueError(f"{source}: volumes/raw has shape {src.shape}, crop {shape} does not fit")
    data = src[: shape[0], : shape[1], : shape[2]]
    root = zarr.open_group(str(out), mode="w")
    dst = root.create_dataset(
        "volumes/raw",
        data=data,
        chunks=(64, 64, 64),
        compressor=numcodecs.Blosc(cname="zstd", clevel=9, shuffle=numcodecs.Blosc.BITSHUFFLE),
    )
    for key in ("resolution", "voxel_size", "offset", "axis_names", "units"):
        if key in src.attrs:
            dst.attrs[key] = src.attrs[key]
    root.attrs["source"] = f"first {list(shape)} voxels of the medulla raw volume"
    return tuple(data.shape)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("--out", type=Path, default=Path("data/medulla_raw_crop.zarr"))
    ap.add_argument("--shape", type=int, nargs=3, default=[128, 250, 250])
    args = ap.parse_args(argv)
    try:
        shape = make_crop(args.source, args.out, tuple(args.shape))
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {args.source}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({' x '.join(map(str, shape))} voxels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
