"""``workflows/tune.py`` on fib_train's boundary map: the sweep finds a setting no worse than
the config's, the config it writes reproduces its score, it reuses what it can, bad input is
one line, and (slow) its in-memory emulation scores what the blockwise chain scores."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest

from marlseg import tune
from marlseg.affinities import AffinitySource
from marlseg.cli import main
from marlseg.config import load_config
from tests.test_postprocess_helpers import DATA, config_file, make_config, run_chain

GRID = [
    'tune.fragments={"block_shape": [[250, 500, 500], [500, 1000, 1000]], '
    '"min_seed_distance": [5, 15]}',
    'tune.merge_functions=["hist_quant_50", "hist_quant_75"]',
]
CROP = ["tune.offset=[0, 0, 500]", "tune.shape=[300, 600, 1000]"]
"""30 x 60 x 100 voxels of fib_train (50 x 100 x 200), off the volume's begin in x: the block
grid is the volume's, so blocks are cut at the crop's faces and beyond them."""


def _config(tmp_path: Path, *sets: str):
    return make_config(tmp_path / "run", None, f"tune_{uuid.uuid4().hex[:8]}", *sets)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One sweep of the grid on the crop, counting the calls of the stages' functions."""
    calls = {"read": 0, "fragments": 0, "agglomerate": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    config = _config(tmp_path_factory.mktemp("tune"), *GRID, *CROP)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AffinitySource, "read", counted("read", AffinitySource.read))
        mp.setattr(tune, "compute_fragments", counted("fragments", tune.compute_fragments))
        mp.setattr(tune.W, "agglomerate_edges", counted("agglomerate", tune.W.agglomerate_edges))
        sweep = tune.Sweep(config)
        result = sweep.run(progress=False)
    out, rows = tune.write_outputs(config, result)
    return config, sweep, result, out, rows, calls


def _single(config, **tune_values) -> dict:
    """The score of the config's own setting alone (no grid), with ``tune_values`` set."""
    one = config.model_copy(deep=True)
    one.tune.fragments = {}
    for key, value in tune_values.items():
        setattr(one.tune, key, value)
    return tune.Sweep(one).run(progress=False).best


def test_best_no_worse_than_config(swept):
    config, sweep, result, _, _, _ = swept
    # 2 x 2 fragment settings, plus the config's own ([250, 500, 500], distance 10)
    assert len(sweep.settings) == 5
    assert len(result.rows) == 5 * 2
    baseline = [r for r in result.rows if r["baseline"]]
    assert len(baseline) == 1 and baseline[0]["fragments"]["min_seed_distance"] == 10
    # the config as it is: its own thresholds, its extract threshold, scored independently
    own = _single(
        config,
        thresholds=[config.extract.threshold],
        merge_functions=[config.agglomerate.merge_function],
    )
    best = result.best
    print(f"\nconfig: VOI {own['voi']:.4f} ARAND {own['arand']:.4f} at {own['threshold']}")
    print(tune.table_text(result))
    assert best["voi"] <= own["voi"]
    assert best["voi"] <= baseline[0]["voi"]
    # the rows are sorted and every row's best is its minimum over the thresholds
    assert [r["voi"] for r in result.rows] == sorted(r["voi"] for r in result.rows)
    for r in result.rows:
        assert r["voi"] == min(s["voi"] for s in r["scores"])
        assert len(r["scores"]) == len(config.tune.thresholds)


def test_written_config_reproduces_best(swept):
    config, _, result, out, rows_path, _ = swept
    best = result.best
    tuned = load_config(out)
    assert tuned.fragments.block_shape == best["fragments"]["block_shape"]
    assert tuned.fragments.min_seed_distance == best["fragments"]["min_seed_distance"]
    assert tuned.agglomerate.merge_function == best["merge_function"]
    assert tuned.extract.threshold == best["threshold"]
    assert best["threshold"] in tuned.segments.thresholds
    assert tuned.fragments.boundary == config.fragments.boundary  # the rest as it was
    again = _single(
        tuned, thresholds=[tuned.extract.threshold], merge_functions=[best["merge_function"]]
    )
    assert again["voi"] == pytest.approx(best["voi"], abs=1e-9)
    assert again["arand"] == pytest.approx(best["arand"], abs=1e-9)
    summary = json.loads(rows_path.read_text())
    assert len(summary["rows"]) == len(result.rows)
    assert summary["best"]["voi"] == best["voi"]


