"""Reviewers' decisions as must-/cannot-links (lib/listing_dedup/graph/constraints.py): the pure
core by hand-worked graphs and by the invariants on random graphs (every honoured cannot-link
separated, every honoured must-link joined, each group connected by its kept edges, groups
without a decision as the plain components), and the Spark layer on a small frame."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
from listing_dedup.graph.components import components_numpy
from listing_dedup.graph.constraints import (
    DIFFERENT,
    MUST_SCORE,
    SAME,
    apply_constraints_spark,
    constrained_groups,
    latest_first,
    resolve_links,
)


def groups_of(ids, edges, decisions):
    src, dst, score = zip(*edges) if edges else ((), (), ())
    out, stats = constrained_groups(ids, src, dst, score, decisions)
    return dict(zip(ids, out)), stats


def test_a_cannot_link_cuts_a_chain_at_its_weakest_edge():
    # a-b strong, b-c weaker, c-d strong: a single group; a != d cuts the weakest link b-c
    ids = ["a", "b", "c", "d", "e"]
    edges = [("a", "b", 0.95), ("b", "c", 0.7), ("c", "d", 0.9)]
    g, stats = groups_of(ids, edges, [("a", "d", DIFFERENT)])
    assert g == {"a": "a", "b": "a", "c": "c", "d": "c", "e": "e"}
    assert (stats.cannot, stats.cut_groups, stats.joined_groups, stats.cut_edges) == (1, 1, 0, 1)


def test_a_cannot_link_on_a_direct_edge_of_a_triangle_keeps_the_third_with_its_strongest():
    ids = ["a", "b", "c"]
    edges = [("a", "b", 0.9), ("b", "c", 0.8), ("a", "c", 0.85)]
    g, stats = groups_of(ids, edges, [("a", "b", DIFFERENT)])
    # a-b is never added; a-c (0.85) joins c to a; b-c would then join a and b: refused
    assert g == {"a": "a", "b": "b", "c": "a"}
    assert stats.cut_groups == 1 and stats.cut_edges == 2  # a-b and b-c now run between groups


def test_a_must_link_joins_two_groups():
    ids = ["a", "b", "c", "d"]
    edges = [("a", "b", 0.9), ("c", "d", 0.9)]
    g, stats = groups_of(ids, edges, [("b", "d", SAME)])
    assert set(g.values()) == {"a"}
    assert (stats.must, stats.joined_groups, stats.cut_groups) == (1, 1, 0)


def test_the_latest_decision_wins_through_a_chain():
    # latest first: a != c, then the older a = b and b = c: the older b = c is overridden
    assert resolve_links([("a", "c", DIFFERENT), ("a", "b", SAME), ("b", "c", SAME)]).tolist() == [True, True, False]
    # the same decisions, a != c the oldest: it is the one overridden
    assert resolve_links([("a", "b", SAME), ("b", "c", SAME), ("a", "c", DIFFERENT)]).tolist() == [True, True, False]
    g, stats = groups_of(["a", "b", "c"], [], [("a", "c", DIFFERENT), ("a", "b", SAME), ("b", "c", SAME)])
    assert g == {"a": "a", "b": "a", "c": "c"} and stats.overridden == 1


def test_decisions_on_unknown_ids_are_ignored_and_no_decision_changes_nothing():
    ids = ["a", "b", "c"]
    edges = [("a", "b", 0.9), ("b", "c", 0.9)]
    g, stats = groups_of(ids, edges, [("a", "zz", DIFFERENT)])
    assert set(g.values()) == {"a"} and stats.cannot == 0


def test_latest_first_keeps_the_latest_decision_of_each_pair():
    t = pd.Timestamp("2026-12-01", tz="UTC")
    d = pd.DataFrame(
        {
            "posting_id_a": ["a", "a", "c"],
            "posting_id_b": ["b", "b", "d"],
            "verdict": [SAME, DIFFERENT, SAME],
            "decided_at": [t, t + pd.Timedelta(hours=1), t + pd.Timedelta(hours=2)],
        }
    )
    out = latest_first(d)
    assert out[["posting_id_a", "verdict"]].values.tolist() == [["c", SAME], ["a", DIFFERENT]]


def _random_case(rng: random.Random):
    n = rng.randint(2, 14)
    ids = [f"p{i:02d}" for i in rng.sample(range(100), n)]
    edges = []
    for _ in range(rng.randint(0, 3 * n)):
        a, b = rng.sample(ids, 2)
        edges.append((a, b, round(rng.random(), 2)))
    decisions = []
    for _ in range(rng.randint(0, 4)):
        a, b = rng.sample(ids, 2)
        decisions.append((a, b, rng.choice([SAME, DIFFERENT])))
    return ids, edges, decisions


@pytest.mark.parametrize("seed", range(40))
def test_random_graphs_honour_every_honoured_decision(seed):
    rng = random.Random(seed)
    ids, edges, decisions = _random_case(rng)
    g, _ = groups_of(ids, edges, decisions)
    honoured = resolve_links(decisions)
    for (a, b, v), ok in zip(decisions, honoured):
        if ok:
            assert (g[a] == g[b]) == (v == SAME), (a, b, v)
    # each group is connected by its own edges and the honoured must-links
    must = [(a, b, MUST_SCORE) for (a, b, v), ok in zip(decisions, honoured) if ok and v == SAME]
    inside = [(a, b) for a, b, _ in edges + must if g[a] == g[b]]
    src, dst = zip(*inside) if inside else ((), ())
    assert dict(zip(ids, components_numpy(ids, src, dst))) == g
    # a group (of the plain components) that no decision touches is unchanged
    plain = dict(zip(ids, components_numpy(ids, [e[0] for e in edges], [e[1] for e in edges])))
    touched = {plain[x] for a, b, _ in decisions for x in (a, b)}
    for x in ids:
        if plain[x] not in touched:
            assert g[x] == plain[x]
    # the next night, the same edges and decisions: the same groups (a cut stays cut)
    assert groups_of(list(reversed(ids)), list(reversed(edges)), decisions)[0] == g


def test_spark_layer_cuts_joins_and_keeps_the_untouched_groups(spark):
    groups = pd.DataFrame(
        {
            "posting_id": ["a", "b", "c", "d", "e", "f", "x", "y"],
            "group_id": ["a", "a", "a", "a", "e", "f", "x", "x"],
            "group_size": np.array([4, 4, 4, 4, 1, 1, 2, 2], dtype=np.int32),
        }
    )
    pairs = [("a", "b", 0.95), ("b", "c", 0.7), ("c", "d", 0.9), ("x", "y", 0.8)]
    both = pairs + [(b, a, s) for a, b, s in pairs]
    edges = pd.DataFrame(both, columns=["src", "dst", "score"]).astype({"score": np.float32})
    g_df = spark.createDataFrame(groups, "posting_id string, group_id string, group_size int")
    e_df = spark.createDataFrame(edges, "src string, dst string, score float")
    decisions = [("a", "d", DIFFERENT), ("e", "f", SAME)]
    out, g_edges, m_edges, stats = apply_constraints_spark(spark, g_df, e_df, e_df, decisions)
    got = {r["posting_id"]: (r["group_id"], r["group_size"]) for r in out.collect()}
    assert got == {
        "a": ("a", 2),
        "b": ("a", 2),
        "c": ("c", 2),
        "d": ("c", 2),
        "e": ("e", 2),
        "f": ("e", 2),
        "x": ("x", 2),
        "y": ("x", 2),
    }
    assert out.schema["group_size"].dataType.simpleString() == "int"
    ge = {(r["src"], r["dst"]): r["score"] for r in g_edges.collect()}
    assert ("b", "c") not in ge and ("c", "b") not in ge  # the cut edge: the guard cannot rejoin it
    assert ge[("e", "f")] == MUST_SCORE and ge[("f", "e")] == MUST_SCORE
    me = {(r["src"], r["dst"]): r["score"] for r in m_edges.collect()}
    assert ("a", "d") not in me and me[("e", "f")] == 1.0 and me[("b", "c")] == pytest.approx(0.7)
    assert (stats.cut_groups, stats.joined_groups) == (1, 1)
