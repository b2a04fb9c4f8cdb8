"""Weak labels (where to segment): game rules, opponent sampling, learning, defects, the stage."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import zarr

from marlseg.cli import main
from marlseg.config import Config, DatasetRef, DetectorConfig, SelfPlayConfig, load_config
from marlseg.errors import ConfigError
from marlseg.networks.weak_labels import PatchPolicy, PresenceDetector
from marlseg.weak_labels.defects import insert_defects
from marlseg.weak_labels.detector import cam_probability, presence, tile_inputs, train_detector
from marlseg.weak_labels.game import FEATURE_CHANNELS, OBS_CHANNELS, PatchGame, relative_split
from marlseg.weak_labels.labelling import dice, iou, patches_to_mask, read_window
from marlseg.weak_labels.opponents import OpponentPool
from marlseg.weak_labels.tags import derive_tags, load_crops, read_tags
from marlseg.weak_labels.training import returns_to_go, select_patches, train_selfplay

torch.set_num_threads(1)

DATA = Path(__file__).parents[1] / "data"
FIB = DATA / "fib_train.h5"


def game(scores, **kw) -> PatchGame:
    return PatchGame(torch.tensor([scores], dtype=torch.float32), **kw)


def move(g: PatchGame, patch: int, terminate: bool = False) -> list[float]:
    return g.step(torch.tensor([patch]), torch.tensor([terminate]))[0].tolist()


# --- game rules on hand-made score grids ----------------------------------------------------

GRID = [[0.9, 0.8], [0.3, 0.1]]  # ROI patches (relative to the rest): 0 and 1


def test_round_winner_gets_plus_one_loser_minus_one():
    g = game(GRID)
    assert move(g, 2) == [0, 0]  # player 0 picks 0.3; compared when player 1 has moved
    assert move(g, 0) == [-1, 1]  # player 1 picks 0.9 and wins the round
    assert move(g, 1) == [0, 0]
    assert move(g, 3) == [1, -1]  # 0.8 beats 0.1
    assert g.done.item()  # every patch taken
    assert g.selected.all()


def test_invalid_pick_is_penalised_and_loses_the_round():
    g = game(GRID, invalid_penalty=1.0)
    move(g, 3)
    assert move(g, 3) == [1, -2]  # taken: -1 penalty, and it loses to any valid pick
    assert g.selected[0].flatten().tolist() == [False, False, False, True]


def test_equal_scores_tie():
    g = game([[0.5, 0.5]])
    move(g, 0)
    assert move(g, 1) == [0, 0]


def test_termination_refuted_by_final_pick():
    g = game(GRID, termination_reward=10)
    assert move(g, 3, terminate=True) == [0, 0]  # claims no ROI left; its patch is ignored
    assert g.final.item() and not g.selected.any()
    assert move(g, 1, terminate=True) == [-10, 10]  # final pick finds ROI (flag ignored)
    assert g.done.item() and g.found.item()
    assert g.selected[0].flatten().tolist() == [False, True, False, False]


def test_termination_confirmed_by_final_pick():
    g = game(GRID, termination_reward=10)
    move(g, 0)
    assert move(g, 1) == [1, -1]  # both ROI patches gone
    assert move(g, 2, terminate=True) == [0, 0]
    assert move(g, 3) == [10, -10]  # final pick 0.1 is no ROI: the terminator was right
    assert g.done.item() and not g.found.item()
    assert g.selected[0].flatten().tolist() == [True, True, False, False]


def final_pick_found(scores, taken: list[int], pick: int) -> bool:
    """Whether ``pick``, the final pick after ``taken`` were selected, refutes termination."""
    g = game(scores)
    for k in taken:
        g.taken[0, k] = True
    move(g, 0, terminate=True)  # patch ignored
    move(g, pick)
    return bool(g.found.item())


def test_termination_is_judged_relative_to_the_selection_not_a_threshold():
    # the same final pick (0.45) refutes termination next to a weak selection ...
    assert final_pick_found([[0.55, 0.45], [0.05, 0.05]], [0], 1)
    # ... and confirms it next to a strong one: no fixed score decides
    assert not final_pick_found([[0.95, 0.45], [0.05, 0.05]], [0], 1)
    # a tile that is ROI all over is no background of its own (a missing section)
    assert final_pick_found([[0.8, 0.8], [0.8, 0.8]], [], 1)
    # a clean tile: its best patch is background
    assert not final_pick_found([[0.2, 0.05], [0.05, 0.05]], [], 0)
    # relative_split computes where perfect play stops
    grids = np.array([[[0.55, 0.45], [0.05, 0.05]], [[0.95, 0.45], [0.05, 0.05]]])
    assert relative_split(grids).reshape(2, 4).tolist() == [
        [True, True, False, False],
        [True, False, False, False],
    ]


def test_final_pick_of_a_taken_roi_patch_does_not_count():
    g = game(GRID, termination_reward=5)
    move(g, 0)
    move(g, 3, terminate=True)  # player 1 terminates, open round not compared
    assert move(g, 0) == [-5, 5]  # taken patch: not found


def test_second_mover_termination_leaves_round_uncompared():
    g = game(GRID)
    assert move(g, 2) == [0, 0]
    assert move(g, 0, terminate=True) == [0, 0]
    assert g.terminated_by.item() == 1


def test_truncation_after_max_rounds():
    g = game(GRID, max_rounds=1)
    move(g, 3)
    move(g, 3)  # invalid pick, round over: max rounds reached
    assert g.done.item()


def test_games_in_a_batch_are_independent():
    g = PatchGame(torch.tensor([GRID, GRID]))
    r = g.step(torch.tensor([0, 3]), torch.tensor([False, True]))
    assert r.tolist() == [[0, 0], [0, 0]]
    r = g.step(torch.tensor([1, 0]), torch.tensor([False, False]))
    assert r.tolist() == [[1, -1], [-10, 10]]
    assert g.done.tolist() == [False, True]
    # a finished game is frozen
    r = g.step(torch.tensor([2, 2]), torch.tensor([False, False]))
    assert r[1].tolist() == [0, 0]


def test_returns_to_go():
    r = torch.tensor([[1.0], [0.0], [-10.0]])
    assert returns_to_go(r, 0.5)[:, 0].tolist() == [1 - 2.5, -5.0, -10.0]


def test_observation_channels():
    g = game(GRID)
    obs = g.observe()
    assert obs.shape == (1, OBS_CHANNELS, 2, 2)
    move(g, 0, terminate=True)
    obs = g.observe()
    assert obs[0, 0].flatten().tolist() == pytest.approx([0.9, 0.8, 0.3, 0.1])
    assert obs[0, -2].eq(1).all() and obs[0, -1].eq(1).all()  # final pick, second mover


# --- opponent sampling ----------------------------------------------------------------------


def _counts(pool: OpponentPool, draws: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = [pool.sample_index(rng) for _ in range(draws)]
    return np.bincount(idx, minlength=len(pool))


def _pool(sampling: str, n: int = 10, **kw) -> OpponentPool:
    pool = OpponentPool(sampling, **kw)
    net = torch.nn.Linear(2, 1)
    for _ in range(n):
        pool.add(net)
    return pool


def _chi2_pvalue(counts: np.ndarray, p: np.ndarray) -> float:
    from scipy.stats import chisquare

    expected = p * counts.sum()
    return float(chisquare(counts, expected).pvalue)


def test_truncnorm_favours_recent_snapshots():
    pool = _pool("truncnorm", 10, sigma=0.3)
    p = pool.probabilities()
    assert p.sum() == pytest.approx(1.0)
    assert np.all(np.diff(p) > 0)  # strictly rising towards the newest
    assert p[-1] > 3 * p[0] and p[0] > 0  # old snapshots still play sometimes
    counts = _counts(pool, 20000)
    assert _chi2_pvalue(counts, p) > 0.01  # draws follow the stated distribution
    assert counts[-1] == counts.max()
    assert counts[5:].sum() > 0.75 * counts.sum()


def test_uniform_is_uniform():
    pool = _pool("uniform", 10)
    assert pool.probabilities() == pytest.approx(np.full(10, 0.1))
    counts = _counts(pool, 20000)
    assert _chi2_pvalue(counts, np.full(10, 0.1)) > 0.01


def test_latest_only_is_latest():
    pool = _pool("latest", 10)
    assert pool.probabilities().tolist() == [0] * 9 + [1]
    assert _counts(pool, 500)[-1] == 500


def test_pfsp_plays_the_snapshots_the_learner_loses_to():
    pool = _pool("pfsp", 4, pfsp_power=2.0, win_rate_decay=0.0)
    assert pool.probabilities() == pytest.approx(np.full(4, 0.25))  # no results yet
    for k, w in enumerate([1.0, 0.9, 0.5, 0.0]):  # the newest beats the learner
        pool.record(k, w)
    p = pool.probabilities()
    assert np.all(np.diff(p) > 0) and p[0] > 0  # beaten snapshots rarely, never not at all
    expected = np.array([0.0, 0.01, 0.25, 1.0]) + 0.05
    assert p == pytest.approx(expected / expected.sum())
    assert _chi2_pvalue(_counts(pool, 20000), p) > 0.01
    pool.record(3, 1.0)  # the learner catches up: an exponential average moves
    assert pool.win_rates[3] == 1.0


def test_pool_keeps_snapshots_and_drops_the_oldest():
    net = torch.nn.Linear(1, 1, bias=False)
    pool = OpponentPool("uniform", max_size=3)
    for v in range(5):
        torch.nn.init.constant_(net.weight, float(v))
        pool.add(net)
    assert [s["weight"].item() for s in pool.snapshots] == [2.0, 3.0, 4.0]
    torch.nn.init.constant_(net.weight, 9.0)  # snapshots are copies
    assert pool.snapshots[-1]["weight"].item() == 4.0
    assert _pool("truncnorm", 1).probabilities().tolist() == [1.0]


# --- learning where thresholding the visible score is not optimal --------------------------


def toy_grids(n: int, g: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Score grids on which no single threshold is right. Half hold a defect: a rectangle
    whose core scores 0.55-0.6 and whose rim (the ring of patches around the core, still
    defect) scores only 0.4-0.45; the other half are clean but hold a few false alarms scoring
    0.38-0.44. Background 0-0.1. A threshold either misses the rims or takes the false
    alarms; the relative rule takes a rim only next to a core."""
    s = rng.uniform(0.0, 0.1, size=(n, g, g))
    roi = np.zeros((n, g, g), bool)
    for i in range(n):
        if i % 2:
            h, w = rng.integers(1, g - 2, size=2)
            y, x = rng.integers(1, g - h, size=2)
            roi[i, y - 1 : y + h + 1, x - 1 : x + w + 1] = True
            s[i][roi[i]] = rng.uniform(0.4, 0.45, size=roi[i].sum())
            s[i, y : y + h, x : x + w] = rng.uniform(0.55, 0.6, size=(h, w))
        else:
            k = rng.integers(1, 4)
            s[i].flat[rng.choice(g * g, size=k, replace=False)] = rng.uniform(0.38, 0.44, size=k)
    return s.astype(np.float32), roi


