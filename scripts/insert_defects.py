"""Insert imaging defects into a real EM volume (seeded), and derive per-crop tags from them.

``python scripts/insert_defects.py IN.h5 OUT.h5 --seed 1 [--tags TAGS.csv --every 5]``

Writes ``OUT.h5`` in the CREMI layout: ``volumes/raw`` with defects and empty resin inserted
(:mod:`marlseg.weak_labels.defects` documents the procedure), ``volumes/labels/defects`` (the
exact truth, 1 = defect), and the input's ``volumes/labels/neuron_ids`` and
``volumes/predictions/*`` copied unchanged where present. ``--tags``: a tags CSV for
``weak_labels.tags``, 20 x 20 crops of every ``--every``-th section, tag 1 when at least 25 %
of the crop is defect (the ``weak_labels.derive`` rule), paths relative to the CSV.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import h5py

from marlseg.config import DatasetRef
from marlseg.weak_labels.defects import DefectSettings, insert_defects
from marlseg.weak_labels.tags import TAG_HEADER_2D, derive_tags


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tags", type=Path, default=None)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument(
        "--resin", type=float, default=DefectSettings.resin_fraction, help="resin_fraction"
    )
    args = ap.parse_args(argv)
    with h5py.File(args.src, "r") as f:
        raw_ds = f["volumes/raw"]
        raw, attrs = raw_ds[:], dict(raw_ds.attrs)
        extra = {
            k: (f[k][:], dict(f[k].attrs))
            for k in ("volumes/labels/neuron_ids", "volumes/predictions/boundary_p1")
            if k in f
        }
    out, truth = insert_defects(raw, args.seed, DefectSettings(resin_fraction=args.resin))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(args.out, "w") as f:
        for key, data, a in [
            ("volumes/raw", out, attrs),
            ("volumes/labels/defects", truth, attrs),
            *[(k, d, a) for k, (d, a) in extra.items()],
        ]:
            f[key] = data
            f[key].attrs.update(a)
        f.attrs["defects"] = f"inserted into {args.src.name} with seed {args.seed}"
    print(f"{args.out}: {truth.mean():.1%} of voxels are defects (seed {args.seed})")
    if args.tags is not None:
        tags = derive_tags(
            DatasetRef(path=args.out, dataset="volumes/raw"),
            DatasetRef(path=args.out, dataset="volumes/labels/defects"),
            (20, 20),
            0.25,
        )
        rel = Path(os.path.relpath(args.out.absolute(), args.tags.absolute().parent)).as_posix()
        lines = [
            f"# Tags for {rel}: 20 x 20 crops of every {args.every}th section, 1 = at least 25 %",
            "# of the crop is an imaging defect or empty resin. Made by scripts/insert_defects.py.",
            ",".join(TAG_HEADER_2D),
        ]
        lines += [
            f"{rel},volumes/raw,{t.box[0]},{t.box[1]},{t.box[2]},{t.box[4]},{t.box[5]},{t.tag}"
            for t in tags
            if t.box[0] % args.every == 0
        ]
        args.tags.write_text("\n".join(lines) + "\n")
        print(f"{args.tags}: {len(lines) - 3} tagged crops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
