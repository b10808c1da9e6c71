"""The rows of a listing's list the edge rules read (search/rounds.rule_rows): the edges that
graph/edges.select_edges_match (the rules' pandas reference) keeps from them are the edges it
keeps from the whole top k, for each rule on and off. The lists are random with ties and
near-threshold scores; the whole lists' edges are the expected value."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from listing_dedup.config import MatchConf
from listing_dedup.graph.edges import select_edges_match
from listing_dedup.search.rounds import rule_depth, rule_rows

K, DEPTH = 8, 11


def ranked_lists(seed: int = 5, n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        dst = rng.choice([j for j in range(n) if j != i], DEPTH, replace=False)
        score = np.round(rng.uniform(0.3, 1.0, DEPTH), 2).astype(np.float32)  # rounded: ties
        rows += [(f"p{i:02d}", f"p{j:02d}", s) for j, s in zip(dst, score)]
    df = pd.DataFrame(rows, columns=["src", "dst", "score"])
    df = df.sort_values(["src", "score", "dst"], ascending=[True, False, True], kind="stable")
    return df.assign(rank=df.groupby("src").cumcount() + 1).reset_index(drop=True)


RULES = [
    MatchConf(threshold=0.9, min2=False, relative=True, relative_rank=2, relative_margin=0.05, relative_floor=0.3,
              mutual_rank=2, mutual_floor=0.6),  # conf/local.yaml's
    MatchConf(threshold=0.8, min2=True, min2_threshold=0.5),
    MatchConf(threshold=0.95, min2=False, relative=True, relative_rank=5, relative_margin=0.02, relative_floor=0.5),
    MatchConf(threshold=0.85, min2=False, mutual_rank=4, mutual_floor=0.4),
    MatchConf(threshold=0.7, min2=False),
]  # fmt: skip


@pytest.mark.parametrize("rule", RULES)
def test_the_rules_read_only_the_rows_rule_rows_keeps(spark, rule):
    lists = ranked_lists()
    top = lists[lists["rank"] <= K][["src", "dst", "score"]]
    want = select_edges_match(top, rule)
    rows = rule_rows(spark.createDataFrame(lists, "src string, dst string, score float, rank int"), K, rule)
    rows = rows.toPandas()
    got = select_edges_match(rows, rule)
    assert len(want) > 20
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False)
    assert len(rows) < len(top)  # the point: fewer rows than the top k (about rule_depth + a few a listing)
    assert rule_depth(rule) >= 1