def mean_iou(sel, truth) -> float:
    return float(np.mean([iou(a, b) for a, b in zip(sel, truth)]))


def test_toy_grids_defeat_every_threshold():
    scores, truth = toy_grids(256, 5, np.random.default_rng(1))
    best = max(mean_iou(scores >= t, truth) for t in np.linspace(0, 1, 101))
    assert best < 0.75
    assert mean_iou(relative_split(scores), truth) > 0.95  # the rule alone is near perfect


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="issue 19, open: on these grids the agents learn to call termination at once (IoU "
    "1.0 on clean grids, 0.09 on defect grids; 0.54 overall against 0.68 for the best threshold)",
)
def test_trained_agents_beat_the_best_threshold_of_the_visible_score():
    scores, _ = toy_grids(512, 5, np.random.default_rng(0))
    cfg = SelfPlayConfig(iterations=300, warmup_iterations=40, games_per_iteration=32)
    policy, hist = train_selfplay(scores, None, cfg, seed=0)
    test_scores, truth = toy_grids(128, 5, np.random.default_rng(1))
    untrained = PatchPolicy(OBS_CHANNELS, cfg.width).eval()
    before = mean_iou(select_patches(untrained, test_scores), truth)
    sel = select_patches(policy, test_scores)
    after = mean_iou(sel, truth)
    per_kind = [mean_iou(sel[k::2], truth[k::2]) for k in (0, 1)]  # clean, defect
    # the best threshold, chosen on the test grids themselves (an upper bound for it)
    best = max(mean_iou(test_scores >= t, truth) for t in np.linspace(0, 1, 101))
    assert after > best + 0.05, (before, after, best, per_kind)
    assert before < 0.5
    assert hist.pool_size[-1] == 1 + 300 // cfg.snapshot_every


