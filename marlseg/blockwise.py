"""The one blockwise runner every stage uses.

A blockwise stage describes its work — total ROI, block write shape, context, the outputs it
prepares up front, and ``process_block(block)`` — and this module does the rest: a daisy Task
with block tracking under ``run.dir/tracking/<stage>``, workers launched by
:mod:`marlseg.launchers` (local processes, Slurm or LSF jobs), a progress bar, a run summary
(printed and saved as ``run.dir/summaries/<stage>.json``), and a non-zero exit if any block
failed after its retries. No stage talks to daisy itself.

Resume contract: a block's outputs are a pure function of its inputs, written by write ROI
(zarr) or upserted under deterministic keys (MongoDB), and daisy marks it done only after
``process_block`` returned, i.e. after every write was acknowledged. Re-running a stage skips
done blocks. A stage's parameters are fingerprinted; re-running with other parameters over
blocks done with the old ones is refused (or, with ``--restart``, starts the stage afresh),
never silently mixed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import daisy
import numpy as np
from funlib.geometry import Coordinate, Roi

from marlseg.config import WorkersConfig, dump_config
from marlseg.errors import ConfigError, StageFailed
from marlseg.files import write_atomic
from marlseg.launchers import check_workers, make_launcher
from marlseg.stage import Stage
from marlseg.weak_labels.blocks import keep_blocks


@dataclass
class RunSummary:
    """What a blockwise stage did, as printed and saved."""

    stage: str
    blocks_total: int
    blocks_done: int
    """Completed in this run."""
    blocks_skipped: int
    """Already done by an earlier run (block tracking)."""
    blocks_failed: int
    blocks_orphaned: int
    """Never processed because a block they depend on failed."""
    wall_s: float
    voxels: int
    voxels_per_s: float
    """Voxels of the blocks processed in this run per second of wall time."""
    num_workers: int
    worker_type: str
    worker_failures: int
    worker_restarts: int
    log_dir: str
    first_error: str | None = None
    blocks_masked: int = 0
    """Skipped because ``weak_labels.mask`` has nothing to segment there (not in ``skipped``)."""

    @property
    def ok(self) -> bool:
        return self.blocks_failed == 0 and self.blocks_orphaned == 0

    def table(self) -> str:
        rows = [
            ("stage", self.stage),
            (
                "blocks",
                f"{self.blocks_total} total, {self.blocks_done} done, "
                f"{self.blocks_skipped} skipped (already done), {self.blocks_failed} failed, "
                f"{self.blocks_orphaned} orphaned"
                + (f", {self.blocks_masked} masked out" if self.blocks_masked else ""),
            ),
            (
                "workers",
                f"{self.num_workers} {self.worker_type}, {self.worker_failures} died, "
                f"{self.worker_restarts} restarted",
            ),
            ("wall time", f"{self.wall_s:.1f} s"),
            ("throughput", f"{self.voxels_per_s / 1e6:.3f} Mvoxel/s over {self.voxels} voxels"),
            ("logs", self.log_dir),
        ]
        return "\n".join(f"  {k:<11} {v}" for k, v in rows)


class BlockwiseStage(Stage):
    """A stage that runs block by block on daisy. Subclasses fill in the geometry and work."""

    read_write_conflict: ClassVar[bool] = True
    """Whether neighbouring blocks (whose read ROIs overlap a block's write ROI) must not run
    at the same time. Stages that write only inside their write ROI and read only inputs can
    say False and run every block in parallel."""

    # --- scheduler side -------------------------------------------------
    def check(self) -> None:
        """The run dir is writable and the workers can be launched (e.g. ``srun`` exists),
        before any output is prepared. Subclasses call this first, then check their inputs."""
        super().check()
        check_workers(self.name, self.workers)

    def geometry(self) -> tuple[Roi, Coordinate, Coordinate]:
        """``(total write ROI, block write shape, context)`` in world units."""
        raise NotImplementedError

    def voxel_size(self) -> Coordinate:
        raise NotImplementedError

    def prepare(self) -> None:
        """Create outputs up front (zarr datasets, database indexes). Runs once, before any
        worker, in the scheduler."""

    def fingerprint(self) -> dict[str, Any]:
        """Everything a block's output depends on. Blocks done under another fingerprint are
        never reused."""
        return {}

    def skip_mask(self, block_grid_shape: list[int]) -> np.ndarray | None:
        """Optional per-block mask: ``True`` = process, ``False`` = skip (e.g. outside a
        processing mask)."""
        return None

    @contextlib.contextmanager
    def services(self) -> Iterator[None]:
        """Services the workers need while the stage runs (e.g. the embedded database)."""
        yield

    def worker_config(self):
        """The config the workers read: this one, paths made absolute."""
        return self.config.resolved()

    # --- worker side ----------------------------------------------------
    def init_worker(self) -> None:
        """Once per worker process before its first block (load a model, connect a db)."""

    def process_block(self, block: daisy.Block) -> None:
        raise NotImplementedError

    # --- the runner -----------------------------------------------------
    @classmethod
    def stage_ref(cls) -> str:
        """What the worker command names: the registry key, or ``module:Class`` for stages
        outside the registry (plugins, tests)."""
        from marlseg.stages import STAGES

        if STAGES.get(cls.name) == f"{cls.__module__}:{cls.__qualname__}":
            return cls.name
        return f"{cls.__module__}:{cls.__qualname__}"

    @property
    def workers(self) -> WorkersConfig:
        return self.config.workers_for(self.name)

    def run(self, restart: bool = False) -> RunSummary:
        summary = run_blockwise(self, restart=restart)
        if not summary.ok:
            raise StageFailed(
                self.name,
                f"{summary.blocks_failed} block(s) failed and {summary.blocks_orphaned} were "
                f"not processed after retries; first error: {summary.first_error or 'unknown'}; "
                f"worker logs: {summary.log_dir}",
            )
        return summary


def tracking_dir(stage: BlockwiseStage) -> Path:
    return stage.run_dir / "tracking" / stage.name


def _check_fingerprint(
    stage: BlockwiseStage, restart: bool, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    track = tracking_dir(stage)
    params_file = track / "params.json"
    current = json.loads(json.dumps({**stage.fingerprint(), **(extra or {})}, default=str))
    if params_file.exists():
        previous = json.loads(params_file.read_text())
        if previous != current and not restart:
            old, new = _flatten(previous), _flatten(current)
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(
                stage.name,
                f"parameters changed since blocks were done ({', '.join(changed)}): "
                "re-run with --restart to recompute this stage, or use a fresh run.dir",
            )
    if restart and track.exists():
        shutil.rmtree(track)
    return current


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"fragments": {"min_size": 3}}`` -> ``{"fragments.min_size": 3}`` (to name what changed)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _abandonment(error: BaseException) -> str:
    """One line from daisy's multi-line abandonment error: its counts and the last worker
    error's last line (daisy's closing advice names its own Python API, not our config)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Fix the worker error")]
    if not lines:
        return "no reason given"
    counts = re.sub(r"^.*?\):\s*", "", lines[0]).replace(" Last worker error:", "").rstrip(".")
    last = re.sub(r"^[\w.]+(Error|Failed|Exception): ", "", lines[-1])
    return counts if len(lines) == 1 else f"{counts}; last: {last}"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run_blockwise(stage: BlockwiseStage, restart: bool = False) -> RunSummary:
    """Run ``stage`` over its total ROI with block tracking; return its summary."""
    total_roi, write_shape, context = stage.geometry()
    # issue 19: blocks with nothing to segment (weak_labels.skip_blocks); which ones is part of
    # the fingerprint, so a changed mask is never mixed with blocks done under another
    grid = [-(-int(t) // int(w)) for t, w in zip(total_roi.shape, write_shape)]
    keep = keep_blocks(stage.config, stage.name, total_roi, write_shape, grid)
    extra = None if keep is None else {"weak_labels_keep": hashlib.sha1(keep.tobytes()).hexdigest()}
    fingerprint = _check_fingerprint(stage, restart, extra)
    voxel_size = stage.voxel_size()
    write_roi = Roi((0,) * len(write_shape), write_shape)
    read_roi = write_roi.grow(context, context)
    workers = stage.workers
    track = tracking_dir(stage)
    log_dir = stage.run_dir / "logs" / stage.name
    summaries = stage.run_dir / "summaries"

    with stage.services():
        try:
            stage.prepare()
        except OSError as e:  # disk full, read-only mount, quota: say so in one line
            raise StageFailed(
                stage.name,
                f"cannot write outputs: {e.strerror or e} ({e.filename or stage.run_dir})",
            ) from None
        track.mkdir(parents=True, exist_ok=True)
        write_atomic(track / "params.json", json.dumps(fingerprint, indent=2, sort_keys=True))
        config_path = track / "worker_config.json"
        write_atomic(config_path, dump_config(stage.worker_config()), private=True)
        launcher = make_launcher(stage.stage_ref(), workers, config_path, log_dir, stage.name)
        daisy.logging.set_log_basedir(log_dir / "daisy")

        total_read_roi = total_roi.grow(context, context)
        task_kwargs: dict[str, Any] = dict(
            read_write_conflict=stage.read_write_conflict,
            fit="shrink",
            max_workers=workers.num_workers,
            max_retries=workers.max_retries,
            max_worker_restarts=workers.max_worker_restarts,
            tracking_path=str(track / "blocks"),
        )
        if workers.block_timeout:
            task_kwargs["timeout"] = workers.block_timeout
        task = daisy.Task(stage.name, total_read_roi, read_roi, write_roi, launcher, **task_kwargs)
        mask = stage.skip_mask(list(task.block_grid_shape))
        masked = 0
        if keep is not None:
            own = np.ones(keep.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
            masked = int((own & ~keep).sum())
            mask = own & keep
        if mask is not None:
            task = daisy.Task(
                stage.name,
                total_read_roi,
                read_roi,
                write_roi,
                launcher,
                # daisy 2's skip_mask is True where a block is SKIPPED; ours is True where it
                # is processed (issue 5: found by the fragments mask test, minimal fix)
                skip_mask=~np.asarray(mask, dtype=bool),
                **task_kwargs,
            )
        host = workers.host or ("127.0.0.1" if workers.type == "local" else None)
        t0 = time.perf_counter()
        try:
            # issue 6: no cluster job outlives the run (exit, error, Ctrl-C, SIGTERM)
            with launcher.session():
                states = daisy.run_blockwise(
                    [task], return_states=True, progress=True, host=host, summary=False
                )
        except RuntimeError as e:  # abandonment: worker restart cap exhausted
            launcher.raise_submit_error()  # issue 6: "<stage>.workers: srun failed: <why>"
            # daisy's own advice names its Python API; ours names the config key
            raise StageFailed(
                stage.name,
                f"gave up after repeated worker deaths: {_abandonment(e)} (the cap is "
                f"workers.max_worker_restarts={workers.max_worker_restarts}); "
                f"worker logs: {log_dir}",
            ) from None
        wall = time.perf_counter() - t0

    state = states[stage.name]
    done = state.completed_count - state.skipped_count
    # blocks at the volume's edge are shrunk ("fit=shrink"): count voxels of the volume, shared
    # evenly over its blocks, not full blocks
    total_voxels = int(np.prod(total_roi.shape / voxel_size))
    block_voxels = total_voxels / max(state.total_block_count, 1)
    summary = RunSummary(
        stage=stage.name,
        blocks_total=state.total_block_count,
        blocks_done=done,
        blocks_skipped=state.skipped_count - masked,
        blocks_failed=state.failed_count,
        blocks_orphaned=state.orphaned_count,
        wall_s=round(wall, 3),
        voxels=round(done * block_voxels),
        voxels_per_s=round(done * block_voxels / wall, 1) if wall > 0 else 0.0,
        num_workers=workers.num_workers,
        worker_type=workers.type,
        worker_failures=state.worker_failure_count,
        worker_restarts=state.worker_restart_count,
        log_dir=str(log_dir),
        first_error=_last_line(state.first_worker_error) or None,
        blocks_masked=masked,
    )
    summaries.mkdir(parents=True, exist_ok=True)
    (summaries / f"{stage.name}.json").write_text(json.dumps(asdict(summary), indent=2))
    print(f"\n{stage.name} summary\n{summary.table()}", flush=True)
    return summary
