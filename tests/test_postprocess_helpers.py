"""Shared helpers of the post-processing tests (no tests here): configs on fib_train, running
stages in process (real daisy workers, real MongoDB), and reading back what they wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from marlseg.config import Config, load_config
from marlseg.stages import get_stage

ROOT = Path(__file__).parents[1]
DATA = ROOT / "data" / "fib_train.h5"
CONFIG = ROOT / "configs" / "fib_train_boundary.json"
CHAIN = ["fragments", "agglomerate", "segments", "extract", "evaluate"]
SCRIPTS = {
    "fragments": "02_extract_fragments.py",
    "agglomerate": "03_agglomerate.py",
    "segments": "04_find_segments.py",
    "extract": "05_extract_segmentation.py",
    "evaluate": "06_evaluate.py",
}


def make_config(run_dir: Path, mongo_uri: str | None, db_name: str, *sets: str) -> Config:
    """The shipped fib_train config with data paths made absolute, the run under ``run_dir``
    and the RAG in ``db_name`` on ``mongo_uri``."""
    overrides = [
        f"run.dir={run_dir}",
        f"db.name={db_name}",
        f"fragments.boundary.path={DATA}",
        f"gt.path={DATA}",
        *sets,
    ]
    if mongo_uri is not None:
        overrides.append(f"db.uri={mongo_uri}")
    return load_config(CONFIG, overrides)


def config_file(config: Config, path: Path) -> Path:
    path.write_text(json.dumps(config.model_dump(mode="json"), indent=2))
    return path


def run_stage(config: Config, name: str, restart: bool = False) -> Any:
    stage = get_stage(name)(config)
    stage.check()
    return stage.run(restart=restart)


def run_chain(config: Config, stages: list[str] = CHAIN) -> dict[str, Any]:
    return {name: run_stage(config, name) for name in stages}


def cli(script: str, config_path: Path, *args: str, env: dict | None = None, **kw):
    """Run a workflow script the way a user does, from the repo root (``env``: the whole
    environment; default: this one)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "workflows" / script), str(config_path), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ) if env is None else env,
        **kw,
    )


def read_zarr(path: Path, dataset: str) -> np.ndarray:
    import zarr

    return zarr.open(str(path), mode="r")[dataset][:]


def rag_rows(config: Config) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """All nodes (sorted by id) and edges (sorted by (u, v)) of the run's RAG, every row as
    stored (duplicates would show)."""
    from marlseg.db import MongoDbGraphDatabase

    with MongoDbGraphDatabase(config.db.uri, config.db.name, mode="r") as rag:
        cols = rag.read_nodes_in_roi(None, attrs=["size"])
        batches = list(rag.iter_edges(batch_size=100_000, attrs=["merge_score"]))
    n = {
        "id": cols["id"],
        "center": np.stack([cols["center_z"], cols["center_y"], cols["center_x"]], axis=1),
        "size": cols["size"].astype(np.int64),
    }
    order = np.argsort(n["id"], kind="stable")
    n = {k: v[order] for k, v in n.items()}
    e = {
        k: np.concatenate([b[k] for b in batches]) if batches else np.zeros(0)
        for k in ("u", "v", "merge_score")
    }
    order = np.lexsort((e["v"], e["u"]))
    e = {k: v[order] for k, v in e.items()}
    return n, e


def done_blocks(run_dir: Path, stage: str) -> int:
    """Blocks daisy has marked done (its tracking array is raw uint8, one chunk)."""
    root = run_dir / "tracking" / stage / "blocks" / "done" / "c"
    return int(
        sum(np.count_nonzero(np.fromfile(p, np.uint8)) for p in root.rglob("*") if p.is_file())
    )


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a.ravel(), b.ravel()], axis=1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))
