"""Where a catalog loses (issue 30): the candidates' ceiling and the expected-F1 threshold, by hand."""

import numpy as np
import pytest
from listing_dedup.quality.robust import candidate_recall, expected_f1_threshold


def test_candidate_recall_counts_true_pairs_either_way_and_by_rank():
    # true groups {0, 1, 2}, {3, 4}, {5}: 3 + 1 = 4 true pairs
    labels = ["a", "a", "a", "b", "b", "c"]
    src = np.array([0, 0, 1, 3, 2])
    dst = np.array([1, 3, 0, 4, 5])
    score = np.array([0.9, 0.95, 0.8, 0.5, 0.7])
    got = candidate_recall(labels, src, dst, score, ks=(1, 2))
    # (0, 1) and (3, 4) are reached; (0, 2) and (1, 2) are not
    assert got["ceiling"] == pytest.approx(2 / 4)
    # directions of true pairs at rank 0 of their list: 1 -> 0 and 3 -> 4 (0's first is 3, not a
    # twin); at rank < 2 also 0 -> 1; of 2 * 4 directions
    assert got["at_1"] == pytest.approx(2 / 8)
    assert got["at_2"] == pytest.approx(3 / 8)


def test_candidate_recall_without_true_pairs_is_nan():
    got = candidate_recall(["a", "b"], np.array([0]), np.array([1]), np.array([0.5]), ks=(1,))
    assert np.isnan(got["ceiling"]) and np.isnan(got["at_1"])


def test_expected_f1_threshold_keeps_the_best_prefix():
    # sum q = 2.1; keeping the top m gives 2 * cumsum / (m + 2.1):
    # m=1 1.8/3.1 = 0.581, m=2 3.4/4.1 = 0.829, m=3 4.0/5.1 = 0.784, m=4 4.2/6.1 = 0.689
    t, e = expected_f1_threshold(np.array([0.3, 0.9, 0.1, 0.8]))
    assert t == pytest.approx(0.8)
    assert e == pytest.approx(3.4 / 4.1)


def test_expected_f1_threshold_of_nothing():
    assert expected_f1_threshold(np.zeros(0)) == (1.0, 0.0)
