"""Fragment quality guard of issue 20: on fib_train's boundary map, the blockwise chain 02-06
(the shipped ``configs/fib_train_boundary.json``: default seeded watershed, and the fast
``fragments.method=waterz``) keeps its best VOI within 0.10 of one in-memory waterz pass over
the same affinities (waterz's own watershed and agglomeration, the same merge function and
thresholds). Speed-ups that change what the chain computes must not buy their speed here."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest

from marlseg import metrics
from marlseg import watershed as W
from marlseg.affinities import boundary_to_affinities
from tests.test_postprocess_helpers import DATA, make_config, read_zarr, run_chain

pytestmark = pytest.mark.slow

MARGIN = 0.10


def best_voi(scores: list[dict]) -> float:
    return min(r["voi_split"] + r["voi_merge"] for r in scores)


@pytest.fixture(scope="module")
def reference() -> tuple[float, np.ndarray]:
    """Best VOI of one in-memory waterz pass over fib_train's affinities, and the affinities."""
    import waterz

    with h5py.File(DATA, "r") as f:
        boundary = f["volumes/predictions/boundary_p1"][:]
        gt = f["volumes/labels/neuron_ids"][:]
    config = make_config(Path("unused"), None, "unused")
    affs = boundary_to_affinities(boundary)
    function = W.scoring_function(config.agglomerate.merge_function)
    vois = []
    for seg in waterz.agglomerate(
        affs, thresholds=config.segments.thresholds, scoring_function=function
    ):
        s = metrics.evaluate(seg, gt, ignore_label=0)
        vois.append(s["voi_split"] + s["voi_merge"])
    return min(vois), affs


@pytest.mark.parametrize("method", ["watershed", "waterz"])
def test_chain_voi_within_waterz_pass(tmp_path, mongo_uri, reference, method):
    ref_voi, affs = reference
    config = make_config(
        tmp_path / "run",
        mongo_uri,
        f"quality_{method}_{uuid.uuid4().hex[:8]}",
        f"fragments.method={method}",
    )
    summaries = run_chain(config)
    assert all(summaries[s].ok for s in ("fragments", "agglomerate", "extract", "evaluate"))
    chain = best_voi(json.loads((Path(config.run.dir) / "scores.json").read_text()))
    print(f"\n{method}: chain best VOI {chain:.4f}, in-memory waterz {ref_voi:.4f}")
    assert chain <= ref_voi + MARGIN
    if method == "waterz":
        frags = read_zarr(Path(config.fragments_ds.path), config.fragments_ds.dataset)
        # waterz leaves only pure membrane (no affinity above its low threshold) unlabelled
        assert frags.min() == 0 and affs[:, frags == 0].max() < 1e-4