def test_patches_to_mask_and_metrics():
    sel = np.array([[True, False], [False, True]])
    m = patches_to_mask(sel, (2, 3))
    assert m.shape == (4, 6) and m[:2, :3].all() and not m[:2, 3:].any()
    assert iou(m, m) == 1.0 and dice(m, ~m) == 0.0
    assert iou(np.zeros(3), np.zeros(3)) == 1.0


def test_read_window_reflects_at_edges():
    src = np.arange(2 * 4 * 5).reshape(2, 4, 5)
    w = read_window(src, (0, 2), (-2, 6), (-1, 7))
    assert w.shape == (2, 8, 8)
    assert (w[:, 2:6, 1:6] == src).all()
    assert (w[:, 1, 1:6] == src[:, 1]).all()  # reflection, not zeros
    big = read_window(src, (0, 1), (-9, 13), (0, 5))  # pads larger than the array
    assert big.shape == (1, 22, 5)


def test_tile_inputs_scores_each_patch_with_its_context():
    det = PresenceDetector(width=4).eval()
    tiles = np.random.default_rng(0).integers(0, 255, size=(3, 30, 40)).astype(np.uint8)
    scores, feats = tile_inputs(det, tiles, (10, 10), context=5)
    assert scores.shape == (3, 2, 3) and feats.shape == (3, FEATURE_CHANNELS, 2, 3)
    direct = presence(det, tiles[:1, 10:30, 10:30])[0]  # patch (1, 1) with its margin
    assert scores[0, 1, 1] == pytest.approx(direct, abs=1e-5)