def test_reuse(swept):
    """Affinities read once; fragments once per fragment setting (not per merge function);
    one agglomeration per (setting, merge function), every threshold from it."""
    config, sweep, _, _, _, calls = swept
    c = sweep.counts
    n_frag, n_mf = len(sweep.settings), len(sweep.merge_functions)
    assert calls["read"] == c.affinity_reads == 1
    assert c.fragment_runs == n_frag
    assert c.agglomerations == n_frag * n_mf
    assert calls["fragments"] == c.fragment_blocks
    # each fragment block once per setting: the blocks covering the crop's agglomeration blocks
    per_setting = [
        len(tune.blocks(sweep.total, tune.Coordinate(s.section.block_shape), sweep.crop))
        for s in sweep.settings
    ]
    assert c.fragment_blocks == sum(per_setting)
    assert 0 < calls["agglomerate"] <= c.agglomerate_blocks
    assert c.scorings == n_frag * n_mf * len(config.tune.thresholds)


def test_blocks_follow_the_chain_grid():
    """The emulated grid is the stage's: anchored at the volume, shrunk at its end, numbered
    in C order over the whole grid."""
    total = tune.Roi((0, 0, 0), (500, 1000, 2000))
    block = tune.Coordinate((250, 500, 500))
    all_blocks = tune.blocks(total, block, total)
    assert [i for i, _ in all_blocks] == list(range(16))
    some = tune.blocks(total, block, tune.Roi((0, 0, 600), (100, 100, 500)))
    assert [(i, w.offset[2]) for i, w in some] == [(1, 500), (2, 1000)]
    odd = tune.blocks(tune.Roi((0, 0, 0), (500, 1000, 1700)), block, total)
    assert odd[-1][1].shape[2] == 200  # shrunk at the volume's end


