"""The relative edge rule (issue 15): hand-computed expectations, Spark == pandas, the fast
index path of the robustness suite == the pandas rule, and the suite's catalog builders and
cluster metric."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from listing_dedup.config import MatchConf
from listing_dedup.errors import ConfigError
from listing_dedup.graph.edges import select_edges, select_edges_match, select_edges_pandas
from listing_dedup.quality import robust as R
from listing_dedup.quality.metrics import pairs_from_groups, row_scores

# Scores are exact binary fractions, so every comparison below is exact in float32 and float64.
# Relative rule used by the hand example: background = the score at rank 3, margin 0.125,
# floor 0.5, threshold 0.9375.
ROWS = [
    # a: background = d's 0.5 -> b (0.875 - 0.5 = 0.375) and c (0.625 - 0.5 = 0.125, exactly the
    # margin) stand out; d (0) and e (below the background) do not
    ("a", "b", 0.875),
    ("a", "c", 0.625),
    ("a", "d", 0.5),
    ("a", "e", 0.375),
    # b: background = x's 0.125 -> a stands out (0.75); c is under the floor
    ("b", "a", 0.875),
    ("b", "c", 0.25),
    ("b", "x", 0.125),
    # f: its neighbours all look alike (background 0.6875): none stands out by 0.125
    ("f", "g", 0.75),
    ("f", "h", 0.6875),
    ("f", "i", 0.6875),
    # j: two neighbours, background = the last one (0.25): k stands out by 0.1875 but is under the floor
    ("j", "k", 0.4375),
    ("j", "l", 0.25),
    # m: one neighbour (its own background): kept by the absolute threshold only
    ("m", "n", 0.96875),
    ("m", "m", 1.0),  # self rows are ignored
]
REL = dict(relative=True, relative_rank=3, relative_margin=0.125, relative_floor=0.5)


def _nbrs() -> pd.DataFrame:
    return pd.DataFrame(ROWS, columns=["src", "dst", "score"]).astype({"score": np.float32})


def _und(edges: pd.DataFrame) -> dict[tuple[str, str], float]:
    out = {}
    for s, d, w in edges[["src", "dst", "score"]].itertuples(index=False):
        assert (min(s, d), max(s, d)) not in out or out[(min(s, d), max(s, d))] == pytest.approx(float(w))
        out[(min(s, d), max(s, d))] = float(w)
    return out


def test_relative_rule_hand_example():
    e = select_edges_pandas(_nbrs(), 0.9375, False, 0.9375, **REL)
    assert _und(e) == {("a", "b"): 0.875, ("a", "c"): 0.625, ("m", "n"): 0.96875}
    assert len(e) == 6  # both directions of each edge


def test_relative_off_is_the_threshold_rule():
    e = select_edges_pandas(_nbrs(), 0.9375, False, 0.9375)
    assert _und(e) == {("m", "n"): 0.96875}


def test_relative_with_min2():
    # min2 0.4375 also rescues the best neighbour of f (0.75) and j (0.4375, exactly at min2);
    # a, b and m already keep their best neighbour
    e = select_edges_pandas(_nbrs(), 0.9375, True, 0.4375, **REL)
    assert _und(e) == {
        ("a", "b"): 0.875,
        ("a", "c"): 0.625,
        ("m", "n"): 0.96875,
        ("f", "g"): 0.75,
        ("j", "k"): 0.4375,
    }


def test_relative_rank_one_and_margin_zero_keeps_the_best():
    # background = the nearest neighbour itself: with margin 0 every listing's best neighbour
    # (and any tie with it) above the floor stands out
    e = select_edges_pandas(
        _nbrs(), 0.9375, False, 0.9375, relative=True, relative_rank=1, relative_margin=0.0, relative_floor=0.5
    )
    assert _und(e) == {("a", "b"): 0.875, ("f", "g"): 0.75, ("m", "n"): 0.96875}


MUT_ROWS = [
    ("a", "b", 0.75),
    ("a", "c", 0.625),
    ("a", "d", 0.5),
    ("b", "c", 0.875),
    ("b", "a", 0.75),
    ("c", "b", 0.875),
    ("c", "d", 0.375),
    ("d", "a", 0.5),
]


@pytest.mark.parametrize(
    "rank,floor,want",
    [
        # nearest of each other: only b and c
        (1, 0.5, {("b", "c"): 0.875}),
        # top 2: a-b too (a: b, c; b: c, a); a-c is not (c: b, d), c-d is not (d: a)
        (2, 0.5, {("a", "b"): 0.75, ("b", "c"): 0.875}),
        # top 3: a-d too (a: b, c, d; d: a), at 0.5 = the floor
        (3, 0.5, {("a", "b"): 0.75, ("b", "c"): 0.875, ("a", "d"): 0.5}),
        # same ranks, a floor above a-d's score
        (3, 0.625, {("a", "b"): 0.75, ("b", "c"): 0.875}),
    ],
)
def test_mutual_rule_hand_example(rank, floor, want):
    nbrs = pd.DataFrame(MUT_ROWS, columns=["src", "dst", "score"]).astype({"score": np.float32})
    e = select_edges_pandas(nbrs, 0.9375, False, 0.9375, mutual_rank=rank, mutual_floor=floor)
    assert _und(e) == want
    cfg = MatchConf(threshold=0.9375, min2=False, min2_threshold=0.9375, mutual_rank=rank, mutual_floor=floor)
    s, d = nbrs["src"].map(dict(a=0, b=1, c=2, d=3)).to_numpy(), nbrs["dst"].map(dict(a=0, b=1, c=2, d=3)).to_numpy()
    sc = nbrs["score"].to_numpy()
    o = np.lexsort((d, -sc.astype(np.float64), s))
    a, b, w = R.rule_edges(s[o], d[o], sc[o], cfg)
    names = "abcd"
    assert {(names[i], names[j]): float(x) for i, j, x in zip(a, b, w, strict=True)} == want


def test_mutual_rule_spark_hand_example(spark):
    nbrs = pd.DataFrame(MUT_ROWS, columns=["src", "dst", "score"]).astype({"score": np.float32})
    cfg = MatchConf(threshold=0.9375, min2=False, min2_threshold=0.9375, mutual_rank=3, mutual_floor=0.5)
    got = _und(select_edges(spark.createDataFrame(nbrs), cfg).toPandas())
    assert got == {("a", "b"): 0.75, ("b", "c"): 0.875, ("a", "d"): 0.5}


def test_select_edges_match_reads_the_conf():
    cfg = MatchConf(threshold=0.9375, min2=False, min2_threshold=0.9375, **REL)
    assert _und(select_edges_match(_nbrs(), cfg)) == {("a", "b"): 0.875, ("a", "c"): 0.625, ("m", "n"): 0.96875}


@pytest.mark.parametrize(
    "key,value",
    [
        ("relative_rank", 0),
        ("relative_margin", -0.1),
        ("relative_floor", 1.5),
        ("mutual_rank", -1),
        ("mutual_floor", -2.0),
    ],
)
def test_match_conf_checks_the_relative_keys(key, value):
    with pytest.raises(ConfigError, match=f"match.{key}"):
        MatchConf(threshold=0.8, min2_threshold=0.5, **{key: value})


def test_relative_and_mutual_rules_are_off_by_default():
    assert MatchConf().relative is False
    assert MatchConf().mutual_rank == 0


def _random_nbrs(seed: int, n: int = 60, k: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        dst = rng.choice(n, size=rng.integers(1, k + 1), replace=False)
        # coarse scores: many ties, so the rank order and the tie rule matter
        for j, s in zip(dst, np.round(rng.uniform(0.2, 1.0, len(dst)) * 16) / 16, strict=True):
            rows.append((f"p{i:03d}", f"p{j:03d}", np.float32(s)))
    return pd.DataFrame(rows, columns=["src", "dst", "score"]).astype({"score": np.float32})


CONFS = [
    MatchConf(threshold=0.875, min2=False, min2_threshold=0.875, **REL),
    MatchConf(threshold=0.9, min2=True, min2_threshold=0.5, relative=True, relative_rank=4, relative_margin=0.0625),
    MatchConf(threshold=1.0, min2=False, min2_threshold=0.3, relative=True, relative_rank=2, relative_margin=0.1),
    MatchConf(threshold=0.95, min2=False, min2_threshold=0.3, mutual_rank=3, mutual_floor=0.5),
    MatchConf(
        threshold=0.875,
        min2=True,
        min2_threshold=0.5,
        relative=True,
        relative_rank=2,
        relative_margin=0.0625,
        relative_floor=0.375,
        mutual_rank=2,
        mutual_floor=0.5,
    ),
]


def test_select_edges_spark_equals_pandas_relative(spark):
    for seed, cfg in enumerate(CONFS):
        pdf = _random_nbrs(seed)
        want = _und(select_edges_match(pdf, cfg))
        got = _und(select_edges(spark.createDataFrame(pdf), cfg).toPandas())
        assert got == want
        assert want  # the case keeps something


def test_select_edges_spark_hand_example(spark):
    cfg = MatchConf(threshold=0.9375, min2=False, min2_threshold=0.9375, **REL)
    got = _und(select_edges(spark.createDataFrame(_nbrs()), cfg).toPandas())
    assert got == {("a", "b"): 0.875, ("a", "c"): 0.625, ("m", "n"): 0.96875}


@pytest.mark.parametrize("cfg", [*CONFS, MatchConf(threshold=0.75, min2=True, min2_threshold=0.5)])
def test_fast_rule_edges_equal_pandas(cfg):
    pdf = _random_nbrs(7, n=80)
    pdf = pdf[pdf["src"] != pdf["dst"]]  # the fast path gets knn rows: no self rows
    pos = {p: i for i, p in enumerate(sorted(set(pdf["src"]) | set(pdf["dst"])))}
    s = pdf["src"].map(pos).to_numpy()
    d = pdf["dst"].map(pos).to_numpy()
    sc = pdf["score"].to_numpy()
    o = np.lexsort((d, -sc.astype(np.float64), s))
    a, b, w = R.rule_edges(s[o], d[o], sc[o], cfg)
    names = sorted(pos)
    got = {(names[i], names[j]): float(x) for i, j, x in zip(a, b, w, strict=True)}
    assert got == _und(select_edges_match(pdf, cfg))


def test_rule_edges_phash_union_keeps_the_best_score():
    src, dst, sc = np.array([0, 1]), np.array([1, 0]), np.array([0.5, 0.5], dtype=np.float32)
    cfg = MatchConf(threshold=0.5, min2=False, min2_threshold=0.5)
    a, b, w = R.rule_edges(src, dst, sc, cfg, phash=(np.array([0, 2]), np.array([1, 3]), np.array([0.875, 0.9375])))
    assert list(zip(a.tolist(), b.tolist(), w.tolist(), strict=True)) == [(0, 1, 0.875), (2, 3, 0.9375)]


# --------------------------------------------------------------------------------------
# the suite's catalogs and cluster metric


def _labelled(n_groups: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        for j in range(int(rng.integers(2, 6))):
            rows.append((f"g{g}_{j}", f"title {g} {j}", "0" * 16, f"G{g}", 1 + g % 4))
    return pd.DataFrame(rows, columns=["posting_id", "title", "image_phash", "label_group", "fold"])


def test_singletons_catalog():
    df = _labelled(40)
    base, pool = df[df["fold"] == 1], df[df["fold"] != 1]
    cat = R.singletons_catalog(base, pool, seed=3)
    extra = cat[~cat["posting_id"].isin(base["posting_id"])]
    # 10 base groups (fold 1) and 30 pool groups: as many extra listings as base ones, or one per pool group
    assert len(extra) == min(len(base), 30)
    assert extra["label_group"].is_unique  # one listing per group, its group-mates left out
    assert not set(extra["label_group"]) & set(base["label_group"])
    assert set(base["posting_id"]) <= set(cat["posting_id"])


def test_pairs_and_size_catalogs():
    df = _labelled(40)
    pairs = R.pairs_catalog(df, seed=1)
    assert (pairs.groupby("label_group").size() == 2).all()
    assert pairs["label_group"].nunique() == 40
    sized = R.size_catalog(df, 50, seed=2)
    sizes = df.groupby("label_group").size()
    assert len(sized) >= 50 and len(sized) - 50 < sizes.max()  # whole groups, stops once n is reached
    got = sized.groupby("label_group").size()
    assert (got == sizes.loc[got.index]).all()


def test_labelled_listings_cleans_like_the_reader():
    df = pd.DataFrame(
        {
            "posting_id": ["a", "a", " ", None, "b", "c"],
            "title": ["Kaos  \\xe2\\x9c\\x85 x", "dup", "blank id", "no id", "", "  "],
            "image_phash": ["ABCDEF0123456789", None, None, None, "xyz", "0123456789abcdef"],
            "label_group": ["1", "1", "2", "3", "4", "5"],
        }
    )
    out = R.labelled_listings(df)
    # a: first row kept, title unescaped; b: no title and a bad pHash -> dropped; c: pHash only
    assert out["posting_id"].tolist() == ["a", "c"]
    assert out["title"].tolist() == ["Kaos \u2705 x", ""]
    assert out["image_phash"].tolist() == ["abcdef0123456789", "0123456789abcdef"]


def test_cluster_scores_hand_example():
    # truth {0,1,2} {3}; predicted groups {0,1} {2,3}
    # F1: rows 0,1: 2*2/(3+2) = 0.8; row 2: 2*1/(3+2) = 0.4; row 3: 2*1/(1+2) = 2/3
    f1, p, r = R.cluster_scores(["x", "x", "x", "y"], [0, 0, 5, 5])
    assert f1 == pytest.approx((0.8 + 0.8 + 0.4 + 2 / 3) / 4)
    assert p == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)
    assert r == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1) / 4)


def test_cluster_scores_equal_the_metric_module():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 30, 200)
    groups = rng.integers(0, 50, 200)
    ids = [f"p{i}" for i in range(200)]
    truth = pd.DataFrame({"posting_id": ids, "label_group": labels.astype(str)})
    ref = row_scores(pairs_from_groups(pd.DataFrame({"posting_id": ids, "group_id": groups})), ids, truth)
    assert R.cluster_scores(labels, groups) == pytest.approx((ref.f1, ref.precision, ref.recall))


def test_guarded_groups_split_large_components():
    # a chain 0-1-2-3 (weak link 1-2 at 0.6) and a pair 4-5; max_group 3 re-cuts the chain at 0.65
    a, b = np.array([0, 1, 2, 4]), np.array([1, 2, 3, 5])
    w = np.array([0.9, 0.6, 0.9, 0.7])
    g = R.guarded_groups(6, a, b, w, base_threshold=0.6, max_group=3, step=0.05)
    assert g[0] == g[1] and g[2] == g[3] and g[0] != g[2]
    assert g[4] == g[5] and g[4] not in (g[0], g[2])
    g = R.guarded_groups(6, a, b, w, base_threshold=0.6, max_group=4, step=0.05)
    assert len({g[0], g[1], g[2], g[3]}) == 1


def test_pair_scores_on_rows_equal_the_metric_and_groups_by_hand():
    from listing_dedup.quality.metrics import pair_scores
    from listing_dedup.quality.tune import PairScorer

    labels = np.array(["1", "1", "1", "2", "2", "3"])
    a, b = np.array([0, 1, 0, 3, 2]), np.array([1, 0, 3, 4, 5])  # 0-1 twice (one pair), 0-3, 3-4, 2-5
    ids = [f"r{i}" for i in range(6)]
    ref = pair_scores(
        pd.DataFrame({"posting_id": [ids[i] for i in a], "match_id": [ids[i] for i in b]}),
        ids,
        pd.DataFrame({"posting_id": ids, "label_group": labels}),
    )
    # true pairs 01 02 12 34 = 4; predicted 01 03 34 25 = 4; correct 01 34 = 2
    assert (ref.true, ref.predicted, ref.correct) == (4, 4, 2)
    assert PairScorer(labels).pair_scores(a, b) == pytest.approx((ref.f1, ref.precision, ref.recall))
    # groups {0,1,2,3}, {4}, {5}: predicted pairs 6, correct 01 02 12 = 3, true 4
    f1, p, r = R.cluster_pair_scores(labels, np.array([0, 0, 0, 0, 4, 5]))
    assert (p, r, f1) == pytest.approx((3 / 6, 3 / 4, 2 * 3 / (6 + 4)))


def test_veto_keeps_edges_unless_titles_conflict():
    df = pd.DataFrame(
        {
            "title": ["TV 40in XX40A550", "TV 52in XX52A650", "tv xx40a550", "TV 40in", "TV 52in"],
            "brand": ["acme", "acme", "acme", None, "zeta"],
        }
    )
    a, b = np.array([0, 0, 3, 1]), np.array([1, 2, 4, 4])
    w = np.array([0.97, 0.9, 0.9, 0.9])
    # 0-1 codes conflict (kept only at >= 0.96); 0-2 share a code; 3-4 sizes conflict; 1-4 brands conflict
    assert R.veto_keep(df, a, b, w, above=1.01).tolist() == [False, True, False, False]
    assert R.veto_keep(df, a, b, w, above=0.96).tolist() == [True, True, False, False]
    assert R.veto_keep(df, a, b, w, above=1.01, kinds=("code",)).tolist() == [False, True, True, True]
    assert R.veto_keep(df, a, b, w, above=1.01, kinds=("brand",)).tolist() == [True, True, True, False]
