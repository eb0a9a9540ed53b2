"""Each acquisition function picks what it should on hand-made inputs (pure numpy, no model)."""
from __future__ import annotations

import numpy as np
import pytest

from ser_tune.active.acquisition import ACQUISITIONS, AcquisitionError, select

# Four rows, each the unique pick of one uncertainty function:
PROBS = np.array([
    [0.50, 0.50, 0.00, 0.00],   # 0: two classes tied -> smallest margin (0.0); entropy only 0.69
    [0.40, 0.35, 0.25, 0.00],   # 1: lowest top probability (0.40) -> least confidence; entropy 1.08
    [0.46, 0.18, 0.18, 0.18],   # 2: flattest -> highest entropy (1.28); top 0.46, margin 0.28
    [0.97, 0.01, 0.01, 0.01],   # 3: confident: nobody's pick
])


def test_entropy_picks_the_flattest_row():
    assert select("entropy", 1, probs=PROBS).tolist() == [2]
    assert select("entropy", 4, probs=PROBS).tolist() == [2, 1, 0, 3]      # most wanted first


def test_least_confidence_picks_the_lowest_top_probability():
    assert select("least_confidence", 1, probs=PROBS).tolist() == [1]
    assert select("least_confidence", 3, probs=PROBS).tolist() == [1, 2, 0]


def test_margin_picks_the_smallest_top_two_gap():
    assert select("margin", 1, probs=PROBS).tolist() == [0]
    assert select("margin", 2, probs=PROBS).tolist() == [0, 1]


@pytest.mark.parametrize("name, expected", [("entropy", [1]), ("least_confidence", [2]), ("margin", [1])])
def test_uncertainty_never_returns_a_labelled_row(name, expected):
    labelled = np.array([True, False, False, False])
    labelled[{"entropy": 2, "least_confidence": 1, "margin": 0}[name]] = True
    labelled[0] = True
    assert select(name, 1, probs=PROBS, labelled_mask=labelled).tolist() == expected
    every = select(name, 10, probs=PROBS, labelled_mask=labelled)
    assert not labelled[every].any() and len(every) == (~labelled).sum()


def test_random_is_seeded_reproducible_and_skips_labelled_rows():
    labelled = np.zeros(100, bool)
    labelled[::3] = True
    a = select("random", 20, labelled_mask=labelled, rng=7)
    b = select("random", 20, labelled_mask=labelled, rng=np.random.default_rng(7))
    c = select("random", 20, labelled_mask=labelled, rng=8)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()
    assert len(set(a.tolist())) == 20 and not labelled[a].any()


def _clusters(seed=0):
    """Three tight, far-apart blobs of 20 points each: rows 0-19, 20-39, 40-59."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + 0.1 * rng.standard_normal((20, 2)) for c in centres])
    return x, np.repeat([0, 1, 2], 20)


@pytest.mark.parametrize("name", ["coreset", "kmeans"])
def test_diversity_picks_one_point_per_cluster(name):
    x, cluster = _clusters()
    picked = select(name, 3, embeddings=x, rng=0)
    assert sorted(cluster[picked].tolist()) == [0, 1, 2]


@pytest.mark.parametrize("name", ["coreset", "kmeans"])
def test_diversity_goes_where_nothing_is_labelled_and_never_repeats(name):
    x, cluster = _clusters()
    labelled = cluster == 0                      # the first blob is labelled already
    picked = select(name, 2, embeddings=x, labelled_mask=labelled, rng=0)
    assert not labelled[picked].any()
    if name == "coreset":                        # farthest-first: one from each unlabelled blob
        assert sorted(cluster[picked].tolist()) == [1, 2]
    everything = select(name, 100, embeddings=x, labelled_mask=labelled, rng=0)
    assert len(everything) == 40 and len(set(everything.tolist())) == 40 and not labelled[everything].any()


def test_coreset_spreads_out_more_than_random_within_one_blob():
    # a line of 11 points: three k-center picks are the middle and both ends
    x = np.linspace(0, 10, 11)[:, None]
    assert sorted(select("coreset", 3, embeddings=x).tolist()) == [0, 5, 10]


def test_bad_inputs_are_named():
    with pytest.raises(AcquisitionError, match="unknown acquisition 'bald'"):
        select("bald", 1, probs=PROBS)
    with pytest.raises(AcquisitionError, match="entropy needs class probabilities"):
        select("entropy", 1, labelled_mask=np.zeros(4, bool))
    with pytest.raises(AcquisitionError, match="coreset needs embeddings"):
        select("coreset", 1, probs=PROBS)
    with pytest.raises(AcquisitionError, match="disagree on the pool size"):
        select("margin", 1, probs=PROBS, labelled_mask=np.zeros(5, bool))


def test_every_registered_function_keeps_the_contract():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=30)
    x = rng.standard_normal((30, 4))
    labelled = np.zeros(30, bool)
    labelled[:10] = True
    for name in ACQUISITIONS:
        picked = select(name, 7, probs=probs, embeddings=x, labelled_mask=labelled, rng=1)
        assert len(picked) == 7 and len(set(picked.tolist())) == 7 and not labelled[picked].any(), name
        assert select(name, 0, probs=probs, embeddings=x, labelled_mask=labelled).size == 0


def test_module_docstring_example_runs():
    import doctest

    from ser_tune.active import acquisition

    result = doctest.testmod(acquisition)
    assert result.failed == 0 and result.attempted >= 4
