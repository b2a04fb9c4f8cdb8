"""08 -> 02..06 with the where-to-segment mask, end to end on a real volume with inserted
defects (real daisy workers, the embedded MongoDB): the blocks with nothing to segment are
skipped and reported, and VOI where the chain segments is unchanged.

The chain runs on fib_train's boundary map (no network: 01 predict follows the mask through the
same hook, :func:`marlseg.weak_labels.blocks.keep_blocks`, unit-tested below).
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate, Roi

from marlseg import metrics
from marlseg.config import load_config
from marlseg.errors import ConfigError
from marlseg.weak_labels.blocks import keep_blocks
from tests.test_postprocess_helpers import CONFIG, DATA, ROOT, read_zarr, run_chain, run_stage

sys.path.insert(0, str(ROOT / "scripts"))


def _mask(tmp_path: Path, data: np.ndarray) -> Path:
    path = tmp_path / "m.zarr"
    ds = zarr.open_group(str(path), mode="w").create_dataset("m", data=data, chunks=data.shape)
    ds.attrs.update({"voxel_size": [10, 10, 10], "offset": [0, 0, 0]})
    return path


def test_keep_blocks_follows_the_mask_for_01_to_05_only(tmp_path):
    m = np.zeros((4, 10, 10), np.uint8)
    m[3, 9, 9] = 1  # one voxel to segment, in the last block
    path = _mask(tmp_path, m)
    sets = [f'weak_labels.mask={{"path": "{path}", "dataset": "m"}}']
    total = Roi((0, 0, 0), (40, 100, 100))
    shape = Coordinate((20, 50, 50))
    cfg = load_config(None, [*sets, "weak_labels.skip_blocks=true"])
    for stage in ("predict", "fragments", "agglomerate", "extract"):
        keep = keep_blocks(cfg, stage, total, shape, [2, 2, 2])
        assert keep.sum() == 1 and keep[1, 1, 1]
    for stage in ("segments", "evaluate", "edge_rl"):
        assert keep_blocks(cfg, stage, total, shape, [2, 2, 2]) is None
    assert keep_blocks(load_config(None, sets), "fragments", total, shape, [2, 2, 2]) is None
    missing = load_config(None, [f"run.dir={tmp_path}", "weak_labels.skip_blocks=true"])
    with pytest.raises(ConfigError, match="weak_labels.mask: no mask at"):
        keep_blocks(missing, "fragments", total, shape, [2, 2, 2])


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 08 trains a detector and agents, then two chains run
def test_chain_with_the_mask_skips_blocks_and_keeps_voi(tmp_path, mongo_uri):
    from insert_defects import main as insert

    vol = tmp_path / "vol.h5"
    # resin over nearly half the width: whole blocks with nothing to segment
    assert insert([str(DATA), str(vol), "--seed", "1", "--resin", "0.45"]) == 0

    def config(name: str, *sets: str):
        return load_config(
            CONFIG,
            [
                f"run.dir={tmp_path / name}",
                f"db.uri={mongo_uri}",
                f"db.name=wl_{name}_{uuid.uuid4().hex[:8]}",
                f"fragments.boundary.path={vol}",
                f"gt.path={vol}",
                f'raw={{"path": "{vol}", "dataset": "volumes/raw"}}',
                "segments.thresholds=[0.5, 0.7]",
                "workers.num_workers=1",
                *sets,
            ],
        )

    truth = {"path": str(vol), "dataset": "volumes/labels/defects"}
    learned = config(
        "learned",
        "weak_labels.skip_blocks=true",
        f'weak_labels.derive={{"truth": {json.dumps(truth)}}}',
        "weak_labels.device=cpu",
        "weak_labels.detector.iterations=600",
        "weak_labels.selfplay.iterations=150",
        "weak_labels.selfplay.warmup_iterations=30",
        "weak_labels.selfplay.max_tiles=256",
    )
    run_stage(learned, "weak_labels")  # 08 end to end: tags -> detector -> game -> mask
    with h5py.File(vol, "r") as f:
        defects = f["volumes/labels/defects"][:]
    made = read_zarr(tmp_path / "learned" / "weak_mask.zarr", "volumes/mask")
    assert made.shape == defects.shape and set(np.unique(made)) <= {0, 1}
    # The chain's handling of a mask is checked with the exact where-to-segment mask, so that
    # it does not depend on how well this short 08 run learned (docs/weak_labels.json scores
    # that, against its baselines).
    exact = _mask(tmp_path, (defects == 0).astype(np.uint8))
    masked = config(
        "masked",
        "weak_labels.skip_blocks=true",
        f'weak_labels.mask={{"path": "{exact}", "dataset": "m"}}',
    )
    with_mask = run_chain(masked)
    plain = config("plain")
    without = run_chain(plain)

    frag = with_mask["fragments"]
    assert frag.blocks_masked > 0 and frag.blocks_done + frag.blocks_masked == frag.blocks_total
    for s in ("agglomerate", "extract"):
        assert with_mask[s].blocks_masked > 0, s
        assert with_mask[s].blocks_done + with_mask[s].blocks_masked == with_mask[s].blocks_total
    assert without["fragments"].blocks_masked == 0
    saved = sum(without[s].wall_s - with_mask[s].wall_s for s in ("fragments", "agglomerate"))
    print(
        f"\nmasked out {frag.blocks_masked}/{frag.blocks_total} blocks; 02+03 time saved {saved:.1f} s"
    )

    mask = defects == 0
    assert 0.3 < mask.mean() < 0.95
    with h5py.File(vol, "r") as f:
        gt = f["volumes/labels/neuron_ids"][:]
    ref_a, ref_b = plain.segmentation_ds(), masked.segmentation_ds()
    a = read_zarr(Path(ref_a.path), ref_a.dataset)
    b = read_zarr(Path(ref_b.path), ref_b.dataset)
    va = metrics.evaluate(a[mask], gt[mask], ignore_label=0)
    vb = metrics.evaluate(b[mask], gt[mask], ignore_label=0)
    voi_a, voi_b = va["voi_split"] + va["voi_merge"], vb["voi_split"] + vb["voi_merge"]
    print(f"VOI on the kept region: {voi_a:.4f} without the mask, {voi_b:.4f} with it")
    assert abs(voi_a - voi_b) <= 0.02
