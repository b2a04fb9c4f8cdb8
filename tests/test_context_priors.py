"""Priors that carry what ``merge_score`` lacks: thickness, bridges between bodies, blobs
inside a body; and the rule that no prior's evidence is an input of the policy."""

from __future__ import annotations

import numpy as np
import pytest

from marlseg.config import load_config
from marlseg.context_priors import BlobPrior, BridgePrior, ThicknessPrior, neighbour_pairs
from marlseg.edge_rl import priors_from_config
from marlseg.errors import ConfigError
from marlseg.priors import Objects, RagGraph, build_priors


def cube_graph(n: int, centers, sizes, edges, side: float = 100.0) -> RagGraph:
    """Fragments as cubes of ``side`` nm at 10 nm voxels (sizes in voxels)."""
    moments = np.zeros((n, 6))
    moments[:, :3] = side**2 / 12
    return RagGraph(
        node_ids=np.arange(1, n + 1),
        edges=np.asarray(edges),
        sizes=np.asarray(sizes, float),
        centers=np.asarray(centers, float),
        voxel_size=(10.0, 10.0, 10.0),
        moments=moments,
    )


def test_thickness_prior_penalises_two_parallel_tubes_merged():
    # two parallel rows of 8 cubes along x, 100 nm apart in y
    n = 16
    centers = [(0.0, 100.0 * (i // 8), 100.0 * (i % 8)) for i in range(n)]
    along = [(i, i + 1) for i in range(n) if i % 8 != 7]
    across = [(i, i + 8) for i in range(8)]
    g = cube_graph(n, centers, [1000] * n, along + across)
    prior = ThicknessPrior(max_nm=60.0)
    two = Objects(g, np.array([0] * 8 + [1] * 8))
    one = Objects(g, np.zeros(n, int))
    assert prior.object_rewards(two) == pytest.approx([1.0, 1.0])  # radius ~58 nm
    assert prior.object_rewards(one)[0] < 0.5  # radius ~120 nm
    # not judged below min_um3 (a 16-cube object is 0.016 µm³)
    assert ThicknessPrior(max_nm=60.0, min_um3=0.1).object_rewards(one)[0] == 1.0


def bodies_and_sliver() -> RagGraph:
    """Two large bodies (nodes 0, 1) with a small sliver (node 2) between them, and a small
    fragment (node 3) touching only body 0."""
    centers = [(0, 0, 0), (0, 0, 400), (0, 0, 200), (0, 300, 0)]
    sizes = [100_000, 100_000, 1000, 1000]  # 0.1 µm³ bodies, 0.001 µm³ pieces
    return cube_graph(4, centers, sizes, [(0, 2), (1, 2), (0, 3), (0, 1)])


def test_bridge_prior_penalises_a_sliver_between_two_bodies_only():
    g = bodies_and_sliver()
    prior = BridgePrior(max_um3=0.005, body_um3=0.05, reward=0.2)
    apart = Objects(g, np.array([0, 1, 2, 3]))
    r = prior.object_rewards(apart)
    assert r[2] == 0.2  # between two bodies
    assert r[3] == 1.0 and r[0] == r[1] == 1.0  # touches one body only / is a body
    joined = Objects(g, np.array([0, 1, 0, 2]))  # the sliver joins body 0
    assert (prior.object_rewards(joined) == 1.0).all()
    assert neighbour_pairs(joined).tolist() == [[0, 1], [0, 2], [1, 0], [2, 0]]


def test_blob_prior_penalises_a_compact_blob_enclosed_by_one_body():
    g = bodies_and_sliver()
    prior = BlobPrior(min_um3=0.0005, max_um3=0.02, max_ratio=1.6, body_um3=0.05, reward=0.1)
    apart = Objects(g, np.array([0, 1, 2, 3]))
    r = prior.object_rewards(apart)
    assert r[3] == 0.1  # compact, mitochondrion-sized, only neighbour is body 0
    assert r[2] == 1.0  # two neighbours: not enclosed
    assert (prior.object_rewards(Objects(g, np.array([0, 1, 2, 0]))) == 1.0).all()
    at_border = bodies_and_sliver()
    at_border.at_border[3] = True  # cut by the volume: may continue outside
    assert prior.object_rewards(Objects(at_border, np.array([0, 1, 2, 3])))[3] == 1.0
    # an elongated piece is a neurite, not a blob
    long = bodies_and_sliver()
    long.moments[3, 2] = 400.0**2  # long along x
    assert prior.object_rewards(Objects(long, np.array([0, 1, 2, 3])))[3] == 1.0


def test_new_priors_from_config_and_by_name():
    cfg = load_config(None, [])
    names = [p.name for p in priors_from_config(cfg.edge_rl.priors).priors]
    assert {"thickness", "bridge", "blob"} <= set(names) and "membrane" not in names
    built = build_priors({"thickness": {"max_nm": 50.0}, "bridge": None, "blob": {}})
    assert [p.name for p in built.priors] == ["thickness", "blob"]


def test_a_prior_whose_evidence_the_policy_reads_is_refused():
    with pytest.raises(ConfigError, match="^edge_rl: .*membrane.evidence 'merge_score'"):
        load_config(None, ['edge_rl.priors.membrane={"evidence": "merge_score"}'])
    with pytest.raises(ConfigError, match="membrane.evidence 'contacts'"):
        load_config(None, ['edge_rl.priors.membrane={"evidence": "contacts"}'])
    ok = load_config(
        None,
        [
            'edge_rl.priors.membrane={"evidence": "merge_score"}',
            'edge_rl.edge_features=["contacts"]',
        ],
    )
    assert ok.edge_rl.priors.membrane.evidence == "merge_score"