def test_derive_tags_rule(tmp_path):
    truth = np.zeros((1, 20, 20), np.uint8)
    truth[0, :, :3] = 1  # 30 % of the left crops
    truth[0, 10:, 10:12] = 1  # 20 % of the bottom right crop
    path = tmp_path / "l.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = np.zeros((1, 20, 20), np.uint8)
        f["truth"] = truth
    tags = derive_tags(
        DatasetRef(path=path, dataset="raw"), DatasetRef(path=path, dataset="truth"), (10, 10), 0.25
    )
    assert [(t.box[1], t.box[2], t.tag) for t in tags] == [
        (0, 0, 1),
        (0, 10, 0),
        (10, 0, 1),
        (10, 10, 0),
    ]


# --- tags CSV -------------------------------------------------------------------------------

HEADER = "path,dataset,z0,y0,x0,z1,y1,x1,tag\n"


def write_csv(tmp_path: Path, rows: str, header: str = HEADER) -> Path:
    p = tmp_path / "tags.csv"
    p.write_text(header + rows)
    return p


def test_read_tags_3d_and_2d(tmp_path):
    p = write_csv(
        tmp_path,
        f"{FIB},volumes/raw,0,0,0,3,20,20,1\n# a comment\n{FIB},volumes/raw,0,20,0,1,40,20,0\n",
    )
    tags = read_tags(p)
    assert [t.num_crops for t in tags] == [3, 1]
    crops, labels = load_crops(tags)
    assert len(crops) == 4 and crops[0].shape == (20, 20) and labels.tolist() == [1, 1, 1, 0]
    p2 = write_csv(
        tmp_path,
        f"{FIB},volumes/raw,4,0,0,20,20,1\n{FIB},volumes/raw,4,20,0,40,20,0\n",
        "path,dataset,z,y0,x0,y1,x1,tag\n",
    )
    assert read_tags(p2)[0].box == (4, 0, 0, 5, 20, 20)


