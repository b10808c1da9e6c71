import math

import pandas as pd
import pytest
from listing_dedup.quality.metrics import pair_scores, pairs_from_groups, pairs_from_match_lists, row_scores

TRUTH = pd.DataFrame({"posting_id": ["a", "b", "c", "d", "e"], "label_group": ["1", "1", "1", "2", "2"]})


def test_perfect_prediction():
    pairs = pd.DataFrame(
        {"posting_id": ["a", "a", "b", "b", "c", "c", "d", "e"], "match_id": ["b", "c", "a", "c", "a", "b", "e", "d"]}
    )
    s = row_scores(pairs, list("abcde"), TRUTH)
    assert (s.f1, s.precision, s.recall, s.n) == (1.0, 1.0, 1.0, 5)


def test_hand_computed_case():
    # a predicts {a,b,d}: T={a,b,c}: inter 2, |T| 3, |P| 3 -> f1 2*2/6, p 2/3, r 2/3
    # b predicts {b}:      inter 1, |T| 3, |P| 1 -> f1 2/4, p 1, r 1/3
    # c predicts {c,a}:    inter 2, |T| 3, |P| 2 -> f1 4/5, p 1, r 2/3
    # d predicts {d,e}:    inter 2, |T| 2, |P| 2 -> f1 1, p 1, r 1
    # e predicts {e}:      inter 1, |T| 2, |P| 1 -> f1 2/3, p 1, r 1/2
    pairs = pd.DataFrame({"posting_id": ["a", "a", "c", "d", "a"], "match_id": ["b", "d", "a", "e", "a"]})
    s = row_scores(pairs, list("abcde"), TRUTH)
    assert s.n == 5
    assert s.f1 == pytest.approx((4 / 6 + 2 / 4 + 4 / 5 + 1 + 2 / 3) / 5)
    assert s.precision == pytest.approx((2 / 3 + 1 + 1 + 1 + 1) / 5)
    assert s.recall == pytest.approx((2 / 3 + 1 / 3 + 2 / 3 + 1 + 1 / 2) / 5)


def test_unknown_and_unscored_listings():
    # 'x' is not in the truth: not evaluated, but predicting it costs precision
    # 'e' was not scored (rejected): excluded, and d's true group shrinks to {d}
    pairs = pd.DataFrame({"posting_id": ["d"], "match_id": ["x"]})
    s = row_scores(pairs, ["a", "b", "c", "d", "x"], TRUTH)
    assert s.n == 4
    # a,b,c: T size 3, P {self}: f1 = 2/4 each; d: T {d}, P {d,x}: f1 = 2/3
    assert s.f1 == pytest.approx((0.5 * 3 + 2 / 3) / 4)


def test_empty():
    s = row_scores(pd.DataFrame(columns=["posting_id", "match_id"]), [], TRUTH)
    assert s.n == 0 and math.isnan(s.f1)


def test_pair_helpers():
    m = pd.DataFrame({"posting_id": ["a", "b", "c"], "match_ids": [["b", "c"], [], ["a"]]})
    assert sorted(map(tuple, pairs_from_match_lists(m).to_numpy())) == [("a", "b"), ("a", "c"), ("c", "a")]
    g = pd.DataFrame({"posting_id": ["a", "b", "c"], "group_id": ["a", "a", "c"]})
    assert sorted(map(tuple, pairs_from_groups(g).to_numpy())) == [("a", "b"), ("b", "a")]


def test_pair_scores_hand_computed():
    # true pairs: ab, ac, bc (group 1), de (group 2) -> 4
    # predicted (unordered, from the same pairs as test_hand_computed_case): ab, ad, ac, de -> 4
    # (a->a is a self pair, c->a is the pair ac once); correct: ab, ac, de -> 3
    pairs = pd.DataFrame({"posting_id": ["a", "a", "c", "d", "a"], "match_id": ["b", "d", "a", "e", "a"]})
    s = pair_scores(pairs, list("abcde"), TRUTH)
    assert (s.true, s.predicted, s.correct) == (4, 4, 3)
    assert (s.precision, s.recall, s.f1) == (pytest.approx(3 / 4), pytest.approx(3 / 4), pytest.approx(3 / 4))


def test_pair_scores_both_directions_count_once_and_unknown_ends():
    # a->b and b->a are one pair; d->x: x unknown, a wrong predicted pair; 'e' not scored:
    # true pairs among a,b,c,d: ab, ac, bc -> 3
    pairs = pd.DataFrame({"posting_id": ["a", "b", "d", "x"], "match_id": ["b", "a", "x", "c"]})
    s = pair_scores(pairs, ["a", "b", "c", "d", "x"], TRUTH)
    assert (s.true, s.predicted, s.correct) == (3, 2, 1)
    assert s.precision == pytest.approx(1 / 2) and s.recall == pytest.approx(1 / 3)
    assert s.f1 == pytest.approx(2 * 1 / (3 + 2))


def test_pair_scores_singletons_do_not_flatter():
    # every listing alone: the row-wise F1 of a catalog of singletons is 1 for those, the
    # pairwise F1 is 0 as soon as one true pair exists and none is found
    truth = pd.DataFrame({"posting_id": list("abcd"), "label_group": ["1", "1", "2", "3"]})
    none = pd.DataFrame(columns=["posting_id", "match_id"])
    assert row_scores(none, list("abcd"), truth).f1 == pytest.approx((2 / 3 + 2 / 3 + 1 + 1) / 4)
    s = pair_scores(none, list("abcd"), truth)
    assert (s.true, s.predicted, s.correct, s.f1, s.precision, s.recall) == (1, 0, 0, 0.0, 0.0, 0.0)


def test_pair_scores_of_groups():
    # groups {a,b,d} and {c,e}: predicted pairs ab, ad, bd, ce; correct ab -> 1 of 4; true 4
    g = pd.DataFrame({"posting_id": list("abcde"), "group_id": ["1", "1", "2", "1", "2"]})
    s = pair_scores(pairs_from_groups(g), list("abcde"), TRUTH)
    assert (s.true, s.predicted, s.correct) == (4, 4, 1)
