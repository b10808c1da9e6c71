"""Why each match was kept (lib/listing_dedup/graph/explain.py): the label rule, the pHash
distance, the per-signal scores and the ``matches`` rows with their explanations aligned."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from listing_dedup.embed.fusion import Layout
from listing_dedup.graph.edges import match_sets
from listing_dedup.graph.explain import EdgeRule, explain_edges, explained_match_sets, kept_by, phash_distance

RULE = EdgeRule(None, 0.75, min2=True, min2_threshold=0.5)
MODEL = EdgeRule("reranker:builtin", 0.4, min2=True, min2_threshold=0.2)


def test_kept_by_names_the_rule_the_model_the_phash_pair_and_the_decision():
    assert kept_by(RULE, must=False, rule_score=0.8, phash_pair=False) == "threshold"
    assert kept_by(RULE, must=False, rule_score=0.8, phash_pair=True) == "threshold+phash"
    assert kept_by(RULE, must=False, rule_score=0.6, phash_pair=True) == "phash"
    assert kept_by(RULE, must=False, rule_score=0.6, phash_pair=False) == "min2"
    assert kept_by(RULE, must=True, rule_score=None, phash_pair=False) == "must-link"
    assert kept_by(MODEL, must=False, rule_score=0.45, phash_pair=False) == "reranker:builtin"
    assert kept_by(MODEL, must=False, rule_score=0.3, phash_pair=False) == "reranker:builtin:min2"
    both = EdgeRule(None, 0.75, relative=True, relative_floor=0.5, union=("image",))
    assert kept_by(both, must=False, rule_score=0.6, phash_pair=False) == "relative|union:image"
    assert kept_by(both, must=False, rule_score=float("nan"), phash_pair=False) == "union:image"
    assert kept_by(EdgeRule(None, 0.75), must=False, rule_score=None, phash_pair=False) == "unknown"


def test_phash_distance_counts_differing_bits():
    assert phash_distance("ffffffffffffffff", "fffffffffffffff0") == 4
    assert phash_distance("0123456789abcdef", "0123456789abcdef") == 0
    assert phash_distance("0000000000000000", "ffffffffffffffff") == 64
    assert phash_distance(None, "ffffffffffffffff") is None and phash_distance("zz", "00") is None


def _vec(text, lexical):
    return [float(x) for x in np.sqrt(0.5) * np.array([*text, *lexical])]


def test_matches_rows_carry_the_explanations_in_match_order(spark):
    """a-b kept by the rule (fused 0.9 = the mean of text 0.8 and lexical 1.0), a-c only by its
    pHash pair (4 bits apart), d-e by a must-link: the explanations follow match_ids, whose order
    and scores are match_sets'."""
    edges = spark.createDataFrame(
        [("a", "b", 0.9), ("b", "a", 0.9), ("a", "c", 0.5), ("c", "a", 0.5), ("d", "e", 1.0), ("e", "d", 1.0)],
        "src string, dst string, score float",
    )
    kept = spark.createDataFrame(
        [("a", "ffffffffffffffff"), ("b", None), ("c", "fffffffffffffff0"), ("d", None), ("e", None), ("f", None)],
        "posting_id string, image_phash string",
    )
    fused = spark.createDataFrame(
        [
            ("a", _vec([1, 0], [1, 0])),
            ("b", _vec([0.8, 0.6], [1, 0])),
            ("c", _vec([0, 1], [1, 0])),
            ("d", _vec([1, 0], [0, 1])),
            ("e", _vec([1, 0], [0, 1])),
        ],
        "posting_id string, emb array<float>",
    )
    nbrs = spark.createDataFrame([("a", "b", 0.9), ("a", "c", 0.5)], "src string, dst string, score float")
    ph = spark.createDataFrame([("a", "c", 0.9375), ("c", "a", 0.9375)], "src string, dst string, score float")
    ex = explain_edges(
        edges,
        kept=kept,
        rule=RULE,
        fused=fused,
        layout=Layout(("text", "lexical"), (2, 2), (0.5, 0.5)),
        rule_scores=nbrs,
        phash_pairs=ph,
        must_links=[("e", "d")],
    )
    vertices = kept.select("posting_id")
    got = explained_match_sets(ex, vertices).toPandas().set_index("posting_id")
    plain = match_sets(edges, vertices).toPandas().set_index("posting_id")
    assert [list(x) for x in got["match_ids"]] == [list(x) for x in plain["match_ids"]]
    assert [list(x) for x in got["scores"]] == [list(x) for x in plain["scores"]]
    assert list(got.loc["a", "kept_by"]) == ["threshold", "phash"]
    assert list(got.loc["c", "kept_by"]) == ["phash"] and list(got.loc["d", "kept_by"]) == ["must-link"]
    assert list(got.loc["f", "kept_by"]) == [] and list(got.loc["f", "phash_distance"]) == []
    ab = dict(got.loc["a", "signal_scores"][0])
    assert math.isclose(ab["text"], 0.8, abs_tol=1e-5) and math.isclose(ab["lexical"], 1.0, abs_tol=1e-5)
    assert math.isclose(ab["fused"], 0.9, abs_tol=1e-5) and "phash" not in ab
    assert math.isclose(dict(got.loc["a", "signal_scores"][1])["phash"], 0.9375)
    dist = got.loc["a", "phash_distance"]
    assert pd.isna(dist[0]) and dist[1] == 4  # b has no pHash; a and c are 4 bits apart