def _cli(tmp_path, capsys, *sets: str) -> tuple[int, str, str]:
    config = _config(tmp_path)
    path = config_file(config, tmp_path / "config.json")
    args = [str(path)]
    for s in sets:
        args += ["--set", s]
    rc = main("tune", args, prog="tune.py")
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    "sets, where",
    [
        (["gt=null"], "error: gt: required"),
        (["tune.offset=[0, 0, 1500]", "tune.shape=[100, 100, 1000]"], "error: tune.shape: crop"),
        (["tune.offset=[0, 0, 5]"], "error: tune.offset: "),
        (
            ['tune.fragments={"block_shape": [[255, 500, 500]]}'],
            "error: tune.fragments.block_shape",
        ),
        (['tune.fragments={"boundary": [1]}'], "error: tune.fragments: boundary: not a param"),
        (['tune.merge_functions=["median"]'], "error: tune.merge_functions: unknown merge"),
        (["gt.dataset=volumes/nothing"], "error: gt"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, sets, where):
    rc, out, err = _cli(tmp_path, capsys, *sets)
    assert rc == 2
    assert err.startswith(where), err
    assert err.count("\n") == 1
    assert not (tmp_path / "run" / "tuned.json").exists()


def test_cli_prints_table_and_writes(tmp_path, capsys):
    rc, out, err = _cli(
        tmp_path,
        capsys,
        *CROP,
        'tune.fragments={"min_seed_distance": [5, 10]}',
        'tune.merge_functions=["hist_quant_75"]',
        "tune.thresholds=[0.3, 0.9]",
    )
    assert rc == 0, err
    assert "merge_function" in out and "best:" in out
    assert "2*" in out or "1*" in out  # the input config's row is marked
    tuned = json.loads((tmp_path / "run" / "tuned.json").read_text())
    assert tuned["segments"]["thresholds"] == [0.3, 0.9]
    assert "tune" in tuned  # the input config's keys stay, so the sweep can be rerun
    rc = main("tune", [str(tmp_path / "config.json"), "--print-config"], prog="tune.py")
    assert rc == 0
    assert '"merge_functions"' in capsys.readouterr().out


@pytest.mark.slow
def test_predicts_affinities_once_as_the_chain(tmp_path):
    """Without stored affinities or a boundary map the sweep predicts them in memory, on the
    chain's window grid (anchored at the raw's begin, not the crop's) and quantised to uint8
    as ``01`` stores them."""
    from marlseg.affinities import to_unit
    from marlseg.inference import (
        checkpoint_path,
        default_margin,
        load_model,
        predict_region,
        to_uint8,
    )

    config = load_config(
        None,
        [
            f"run.dir={tmp_path / 'run'}",
            f'raw={{"path": "{DATA}", "dataset": "volumes/raw"}}',
            f'gt={{"path": "{DATA}", "dataset": "volumes/labels/neuron_ids"}}',
            "fragments.block_shape=[100, 200, 200]",
            "fragments.context=[20, 20, 20]",
            "agglomerate.context=[20, 20, 20]",
            "tune.fragments={}",
            'tune.merge_functions=["hist_quant_75"]',
            "tune.thresholds=[0.3, 0.6]",
            "tune.offset=[100, 200, 200]",
            "tune.shape=[100, 200, 200]",
        ],
    )
    sweep = tune.Sweep(config)
    assert sweep.affinities.predicted
    result = sweep.run(progress=False)
    assert sweep.counts.affinity_reads == 1
    assert np.isfinite(result.best["voi"])
    model, _ = load_model(checkpoint_path(config.predict.checkpoint))
    inp = list(model.encoder.img_size)
    with h5py.File(DATA, "r") as f:
        ref = predict_region(
            model, f["volumes/raw"], (0, 0, 0), (30, 50, 50), inp, default_margin(inp)
        )
    begin = [int(b) // 10 for b in sweep.affs_roi.begin]
    shape = [int(s) // 10 for s in sweep.affs_roi.shape]
    assert min(begin) > 0  # the region starts inside the volume, away from its begin
    want = to_unit(to_uint8(ref[:3]))[
        (slice(None), *(slice(b, b + s) for b, s in zip(begin, shape)))
    ]
    np.testing.assert_array_equal(sweep.affs, want)


@pytest.mark.slow
def test_matches_the_blockwise_chain(tmp_path, mongo_uri):
    """On a crop that is the whole volume the emulation is exact: the chain (02, 03, 04, 06
    with real workers and MongoDB) run with the tuned config scores what the sweep reported,
    at every threshold."""
    config = make_config(
        tmp_path / "run",
        mongo_uri,
        f"tune_chain_{uuid.uuid4().hex[:8]}",
        'tune.fragments={"block_shape": [[250, 500, 500], [130, 250, 500]]}',
        'tune.merge_functions=["hist_quant_75"]',
        "tune.thresholds=[0.1, 0.3, 0.5, 0.7, 0.9]",
    )
    result = tune.Sweep(config).run(progress=False)
    out, _ = tune.write_outputs(config, result)
    tuned = load_config(out)
    run_chain(tuned, ["fragments", "agglomerate", "segments", "evaluate"])
    chain = json.loads((Path(tuned.run.dir) / "scores.json").read_text())
    swept = result.best["scores"]
    assert [r["threshold"] for r in chain] == [r["threshold"] for r in swept]
    for a, b in zip(chain, swept):
        assert a["voi_split"] == pytest.approx(b["voi_split"], abs=1e-9)
        assert a["voi_merge"] == pytest.approx(b["voi_merge"], abs=1e-9)
        assert a["arand"] == pytest.approx(b["arand"], abs=1e-9)
    assert np.isfinite(result.best["voi"])
