"""Edge selection (threshold, min2, symmetrise) and match sets: hand-computed examples,
pandas and Spark implementations checked against the same expected values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from listing_dedup.config import MatchConf
from listing_dedup.graph.edges import (
    match_sets,
    match_sets_pandas,
    select_edges,
    select_edges_pandas,
)

# directed neighbour lists (src -> dst, score)
NBRS = [
    ("A", "A", 1.0),  # a self row: ignored
    ("A", "B", 0.90),
    ("A", "C", 0.60),
    ("B", "A", 0.88),  # the two directions disagree slightly: the edge keeps the max
    ("B", "C", 0.80),
    ("C", "B", 0.80),
    ("C", "A", 0.60),
    ("D", "E", 0.60),  # D: best below threshold, above min2 -> exactly one edge D-E
    ("D", "G", 0.30),
    ("E", "G", 0.80),
    ("E", "D", 0.60),  # E has a kept neighbour, so E itself does not use min2
    ("G", "E", 0.80),
    ("H", "I", 0.40),  # H: best below min2_threshold -> stays alone
    ("I", "J", 0.45),
    ("I", "H", 0.40),
    ("J", "I", 0.45),
    ("K", "L", 0.80),  # kept by K only: the edge still exists in both directions
    ("L", "M", 0.76),
    ("M", "L", 0.76),
    ("N", "P", 0.60),  # tie for N's nearest neighbour: the smaller id (O) wins
    ("N", "O", 0.60),
    ("Q", "R", 0.75),  # exactly at the threshold: kept
]

CFG = MatchConf(threshold=0.75, min2=True, min2_threshold=0.5)

# undirected expected edges
EXPECTED_MIN2 = {
    ("A", "B"): 0.90,
    ("B", "C"): 0.80,
    ("D", "E"): 0.60,
    ("E", "G"): 0.80,
    ("K", "L"): 0.80,
    ("L", "M"): 0.76,
    ("N", "O"): 0.60,
    ("Q", "R"): 0.75,
}
EXPECTED_NO_MIN2 = {k: v for k, v in EXPECTED_MIN2.items() if k not in {("D", "E"), ("N", "O")}}


def _nbrs_pdf(rows=NBRS) -> pd.DataFrame:
    pdf = pd.DataFrame(rows, columns=["src", "dst", "score"])
    pdf["score"] = pdf["score"].astype(np.float32)
    return pdf


def _directed(undirected: dict) -> dict:
    out = {}
    for (a, b), s in undirected.items():
        out[(a, b)] = s
        out[(b, a)] = s
    return out


def _as_dict(pdf: pd.DataFrame) -> dict:
    keys = list(zip(pdf["src"], pdf["dst"]))
    assert len(keys) == len(set(keys)), "duplicate edges"
    return {k: float(s) for k, s in zip(keys, pdf["score"])}


def _assert_edges(got: dict, expected: dict) -> None:
    assert set(got) == set(expected), (sorted(set(got) - set(expected)), sorted(set(expected) - set(got)))
    for k, s in expected.items():
        assert got[k] == pytest.approx(s, abs=1e-6), k


def _spark_edges(spark, pdf: pd.DataFrame, cfg: MatchConf) -> dict:
    df = spark.createDataFrame(pdf, schema="src string, dst string, score float")
    return _as_dict(select_edges(df, cfg).toPandas())


@pytest.mark.parametrize("min2", [True, False])
def test_select_edges_pandas_hand_example(min2):
    out = select_edges_pandas(_nbrs_pdf(), CFG.threshold, min2, CFG.min2_threshold)
    expected = _directed(EXPECTED_MIN2 if min2 else EXPECTED_NO_MIN2)
    _assert_edges(_as_dict(out), expected)
    assert list(out.columns) == ["src", "dst", "score"]
    assert out["score"].dtype == np.float32
    assert not (out["src"] == out["dst"]).any()


def test_min2_rules_in_detail():
    out = _as_dict(select_edges_pandas(_nbrs_pdf(), 0.75, True, 0.5))
    deg = pd.Series([s for s, _ in out]).value_counts()
    assert deg["D"] == 1 and out[("D", "E")] == pytest.approx(0.6)  # above min2, below threshold
    for alone in ("H", "I", "J"):  # best neighbour below min2_threshold
        assert alone not in deg.index
    assert deg["N"] == 1 and ("N", "O") in out and ("N", "P") not in out  # tie -> smaller id
    assert out[("B", "A")] == out[("A", "B")] == pytest.approx(0.9)  # symmetric, max score
    assert ("L", "K") in out  # kept by K only


def test_select_edges_spark_matches_hand_example(spark):
    for min2, expected in ((True, EXPECTED_MIN2), (False, EXPECTED_NO_MIN2)):
        cfg = MatchConf(threshold=0.75, min2=min2, min2_threshold=0.5)
        _assert_edges(_spark_edges(spark, _nbrs_pdf(), cfg), _directed(expected))


def test_float32_threshold_boundary_same_in_pandas_and_spark(spark):
    # float32(0.7) < 0.7 in double precision: not kept by either implementation
    pdf = _nbrs_pdf([("a", "b", 0.7), ("c", "d", 0.71), ("e", "f", 0.5)])
    cfg = MatchConf(threshold=0.7, min2=False, min2_threshold=0.5)
    pd_out = _as_dict(select_edges_pandas(pdf, cfg.threshold, cfg.min2, cfg.min2_threshold))
    assert set(pd_out) == {("c", "d"), ("d", "c")}
    assert _spark_edges(spark, pdf, cfg).keys() == pd_out.keys()


def test_select_edges_spark_equals_pandas_random(spark):
    rng = np.random.default_rng(1)
    ids = [f"x{i:02d}" for i in range(60)]
    rows = []
    for s in ids:
        for d in rng.choice(ids, 6, replace=False):
            rows.append((s, d, float(rng.choice([0.3, 0.5, 0.55, 0.6, 0.7, 0.75, 0.8, 0.95]))))
    pdf = _nbrs_pdf(rows)
    for cfg in (MatchConf(0.75, True, 0.55), MatchConf(0.8, False, 0.5), MatchConf(0.6, True, 0.6)):
        want = _as_dict(select_edges_pandas(pdf, cfg.threshold, cfg.min2, cfg.min2_threshold))
        got = _spark_edges(spark, pdf, cfg)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], abs=1e-7)
        # both directions present with the same score
        assert all(want[(b, a)] == s for (a, b), s in want.items())


def test_match_sets(spark):
    edges = pd.DataFrame(
        [("X", "Y", 0.7), ("X", "Z", 0.7), ("X", "W", 0.9), ("Y", "X", 0.7), ("Z", "X", 0.7), ("W", "X", 0.9)],
        columns=["src", "dst", "score"],
    )
    edges["score"] = edges["score"].astype(np.float32)
    vertices = ["W", "X", "Y", "Z", "lonely"]
    expected = {
        "W": (["X"], [0.9]),
        "X": (["W", "Y", "Z"], [0.9, 0.7, 0.7]),  # score desc, then id
        "Y": (["X"], [0.7]),
        "Z": (["X"], [0.7]),
        "lonely": ([], []),
    }
    edf = spark.createDataFrame(edges, schema="src string, dst string, score float")
    vdf = spark.createDataFrame(pd.DataFrame({"posting_id": vertices}), schema="posting_id string")
    out = match_sets(edf, vdf)
    assert [(f.name, f.dataType.simpleString()) for f in out.schema.fields] == [
        ("posting_id", "string"),
        ("match_ids", "array<string>"),
        ("scores", "array<float>"),
    ]
    rows = {r["posting_id"]: (list(r["match_ids"]), list(r["scores"])) for r in out.collect()}
    pd_rows = {
        r.posting_id: (list(r.match_ids), list(r.scores)) for r in match_sets_pandas(edges, vertices).itertuples()
    }
    for got in (rows, pd_rows):
        assert set(got) == set(expected)
        for v, (ids, scores) in expected.items():
            assert got[v][0] == ids, v
            np.testing.assert_allclose(got[v][1], scores, atol=1e-6)


def test_hand_example_end_to_end_match_sets(spark):
    edges = select_edges_pandas(_nbrs_pdf(), 0.75, True, 0.5)
    sets = match_sets_pandas(edges, list("ABCDEGHIJKLMNOPQR"))
    m = {r.posting_id: r.match_ids for r in sets.itertuples()}
    assert m["A"] == ["B"] and m["B"] == ["A", "C"] and m["E"] == ["G", "D"]
    assert m["H"] == [] and m["P"] == [] and m["O"] == ["N"]


def test_veto_mask_by_hand():
    from listing_dedup.graph.edges import veto_mask

    a = ["TV 40in XX40A550", "TV 40in XX40A550", "TV 40in", "iPod nano 8GB", "Lamp"]
    b = ["TV 52in XX52A650", "tv xx40a550", "TV 52in", "iPod nano 8GB", "Lamp"]
    s = np.array([0.97, 0.9, 0.9, 0.9, 0.9])
    # codes conflict (kept only at >= 0.95 here); a shared code; sizes conflict; same; nothing to compare
    assert veto_mask(a, b, s, 0.95).tolist() == [True, True, False, True, True]
    assert veto_mask(a, b, s, 1.0).tolist() == [False, True, False, True, True]
    # attributes: different model numbers conflict; different brands conflict
    m = veto_mask(
        a[3:4] * 2,
        b[3:4] * 2,
        s[:2],
        1.0,
        models_a=["MC688LL/A", None],
        models_b=["MC525LL/A", None],
        brands_a=[None, "Apple"],
        brands_b=[None, "Belkin"],
    )
    assert m.tolist() == [False, False]


def test_veto_edges_spark_equals_the_mask(spark):
    from listing_dedup.graph.edges import veto_edges

    listings = spark.createDataFrame(
        [
            ("p0", "TV 40in XX40A550", "acme"),
            ("p1", "TV 52in XX52A650", "acme"),
            ("p2", "tv xx40a550", None),
            ("p3", "Lamp", "zeta"),
        ],
        "posting_id string, title string, brand string",
    )
    und = [("p0", "p1", 0.9), ("p0", "p2", 0.9), ("p2", "p3", 0.8), ("p0", "p3", 0.8)]
    edges = spark.createDataFrame([*und, *[(d, s, x) for s, d, x in und]], "src string, dst string, score float")
    got = sorted(tuple(r) for r in veto_edges(edges, listings, 1.0).select("src", "dst").collect())
    # p0-p1 codes conflict: dropped; p0-p3 brands conflict: dropped; p0-p2 share a code; p2-p3: no brand on p2
    assert got == [("p0", "p2"), ("p2", "p0"), ("p2", "p3"), ("p3", "p2")]
