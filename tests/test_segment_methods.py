"""``segments.method``: 04 partitions a learned weight the way 07 was rewarded for it."""

from __future__ import annotations

import numpy as np
import pytest

from marlseg.config import load_config
from marlseg.edge_rl import EdgeRlEnv
from marlseg.errors import ConfigError
from marlseg.luts import connected_luts
from marlseg.segment_methods import mutex_luts, segments_method
from tests.test_edge_rl import tube_priors, tube_rag


def _batches(ids, edges, w, size=50):
    u, v = ids[edges[:, 0]], ids[edges[:, 1]]
    return [(u[i : i + size], v[i : i + size], w[i : i + size]) for i in range(0, len(u), size)]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """The two labellings are one partition (equal up to the names of the objects)."""
    pairs = len(np.unique(np.stack([a, b], 1), axis=0))
    return pairs == len(np.unique(a)) == len(np.unique(b))


@pytest.mark.parametrize("partitioner", ["mutex", "threshold"])
def test_04_luts_are_the_partition_07_is_rewarded_for(partitioner):
    graph, _, tube_um3 = tube_rag(grid=(3, 4, 12), tube=(1, 1), length=6)
    ids = np.asarray(graph.node_ids, dtype=np.uint64) * 7 + 3  # database ids, not indices
    w = np.random.default_rng(0).random(graph.n_edges)
    cfg = load_config(
        None,
        [
            f"edge_rl.partitioner={partitioner!r}".replace("'", '"'),
            'segments.edge_score="rl_weight"',
        ],
    )
    method = segments_method(cfg)
    assert method == partitioner
    thresholds = [0.3, 0.5, 0.7]
    if method == "mutex":
        luts = mutex_luts(ids, _batches(ids, graph.edges, w), thresholds)
    else:
        luts = connected_luts(ids, _batches(ids, graph.edges, w), thresholds)
    counts = set()
    for t in thresholds:
        env = EdgeRlEnv(graph, tube_priors(tube_um3), partitioner=partitioner, threshold=t)
        frag, seg = luts[t]
        assert np.array_equal(frag, np.sort(ids))
        assert _same(seg, env.partition(w))
        # a segment is named by its smallest fragment
        assert all(s == frag[seg == s].min() for s in np.unique(seg))
        counts.add(len(np.unique(seg)))
    assert len(counts) == 3  # the thresholds matter
    other = "threshold" if partitioner == "mutex" else "mutex"
    env = EdgeRlEnv(graph, tube_priors(tube_um3), partitioner=other, threshold=0.5)
    assert not _same(luts[0.5][1], env.partition(w))  # the two partitioners differ here


def test_mutex_luts_skip_missing_scores_and_name_unknown_fragments():
    ids = np.array([10, 20, 30], np.uint64)
    batches = [(np.array([10, 20]), np.array([20, 30]), np.array([0.1, np.inf]))]
    frag, seg = mutex_luts(ids, batches, [0.5])[0.5]
    assert seg.tolist() == [10, 10, 30]
    with pytest.raises(KeyError, match="not RAG nodes"):
        mutex_luts(ids, [(np.array([10]), np.array([40]), np.array([0.1]))], [0.5])


def test_method_defaults_and_mismatch_is_refused():
    assert segments_method(load_config(None, [])) == "threshold"
    assert segments_method(load_config(None, ['segments.method="mutex"'])) == "mutex"
    learned = load_config(None, ['segments.edge_score="rl_weight"'])
    assert segments_method(learned) == learned.edge_rl.partitioner == "mutex"
    bad = load_config(None, ['segments.edge_score="rl_weight"', 'segments.method="threshold"'])
    with pytest.raises(ConfigError, match="^segments.method: .*edge_rl.partitioner"):
        segments_method(bad)


def test_chain_runs_07_when_04_reads_the_learned_weight(tmp_path):
    import argparse

    from marlseg.chain import ChainStage

    def stages(sets, **options):
        stage = ChainStage(load_config(None, [f"run.dir={tmp_path}", *sets]))
        stage.options = argparse.Namespace(**{"first": None, "last": None, **options})
        return stage.stages()

    assert "edge_rl" not in stages([])
    learned = stages(['segments.edge_score="rl_weight"'])
    assert learned.index("agglomerate") < learned.index("edge_rl") < learned.index("segments")
    assert stages([], last="edge_rl")[-2:] == ["agglomerate", "edge_rl"]