def test_tag_paths_are_relative_to_the_csv(tmp_path):
    rel = Path("..") / "data" / "fib_train.h5"
    p = Path(__file__).parent / "_tags_rel.csv"
    try:
        p.write_text(
            HEADER
            + f"{rel.as_posix()},volumes/raw,0,0,0,1,20,20,1\n{rel.as_posix()},volumes/raw,0,20,0,1,40,20,0\n"
        )
        assert read_tags(p)[0].path.resolve() == FIB.resolve()
    finally:
        p.unlink()


@pytest.mark.parametrize(
    "rows, line, what",
    [
        ("{fib},volumes/raw,0,0,0,1,20,20,2\n", 2, "tag must be 0 or 1, got 2"),
        (
            "{fib},volumes/raw,0,0,0,1,20,20,1\n{fib},volumes/raw,0,90,0,1,120,20,0\n",
            3,
            "reaches outside",
        ),
        ("{fib},volumes/raw,0,0,0,1,20\n", 2, "expected 9 columns, got 7"),
        ("{fib},volumes/raw,0,0,zero,1,20,20,1\n", 2, "whole numbers"),
        ("{fib},volumes/raw,1,0,0,1,20,20,1\n", 2, "empty or negative box"),
        ("{fib},volumes/nope,0,0,0,1,20,20,1\n", 2, "no dataset 'volumes/nope'"),
        ("missing.h5,volumes/raw,0,0,0,1,20,20,1\n", 2, "file not found"),
    ],
)
def test_bad_csv_names_file_and_line(tmp_path, rows, line, what):
    p = write_csv(tmp_path, rows.format(fib=FIB))
    with pytest.raises(ConfigError) as e:
        read_tags(p)
    assert e.value.where == f"{p}, line {line}"
    assert what in e.value.what and "\n" not in e.value.line()


def test_bad_header_and_one_class(tmp_path):
    with pytest.raises(ConfigError, match="line 1: header must be"):
        read_tags(write_csv(tmp_path, "", header="file,ds,tag\n"))
    with pytest.raises(ConfigError, match="tagged 0 and crops tagged 1, got 0 and 1"):
        read_tags(write_csv(tmp_path, f"{FIB},volumes/raw,0,0,0,1,20,20,1\n"))


# --- config ---------------------------------------------------------------------------------


def test_config_section_checks():
    c = Config()
    assert c.weak_labels.selfplay.opponent_sampling == "pfsp"
    assert not c.weak_labels.skip_blocks
    with pytest.raises(ConfigError, match="weak_labels: tile_shape .* not a multiple"):
        load_config(None, ["weak_labels.tile_shape=[50,45]"])
    with pytest.raises(ConfigError, match="weak_labels.patch_size: expected 2 values"):
        load_config(None, ["weak_labels.patch_size=[1,10,10]"])
    with pytest.raises(ConfigError, match="opponent_sampling"):
        load_config(None, ["weak_labels.selfplay.opponent_sampling=best"])


def test_shipped_config_and_its_tags_come_from_the_script(tmp_path):
    import csv
    import sys

    root = Path(__file__).parents[1]
    cfg = load_config(root / "configs" / "weak_labels_fib.json")
    assert cfg.weak_labels.tags is not None and cfg.weak_labels.skip_blocks
    shipped = (root / cfg.weak_labels.tags).read_text().splitlines()
    sys.path.insert(0, str(root / "scripts"))
    from insert_defects import main as insert

    out = tmp_path / "runs" / "weak_labels_fib" / "fib_train_defects.h5"
    (tmp_path / "configs").mkdir()
    assert (
        insert([str(FIB), str(out), "--seed", "1", "--tags", str(tmp_path / "configs" / "t.csv")])
        == 0
    )
    assert (tmp_path / "configs" / "t.csv").read_text().splitlines() == shipped  # same seed
    rows = [r for r in csv.reader(shipped) if r and not r[0].startswith("#")][1:]
    assert {r[-1] for r in rows} == {"0", "1"}
    tags = read_tags(tmp_path / "configs" / "t.csv")
    with h5py.File(out, "r") as f:
        truth = f["volumes/labels/defects"][:]
        assert (
            f["volumes/labels/neuron_ids"][:] == h5py.File(FIB)["volumes/labels/neuron_ids"][:]
        ).all()
    t = tags[0]
    z0, y0, x0, _, y1, x1 = t.box
    assert t.tag == int(truth[z0, y0:y1, x0:x1].mean() >= 0.25)


