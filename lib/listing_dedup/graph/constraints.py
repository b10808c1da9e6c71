"""Reviewers' decisions as constraints on the groups: must-links and cannot-links.

A ``same`` decision on a pair is a *must-link* (the two listings always end in one group), a
``different`` decision a *cannot-link* (they never do). The job applies them after the
connected components and before the guard (pipeline.py), on the groups the decisions touch:

1. :func:`resolve_links` settles decisions that contradict each other through a chain (``a=b``,
   ``b=c``, ``a!=c``): the decisions are taken in priority order (the latest first) and one is
   honoured only when it does not contradict those honoured before it, so the latest decision
   wins, directly or through a chain; the others are *overridden* (counted, not applied).
2. :func:`constrained_groups` re-groups the listings of the touched groups with a constrained
   Kruskal pass: the must-link edges first, then the match edges from the strongest to the
   weakest score; an edge joins its two pieces unless that would put a cannot-linked pair in
   one piece. A group without a cannot-link inside comes out as it went in (its edges connect
   it); a group with one is cut along its weakest edges between the two (the pieces keep every
   edge that does not rejoin them, so the cut removes as little as the greedy order finds);
   two groups a must-link joins become one.

Group ids follow :mod:`listing_dedup.graph.components`: the smallest posting_id of the group.

:func:`apply_constraints_spark` is the Spark layer: it collects the touched groups' members and
their edges (small: the groups a few reviewers' pairs touch), runs the pure core on the driver,
and returns the groups, the grouping edges (the cut edges removed, the must-link edges added,
so that the guard's re-cut never rejoins a cut) and the match edges (a cannot-linked pair
removed, a must-linked pair added: a listing's matches follow the decisions too).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SAME, DIFFERENT = "same", "different"
VERDICTS = (SAME, DIFFERENT)
MUST_SCORE = 2.0  # a must-link edge in the grouping edges: above every score, so the guard never cuts it
MUST_MATCH_SCORE = 1.0  # the same edge in the match edges (the ``matches`` table's scores)


class _UnionFind:
    """Union-find over hashable items with member lists (small-to-large) and cannot-links."""

    def __init__(self) -> None:
        self.parent: dict = {}
        self.members: dict = {}
        self.cannot: dict = {}  # item -> the items it is cannot-linked with

    def find(self, x):
        p = self.parent.setdefault(x, x)
        if p == x:
            self.members.setdefault(x, [x])
            return x
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def separated(self, ra, rb) -> bool:
        """Whether joining the sets of roots ``ra`` and ``rb`` would join a cannot-linked pair."""
        small, other = (ra, rb) if len(self.members[ra]) <= len(self.members[rb]) else (rb, ra)
        return any(self.find(w) == other for m in self.members[small] for w in self.cannot.get(m, ()))

    def union(self, ra, rb) -> None:
        if len(self.members[ra]) < len(self.members[rb]):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.members[ra].extend(self.members.pop(rb))

    def add_cannot(self, a, b) -> None:
        self.cannot.setdefault(a, set()).add(b)
        self.cannot.setdefault(b, set()).add(a)


def resolve_links(pairs: Sequence[tuple[str, str, str]]) -> np.ndarray:
    """Which decisions ``(a, b, verdict)``, given in priority order (the first wins), are
    honoured: a ``same`` is honoured unless the honoured decisions before it keep ``a`` and
    ``b`` apart (a ``different`` between their must-linked sets), a ``different`` unless they
    already join ``a`` and ``b``. Returns a boolean array aligned with ``pairs``; the honoured
    decisions never contradict each other."""
    uf = _UnionFind()
    out = np.zeros(len(pairs), dtype=bool)
    for i, (a, b, verdict) in enumerate(pairs):
        ra, rb = uf.find(a), uf.find(b)
        if verdict == SAME:
            if ra == rb:
                out[i] = True
            elif not uf.separated(ra, rb):
                uf.union(ra, rb)
                out[i] = True
        elif verdict == DIFFERENT:
            if ra != rb:
                uf.add_cannot(a, b)
                out[i] = True
        else:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    return out


@dataclass(frozen=True)
class ConstraintStats:
    """What the constraints changed in the groups they touched."""

    must: int = 0  # must-links applied
    cannot: int = 0  # cannot-links applied
    overridden: int = 0  # decisions a later one contradicts (through a chain): not applied
    cut_groups: int = 0  # groups (before the constraints) that ended in more than one group
    joined_groups: int = 0  # groups (after) that hold listings of more than one group before
    cut_edges: int = 0  # grouping edges between two different pieces (both directions counted once)

    def counts(self) -> dict[str, int]:
        return {
            "decisions_must": self.must,
            "decisions_cannot": self.cannot,
            "decisions_overridden": self.overridden,
            "decisions_cut_groups": self.cut_groups,
            "decisions_joined_groups": self.joined_groups,
            "decisions_cut_edges": self.cut_edges,
        }


def constrained_groups(
    ids: Sequence[str],
    src: Sequence[str],
    dst: Sequence[str],
    score: Sequence[float],
    decisions: Sequence[tuple[str, str, str]],
) -> tuple[np.ndarray, ConstraintStats]:
    """The group id (smallest member) of every entry of ``ids`` under the match edges
    ``src``-``dst`` (either or both directions; an end outside ``ids`` drops the edge) and the
    ``decisions`` ``(a, b, verdict)`` in priority order (the latest first; a pair with an end
    outside ``ids`` is ignored). ``stats.cut_groups`` / ``joined_groups`` compare with the plain
    components of the edges."""
    ids_arr = np.asarray(list(ids), dtype=object)
    known = set(ids_arr.tolist())
    e = pd.DataFrame({"src": list(src), "dst": list(dst), "score": np.asarray(score, dtype=np.float64)})
    e = e[e["src"].isin(known) & e["dst"].isin(known) & (e["src"] != e["dst"])]
    # one row per undirected pair, its best score; strongest first, ties in id order (deterministic)
    lo = np.where(e["src"] < e["dst"], e["src"], e["dst"])
    hi = np.where(e["src"] < e["dst"], e["dst"], e["src"])
    e = pd.DataFrame({"a": lo, "b": hi, "score": e["score"].to_numpy()}).groupby(["a", "b"], as_index=False)["score"]
    e = e.max().sort_values(["score", "a", "b"], ascending=[False, True, True], kind="mergesort")

    dec = [(a, b, v) for a, b, v in decisions if a in known and b in known and a != b]
    honoured = resolve_links(dec)
    uf = _UnionFind()
    for x in ids_arr:
        uf.find(x)
    must = cannot = 0
    for (a, b, v), ok in zip(dec, honoured):
        if ok and v == DIFFERENT:
            uf.add_cannot(a, b)
            cannot += 1
    for (a, b, v), ok in zip(dec, honoured):
        if ok and v == SAME:
            ra, rb = uf.find(a), uf.find(b)
            if ra != rb:  # never separated: the honoured decisions are consistent
                uf.union(ra, rb)
            must += 1
    for a, b in zip(e["a"].to_numpy(), e["b"].to_numpy()):
        ra, rb = uf.find(a), uf.find(b)
        if ra != rb and not uf.separated(ra, rb):
            uf.union(ra, rb)

    smallest = {}
    for x in sorted(known):  # ids in string order: the first member seen is the group's smallest
        smallest.setdefault(uf.find(x), x)
    out = np.asarray([smallest[uf.find(x)] for x in ids_arr], dtype=object)

    from listing_dedup.graph.components import components_numpy

    before = components_numpy(ids_arr.tolist(), e["a"], e["b"])
    pairs = pd.DataFrame({"before": before, "after": out}).drop_duplicates()
    after_of = dict(zip(ids_arr.tolist(), out.tolist()))
    n_cut = int(sum(after_of[a] != after_of[b] for a, b in zip(e["a"], e["b"])))
    stats = ConstraintStats(
        must=must,
        cannot=cannot,
        overridden=int(len(dec) - honoured.sum()),
        cut_groups=int((pairs.groupby("before").size() > 1).sum()),
        joined_groups=int((pairs.groupby("after").size() > 1).sum()),
        cut_edges=n_cut,
    )
    return out, stats


def latest_first(decisions: pd.DataFrame) -> pd.DataFrame:
    """One row per pair (``posting_id_a < posting_id_b``), its latest decision (``decided_at``,
    then ``recorded_at`` when present, then the row order: the later wins), the latest first."""
    keys = [c for c in ("decided_at", "recorded_at") if c in decisions.columns]
    d = decisions.reset_index(drop=True).assign(_order=np.arange(len(decisions)))
    d = d.sort_values([*keys, "_order"], kind="mergesort")
    d = d.drop_duplicates(["posting_id_a", "posting_id_b"], keep="last")
    return d.iloc[::-1].drop(columns="_order").reset_index(drop=True)


# --------------------------------------------------------------------------- Spark


def apply_constraints_spark(spark, groups, group_edges, edges, decisions: Sequence[tuple[str, str, str]]):
    """:func:`constrained_groups` on the groups of ``groups`` (posting_id, group_id, group_size)
    that hold an end of one of ``decisions`` (priority order, latest first), over their grouping
    edges ``group_edges`` (src, dst, score; both directions). Returns ``(groups, group_edges,
    edges, stats)``: the groups re-cut or joined (the others untouched), the grouping edges
    without the ones between two different pieces of a re-grouped part and with the honoured
    must-links (score :data:`MUST_SCORE`, both directions), and the match edges ``edges`` without
    the honoured cannot-linked pairs and with the must-linked ones (score
    :data:`MUST_MATCH_SCORE` unless they had one). No decision: the frames as they came."""
    from pyspark.sql import functions as F

    if not decisions:
        return groups, group_edges, edges, ConstraintStats()
    ends = sorted({x for a, b, _ in decisions for x in (a, b)})
    ends_df = spark.createDataFrame(pd.DataFrame({"posting_id": ends}), "posting_id string")
    touched = groups.join(F.broadcast(ends_df), "posting_id").select("group_id").distinct()
    members = groups.join(F.broadcast(touched), "group_id").select("posting_id", "group_id").toPandas()
    ids = np.asarray(sorted(members["posting_id"]), dtype=object)
    ids_df = spark.createDataFrame(pd.DataFrame({"posting_id": ids}), "posting_id string")
    sub = (
        group_edges.join(F.broadcast(ids_df.withColumnRenamed("posting_id", "src")), "src")
        .join(F.broadcast(ids_df.withColumnRenamed("posting_id", "dst")), "dst")
        .select("src", "dst", F.col("score").cast("double").alias("score"))
        .toPandas()
    )
    new, stats = constrained_groups(ids, sub["src"], sub["dst"], sub["score"], decisions)
    known = set(ids.tolist())
    dec = [(a, b, v) for a, b, v in decisions if a in known and b in known and a != b]
    honoured = resolve_links(dec)

    size = pd.Series(new).map(pd.Series(new).value_counts()).to_numpy()
    regrouped = pd.DataFrame({"posting_id": ids, "group_id": new, "group_size": size})
    regrouped_df = spark.createDataFrame(regrouped, "posting_id string, group_id string, group_size long").select(
        *[F.col(c).cast(groups.schema[c].dataType) for c in ("posting_id", "group_id", "group_size")]
    )
    out_groups = groups.join(F.broadcast(ids_df), "posting_id", "left_anti").unionByName(regrouped_df)

    after = dict(zip(ids.tolist(), new.tolist()))
    cut = sub[[after[s] != after[d] for s, d in zip(sub["src"], sub["dst"])]][["src", "dst"]]
    must = [(a, b) for (a, b, v), ok in zip(dec, honoured) if ok and v == SAME]
    cannot = [(a, b) for (a, b, v), ok in zip(dec, honoured) if ok and v == DIFFERENT]
    both = [(a, b) for a, b in must] + [(b, a) for a, b in must]
    score_type = group_edges.schema["score"].dataType
    out_group_edges = group_edges
    if len(cut):
        cut_df = spark.createDataFrame(cut.astype(object), "src string, dst string")
        out_group_edges = out_group_edges.join(F.broadcast(cut_df), ["src", "dst"], "left_anti")
    if both:
        must_df = spark.createDataFrame(pd.DataFrame(both, columns=["src", "dst"]), "src string, dst string")
        out_group_edges = out_group_edges.unionByName(
            must_df.select("src", "dst", F.lit(MUST_SCORE).cast(score_type).alias("score"))
        )
    out_edges = edges
    if cannot:
        gone = [(a, b) for a, b in cannot] + [(b, a) for a, b in cannot]
        gone_df = spark.createDataFrame(pd.DataFrame(gone, columns=["src", "dst"]), "src string, dst string")
        out_edges = out_edges.join(F.broadcast(gone_df), ["src", "dst"], "left_anti")
    if both:
        edge_type = edges.schema["score"].dataType
        added = must_df.select("src", "dst", F.lit(MUST_MATCH_SCORE).cast(edge_type).alias("score"))
        out_edges = (
            out_edges.select("src", "dst", "score")
            .unionByName(added)
            .groupBy("src", "dst")
            .agg(F.max("score").cast(edge_type).alias("score"))
        )
    log.info(
        "decisions on %d listings of %d touched groups: %s",
        len(ids),
        members["group_id"].nunique(),
        ", ".join(f"{k} {v}" for k, v in stats.counts().items()),
    )
    return out_groups, out_group_edges, out_edges, stats
