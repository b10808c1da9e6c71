"""The optional ``source`` attribute (issue 30): where the listings name their duplicate-free
source (two shops' deduplicated catalogs matched), the re-ranker's edges follow the one-to-one
rule (graph/rerank.one_to_one_keep): no match within a source, at most one per other source, and
the pair must be each other's most probable candidate there. By hand; the Spark rule equal to
the numpy one on a small frame (the shared session)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from listing_dedup.config import RerankConf
from listing_dedup.graph.rerank import (
    ONE_CANDIDATE_P,
    SOURCE_RULE,
    Reranker,
    one_to_one_keep,
    one_to_one_spark,
    rerank_rule_spark,
    source_constrained,
    source_rule,
)
from listing_dedup.ingest.rows import attribute_columns, validate_attributes
from listing_dedup.quality.robust import SOURCE_PREFIXES, source_of

# listings 0, 1, 5 of shop A; 2, 3, 6, 7 of shop B; 4 names no source
SOURCES = ["A", "A", "B", "B", None, "A", "B", "B"]
ROWS = [  # src, dst, p, kept by the one-to-one rule
    (0, 2, 0.90, True),  # 0's best in B is 2 and 2's best in A is 0
    (0, 3, 0.80, False),  # not 0's best in B
    (0, 1, 0.95, False),  # one source: never a match
    (2, 0, 0.90, True),
    (2, 1, 0.70, False),
    (3, 0, 0.85, False),  # 3's best in A is 0, but 0's best in B is 2
    (3, 1, 0.60, False),
    (1, 2, 0.70, False),  # 1's best in B is 2, whose best in A is 0
    (1, 3, 0.60, False),
    (0, 4, 0.50, True),  # 4 names no source: unconstrained
    (5, 6, 0.50, True),  # a tie in 5's list: the smaller dst (6); 6's only candidate in A is 5
    (5, 7, 0.50, False),
    (6, 5, 0.40, True),
    (7, 5, 0.50, False),  # 7's best in A is 5, but 5's best in B is 6
]


def _rows():
    src, dst, p, want = (np.array(c) for c in zip(*ROWS, strict=True))
    so = np.array(SOURCES, dtype=object)
    return src, dst, p.astype(np.float64), so[src], so[dst], want.astype(bool)


def test_one_to_one_keep_by_hand():
    src, dst, p, ss, sd, want = _rows()
    assert one_to_one_keep(src, dst, p, ss, sd).tolist() == want.tolist()
    # no source on either end of any row: every row stays
    none = [None] * len(src)
    assert one_to_one_keep(src, dst, p, none, none).all()


def test_source_constrained_zeroes_the_dropped_rows_and_says_whether_it_ran():
    src, dst, p, ss, sd, want = _rows()
    frame = pd.DataFrame({"src": src, "dst": dst, "source_src": ss, "source_dst": sd})
    got, applied = source_constrained(frame, p)
    assert applied and got.tolist() == np.where(want, p, 0.0).tolist()
    same, applied = source_constrained(frame.drop(columns=["source_src", "source_dst"]), p)
    assert not applied and same is p


def test_source_rule_keeps_one_candidate_only_when_it_more_likely_matches_than_not():
    # one candidate of probability p: expected row-wise F1 p + (1 - p) * 2/3 if kept, p * 2/3 + (1 - p)
    # if not; equal at p = 0.5
    assert ONE_CANDIDATE_P == 0.5
    rr = source_rule(RerankConf(threshold=0.35, min2=False, min2_threshold=0.35))
    assert (rr.threshold, rr.min2_threshold) == (0.5, 0.35)
    assert source_rule(RerankConf(threshold=0.6, min2_threshold=0.2)).threshold == 0.6  # never lowered


def test_one_to_one_spark_equals_numpy_and_the_job_rule_reads_it(spark):
    src, dst, p, ss, sd, want = _rows()
    ids = np.array([f"p{i}" for i in range(len(SOURCES))], dtype=object)  # p0 < p1 < ... as the row order
    pdf = pd.DataFrame({"src": ids[src], "dst": ids[dst], "p": p, "source_src": ss, "source_dst": sd})
    df = spark.createDataFrame(pdf, "src string, dst string, p double, source_src string, source_dst string")
    got = one_to_one_spark(df).toPandas().set_index(["src", "dst"])["p"]
    exp = pd.Series(np.where(want, p, 0.0), index=pd.MultiIndex.from_arrays([pdf["src"], pdf["dst"]]))
    assert got.reindex(exp.index).tolist() == exp.tolist()
    # the job's rule on a scored frame of the one-to-one rule: raised to ONE_CANDIDATE_P, no prior shift
    scored = df.selectExpr("src", "dst", "cast(p as float) as score", f"true as {SOURCE_RULE}")
    cfg = type("Cfg", (), {"rerank": RerankConf(threshold=0.35, min2=False, min2_threshold=0.35)})()
    model = Reranker(("",), {"prior_shift": True, "train_prior": 0.1})
    rule, note = rerank_rule_spark(cfg, model, scored)
    assert rule.threshold == 0.5 and not rule.min2 and note.startswith("sources:")


def test_the_source_attribute_is_read_and_the_two_source_catalogs_name_theirs():
    assert attribute_columns(["posting_id", "title", "source"]) == {"source": "source"}
    cleaned, nulled = validate_attributes({"source": pd.Series([" shop a ", None, ""])})
    assert cleaned["source"].tolist() == ["shop a", None, None] and nulled.isna().all()
    ids = pd.Series(["ag_a_b000jz4hqo", "ag_g_1234", "x_1"])
    assert source_of(ids, SOURCE_PREFIXES["amazon_google"]).tolist() == ["ag_a", "ag_g", None]
    assert set(SOURCE_PREFIXES) == {"amazon_google", "walmart_amazon"}  # wdc_products: many shops, unnamed


@pytest.mark.parametrize(("n", "want"), [(0, []), (1, [False])])
def test_one_to_one_keep_on_tiny_inputs(n, want):
    # one row 0 -> 2 alone: 2 -> 0 was not scored, so the pair is not each other's best
    src, dst, p, ss, sd, _ = (x[:n] for x in _rows())
    assert one_to_one_keep(src, dst, p, ss, sd).tolist() == want