def test_defects_are_seeded_and_their_truth_is_exact():
    raw = h5py.File(FIB)["volumes/raw"][:20]
    a, ta = insert_defects(raw, 3)
    b, tb = insert_defects(raw, 3)
    assert (a == b).all() and (ta == tb).all()
    c, tc = insert_defects(raw, 4)
    assert not (tc == ta).all()
    # voxels outside the truth are the real EM, up to the section's brightness drift
    for z in range(len(raw)):
        keep = ta[z] == 0
        if keep.sum() > 100:
            r = np.corrcoef(a[z][keep].astype(float), raw[z][keep].astype(float))[0, 1]
            assert r > 0.98
    assert 0.2 < ta.mean() < 0.6


# --- the stage ------------------------------------------------------------------------------


def small_raw(tmp_path: Path) -> Path:
    """A zarr raw with its own voxel size and offset, sections not a multiple of the tile."""
    with h5py.File(FIB, "r") as f:
        data = f["volumes/raw"][:3, :60, :70]
    path = tmp_path / "raw.zarr"
    root = zarr.open_group(str(path), mode="w")
    ds = root.create_dataset("raw", data=data, chunks=(1, 60, 70))
    ds.attrs.update({"voxel_size": [40, 4, 4], "offset": [80, 40, 400]})
    return path


def stage_config(tmp_path: Path, tags: Path, **weak) -> Path:
    cfg = {
        "run": {"dir": str(tmp_path / "run")},
        "raw": {"path": str(small_raw(tmp_path)), "dataset": "raw"},
        "weak_labels": {
            "tags": str(tags),
            "device": "cpu",
            "detector": {"iterations": 20, "batch_size": 16, "width": 4},
            "selfplay": {
                "iterations": 4,
                "warmup_iterations": 2,
                "games_per_iteration": 4,
                "max_tiles": 8,
                "width": 8,
            },
            **weak,
        },
    }
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    return p


def tags_csv(tmp_path: Path) -> Path:
    rows = "".join(
        f"{FIB},volumes/raw,{z},{y},{x},{z + 2},{y + 20},{x + 20},{int((y + x) % 40 == 0)}\n"
        for z in (10, 20)
        for y in (0, 20, 40)
        for x in (0, 20, 40, 60)
    )
    return write_csv(tmp_path, rows)


def test_stage_writes_a_mask_like_raw(tmp_path, capsys):
    cfg = stage_config(tmp_path, tags_csv(tmp_path))
    assert main("weak_labels", [str(cfg)]) == 0
    out = zarr.open(str(tmp_path / "run" / "weak_mask.zarr"), mode="r")["volumes/mask"]
    assert out.shape == (3, 60, 70) and out.dtype == np.uint8
    assert out.attrs["voxel_size"] == [40, 4, 4] and out.attrs["offset"] == [80, 40, 400]
    mask = out[:]
    assert set(np.unique(mask)) <= {0, 1}
    # whole 10 x 10 patches on the tile grid (the edge tiles cropped)
    for z in range(3):
        blocks = mask[z, :60, :70]
        for y in range(0, 60, 10):
            for x in range(0, 70, 10):
                assert len(np.unique(blocks[y : y + 10, x : x + 10])) == 1
    summary = json.loads((tmp_path / "run" / "weak_labels" / "summary.json").read_text())
    assert summary["kept_fraction"] == pytest.approx(mask.mean())
    # the mask opens as a processing mask for the blockwise stages
    from marlseg.volumes import open_volume

    arr = open_volume(DatasetRef(path=tmp_path / "run" / "weak_mask.zarr", dataset="volumes/mask"))
    assert tuple(arr.voxel_size) == (40, 4, 4) and tuple(arr.roi.offset) == (80, 40, 400)
    # a second run reuses both checkpoints and rewrites the same mask
    capsys.readouterr()
    assert main("weak_labels", [str(cfg)]) == 0
    assert capsys.readouterr().out.count("reusing") == 2
    assert (
        zarr.open(str(tmp_path / "run" / "weak_mask.zarr"), mode="r")["volumes/mask"][:] == mask
    ).all()


