"""``06_evaluate.py``: VOI split, VOI merge and adapted Rand error against ``gt``, blockwise.

Every threshold is scored from one blockwise pass that does not depend on the thresholds:
each block reads the fragments and ``gt`` over its write ROI and saves their contingency
table, one row per overlapping (fragment, body) pair with its voxel count, to
``run.dir/eval/<fingerprint>/block_<z>_<y>_<x>.npz`` (atomically). No segmentation is ever
written. When every block is done the scheduler scores each threshold: block table by block
table, the fragment column goes through the threshold's LUT (a segment's overlap with a body
is the sum of its fragments' overlaps) and the rows are summed into the threshold's table
(:func:`marlseg.metrics.merge_tables`, ``MERGE_EVERY`` files at a time), from which
:func:`marlseg.metrics.scores` computes the figures. A volume larger than memory costs one
LUT plus one table of (segment, body) pairs, never a volume. Because the block tables do not
depend on the LUTs, re-scoring after ``04`` ran again (other thresholds, another edge score)
redoes no block: only the merge.

The scores go to ``run.dir/scores.json`` (a list of ``{"threshold", "voi_split", "voi_merge",
"arand"}``) and are printed as a table.

``evaluate.ignore_label`` (default 0) drops the voxels whose ground truth has that label;
``null`` scores every voxel. Segment 0 (voxels without a fragment) is scored like any segment.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from marlseg import metrics
from marlseg.blockwise import RunSummary
from marlseg.crashtest import maybe_die_for_test
from marlseg.errors import ConfigError
from marlseg.luts import apply_lut, check_lut, check_threshold, load_lut
from marlseg.stages.common import FragmentBlocksStage, open_fragments, ref_id, upstream_fingerprint
from marlseg.volumes import check_multiple, open_volume, read

MERGE_EVERY = 64
"""Block tables merged at a time while reducing (bounds the memory of the reduction)."""


class EvaluateStage(FragmentBlocksStage):
    """VOI and ARAND against ground truth, from blockwise contingency tables."""

    name = "evaluate"
    description = "VOI split/merge and ARAND against gt for each threshold (blockwise)."
    read_write_conflict = False

    @property
    def thresholds(self) -> list[float]:
        return [
            check_threshold(self.config, "evaluate.thresholds", t)
            for t in self.config.eval_thresholds
        ]

    def open_gt(self):
        if self.config.gt is None:
            raise ConfigError("gt", "no ground truth configured (gt: {path, dataset})")
        return open_volume(self.config.gt, field="gt")

    def check(self) -> None:
        super().check()
        frags = open_fragments(self.config)
        gt = self.open_gt()
        dtype = np.dtype(gt.dtype)
        if gt.channel_dims or dtype.kind not in "ui":
            raise ConfigError("gt.dataset", f"{self.config.gt} is not a label volume ({dtype})")
        if gt.roi != frags.roi or gt.voxel_size != frags.voxel_size:
            raise ConfigError(
                "gt",
                f"{self.config.gt} covers {gt.roi} at {list(gt.voxel_size)} nm but the fragments "
                f"cover {frags.roi} at {list(frags.voxel_size)} nm",
            )
        check_multiple("evaluate.block_shape", self.block_shape, frags.voxel_size)
        if not self.thresholds:
            raise ConfigError("evaluate.thresholds", "nothing to score")
        for t in self.thresholds:
            check_lut(self.config, "evaluate.thresholds", t)

    def fingerprint(self) -> dict:
        # what a block table depends on: not the thresholds, not the LUTs (see the module doc)
        return {
            "fragments": upstream_fingerprint(self.config),
            "gt": ref_id(self.config.gt),
            "ignore_label": self.config.evaluate.ignore_label,
            "block_shape": self.block_shape,
        }

    @property
    def tables_dir(self) -> Path:
        """Block tables of this very fingerprint: tables of other parameters never mix in."""
        digest = hashlib.sha256(
            json.dumps(self.fingerprint(), sort_keys=True, default=str).encode()
        ).hexdigest()[:12]
        return self.run_dir / "eval" / digest

    def prepare(self) -> None:
        current = self.tables_dir
        if current.parent.is_dir():  # tables of other parameters: no longer wanted
            import shutil

            for old in current.parent.iterdir():
                if old.is_dir() and old != current:
                    shutil.rmtree(old)
        current.mkdir(parents=True, exist_ok=True)

    # --- worker side -----------------------------------------------------
    def init_worker(self) -> None:
        self.fragments = open_fragments(self.config)
        self.gt = self.open_gt()
        self.out_dir = self.tables_dir
        total, block_shape, _ = self.geometry()
        self.total_offset, self.block = total.offset, block_shape

    def process_block(self, block) -> None:
        frags = read(self.fragments, block.write_roi, fill_value=0)
        gt = read(self.gt, block.write_roi, fill_value=0)
        table = metrics.contingency(frags, gt, self.config.evaluate.ignore_label)
        pos = "_".join(
            str(int(x)) for x in (block.write_roi.offset - self.total_offset) / self.block
        )
        path = self.out_dir / f"block_{pos}.npz"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, fragment=table.seg, gt=table.gt, count=table.count)
        maybe_die_for_test(self.name)  # table written to a temporary file, not yet in place
        os.replace(tmp, path)

    # --- after the blocks: merge and score ---------------------------------
    def run(self, restart: bool = False) -> RunSummary:
        summary = super().run(restart=restart)
        self.scores = self.merge_and_score()
        self.write_figures()
        return summary

    def write_figures(self) -> None:
        """Overlays of the best threshold and the run's report (issue 12). A figure that cannot
        be drawn is reported, never allowed to discard the scores just computed."""
        from marlseg.overlays import write_overlays
        from marlseg.report import write_report

        try:
            figures = write_overlays(self.config, self.scores)
            report = write_report(self.run_dir)
        except Exception as e:  # noqa: BLE001 - the scores are already safe on disk
            print(f"warning: evaluate: figures not written: {type(e).__name__}: {e}", flush=True)
            return
        print(f"  figures: {len(figures)} in {self.run_dir / 'figures'}; report: {report}")

    def merge_and_score(self) -> list[dict[str, float]]:
        files = sorted(self.tables_dir.glob("block_*.npz"))
        rows = []
        for t in self.thresholds:
            fragment_ids, segment_ids = load_lut(check_lut(self.config, "evaluate", t))
            table = metrics.Table.empty()
            for k in range(0, len(files), MERGE_EVERY):
                part = [table]
                for path in files[k : k + MERGE_EVERY]:
                    with np.load(path) as data:
                        seg = apply_lut(data["fragment"], fragment_ids, segment_ids)
                        part.append(metrics.Table(seg, data["gt"], data["count"]))
                table = metrics.merge_tables(part)
            rows.append({"threshold": t, **metrics.scores(table)})
        out = self.run_dir / "scores.json"
        out.write_text(json.dumps(rows, indent=2))
        print(
            f"\nevaluate: {len(files)} block tables, ignore_label={self.config.evaluate.ignore_label}"
        )
        print(f"  {'threshold':>9}  {'voi_split':>9}  {'voi_merge':>9}  {'voi':>7}  {'arand':>7}")
        for r in rows:
            print(
                f"  {r['threshold']:>9.3f}  {r['voi_split']:>9.4f}  {r['voi_merge']:>9.4f}  "
                f"{r['voi_split'] + r['voi_merge']:>7.4f}  {r['arand']:>7.4f}"
            )
        print(f"  scores in {out}", flush=True)
        return rows
