"""``fragments.method=waterz``: waterz's own watershed as fragments, on a crop of fib_train's
boundary map."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import waterz

from marlseg import metrics
from marlseg import watershed as W
from marlseg.affinities import boundary_to_affinities
from marlseg.config import load_config
from marlseg.watershed import compute_fragments
from tests.test_postprocess_helpers import DATA


@pytest.fixture(scope="module")
def affs() -> np.ndarray:
    with h5py.File(DATA, "r") as f:
        return boundary_to_affinities(f["volumes/predictions/boundary_p1"][:24, :48, :48])


def test_waterz_fragments_are_consecutive_and_only_membrane_is_zero(affs):
    frags = W.waterz_watershed(affs)
    ids = np.unique(frags)
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, ids.size))
    assert ids.size > 20
    # a voxel without a fragment has no affinity above waterz's low threshold
    assert affs[:, frags == 0].max() < 1e-4
    # and it is the same partition a whole in-memory waterz pass starts from
    ref = next(iter(waterz.agglomerate(affs, thresholds=[0.0])))
    assert metrics.evaluate(frags, ref.copy(), ignore_label=None)["arand"] == 0


def test_epsilon_in_the_same_call_equals_a_second_pass(affs):
    one_call = W.waterz_watershed(affs, epsilon=0.2)
    two_pass = W.epsilon_agglomerate(affs, W.waterz_watershed(affs), 0.2)
    s = metrics.evaluate(one_call, two_pass, ignore_label=None)
    assert s["voi_split"] + s["voi_merge"] == pytest.approx(0, abs=1e-9)
    assert np.unique(one_call).size < np.unique(W.waterz_watershed(affs)).size
    section = load_config(None, ["fragments.method=waterz", "fragments.epsilon_agglomerate=0.2"])
    assert np.array_equal(compute_fragments(affs, section.fragments), one_call)


def test_waterz_fragments_in_xy_never_span_sections(affs):
    frags = W.waterz_watershed(affs, fragments_in_xy=True)
    for z in range(frags.shape[0] - 1):
        a, b = set(np.unique(frags[z])) - {0}, set(np.unique(frags[z + 1])) - {0}
        assert not a & b
    assert frags.max() > frags[0].max()