def test_stage_bad_csv_is_one_line_and_writes_nothing(tmp_path, capsys):
    bad = write_csv(
        tmp_path, f"{FIB},volumes/raw,0,0,0,1,20,20,1\n{FIB},volumes/raw,0,0,0,1,20,20,x\n"
    )
    cfg = stage_config(tmp_path, bad)
    assert main("weak_labels", [str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {bad}, line 3: expected whole numbers for the box and tag, got 'x'"
    assert not (tmp_path / "run").exists()


def test_stage_needs_tags_and_raw(tmp_path, capsys):
    cfg = json.loads(stage_config(tmp_path, tags_csv(tmp_path)).read_text())
    del cfg["weak_labels"]["tags"]
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert main("weak_labels", [str(tmp_path / "c.json")]) == 2
    assert "weak_labels.tags: set a tags CSV" in capsys.readouterr().err
    del cfg["raw"]
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert main("weak_labels", [str(tmp_path / "c.json")]) == 2
    assert capsys.readouterr().err.startswith("error: raw: required")
    assert not (tmp_path / "run").exists()


def test_stage_refuses_a_mask_of_another_geometry(tmp_path, capsys):
    other = tmp_path / "other.zarr"
    zarr.open_group(str(other), mode="w").create_dataset("m", shape=(3, 60, 60), dtype=np.uint8)
    cfg = stage_config(tmp_path, tags_csv(tmp_path), mask={"path": str(other), "dataset": "m"})
    assert main("weak_labels", [str(cfg)]) == 2
    assert "error: weak_labels.mask: " in capsys.readouterr().err


def test_detector_learns_an_easy_tag():
    rng = np.random.default_rng(0)
    crops, labels = [], []
    for i in range(200):
        img = rng.normal(120, 20, size=(16, 16))
        if i % 2:
            y, x = rng.integers(0, 10, size=2)
            img[y : y + 6, x : x + 6] = 230  # a bright blob = "contains X"
        crops.append(np.clip(img, 0, 255).astype(np.uint8))
        labels.append(i % 2)
    det, m = train_detector(
        crops,
        np.array(labels),
        DetectorConfig(iterations=60, batch_size=32, width=4, lr=1e-2, val_fraction=0.2),
    )
    assert m["val_accuracy"] > 0.9
    cam = cam_probability(det, crops[1])
    assert cam.shape == (16, 16)


# --- the benchmark's record -----------------------------------------------------------------


def test_docs_table_is_generated_from_the_benchmark_json():
    import sys

    root = Path(__file__).parents[1]
    sys.path.insert(0, str(root))
    from benchmarks.weak_labels import ARMS, MARK_BEGIN, MARK_END, table

    result = json.loads((root / "docs" / "weak_labels.json").read_text())
    doc = (root / "docs" / "weak_labels.md").read_text()
    shown = doc[doc.index(MARK_BEGIN) + len(MARK_BEGIN) : doc.index(MARK_END)]
    assert shown.strip() == table(result)
    assert not result["settings"]["quick"]
    assert list(result["arms"]) == list(ARMS)
    for arm, a in result["arms"].items():
        # a learning claim needs a spread: at least three seeds
        assert len(a["miou"]) == len(a["dice"]) == len(result["runs"]) >= 3
        assert a["miou_mean"] == pytest.approx(np.mean(a["miou"]))
        assert [r["arms"][arm]["miou"] for r in result["runs"]] == a["miou"]
    # what the prose under the table says of it
    arms = result["arms"]
    play, score, rule, cam = (
        arms[k]
        for k in ("self-play", "score threshold", "relative split (no agents)", "CAM threshold")
    )
    for other in (score, rule):
        gap = play["miou_mean"] - other["miou_mean"]
        assert 0 < gap < max(np.std(play["miou"]), np.std(other["miou"]))
    assert cam["miou_mean"] > play["miou_mean"]
    assert np.std(cam["miou"]) == min(
        np.std(a["miou"]) for k, a in arms.items() if k != "no mask" and k != "oracle patches"
    )
