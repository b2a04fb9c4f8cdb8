"""Learning where the priors know what the input feature does not: the RL must beat the
copy-the-input baseline (the feature itself used as the edge weight, same partitioner)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from marlseg.config import EdgeRlConfig
from marlseg.context_priors import ThicknessPrior
from marlseg.edge_rl import EdgeRlEnv, EdgeRlTrainer
from marlseg.priors import CompositePrior, SizePrior
from tests.test_edge_rl import tube_rag, voi

torch.set_num_threads(1)


def lying_tubes(seed: int):
    """Eight tubes along x whose edge feature (a stand-in for ``merge_score``) says "merge"
    (0.2) on 8 % of the edges *between* tubes. The feature alone merges tubes; the size and
    thickness priors see that merged tubes are too large and too thick; the node features (a
    noisy colour per tube) let the actor tell such edges apart."""
    graph, gt, tube_um3 = tube_rag(
        grid=(2, 4, 12), tube=(1, 1), noise=0.05, feat_noise=0.3, seed=seed
    )
    rng = np.random.default_rng(100 + seed)
    between = gt[graph.edges[:, 0]] != gt[graph.edges[:, 1]]
    lie = between & (rng.random(graph.n_edges) < 0.08)
    w = graph.edge_features[:, 0].copy()
    w[lie] = 0.2 + 0.05 * rng.standard_normal(int(lie.sum()))
    w = np.clip(w, 0.01, 0.99)
    graph.edge_features = w[:, None]
    graph.base_weights = w  # the policy starts from the feature (edge_rl.init_from)
    graph.evidence = None  # no prior reads the feature
    priors = CompositePrior(
        [SizePrior(0.8 * tube_um3, 1.25 * tube_um3, softness=0.5), ThicknessPrior(max_nm=60.0)]
    )
    return graph, gt, priors, w


@pytest.mark.slow
def test_rl_beats_copying_its_input_feature():
    """Three seeds, 250 iterations each (~40 s each on a free core)."""
    copy_voi, rl_voi = [], []
    for seed in range(3):
        graph, gt, priors, feature = lying_tubes(seed)
        env = EdgeRlEnv(graph, priors)  # mutex, the partitioner 04 uses for rl_weight
        copied = env.step(feature)
        cfg = EdgeRlConfig(
            iterations=250,
            subgraph_sizes=[6, 12, 32],
            hidden=16,
            eval_every=10,
            seed=seed,
            init_from="merge_score",
        )
        trainer = EdgeRlTrainer(graph, priors, cfg)
        trainer.train()
        learned = env.step(trainer.predict())
        assert learned.reward >= copied.reward  # the priors never prefer the copy
        copy_voi.append(voi(graph, gt, copied.labels))
        rl_voi.append(voi(graph, gt, learned.labels))
    assert np.mean(rl_voi) < np.mean(copy_voi) - 0.05, (rl_voi, copy_voi)
