"""Group emission guard: stop connected components from chaining unrelated listings.

One weak edge is enough to join two product groups, and chains of such edges make
components far larger than any real product group. ``split`` mode re-cuts every component
larger than ``max_group``: its internal edges are filtered with a threshold raised by
``step`` and its components recomputed, level after level, until every piece fits (or the
threshold passes 1, after which the remaining large pieces are kept as they are). Listings
in components that already fit are never touched, so their group ids do not move.

Before the components, ``group_margin`` (when > 0) keeps for grouping only the edges that
are close to the best edge of BOTH their ends: an edge u-v of score s joins u and v only when
``s >= max(best(u), best(v)) - group_margin``, where ``best(x)`` is the highest score of any
match edge of x. A listing whose best match is much stronger than this one (its own product)
does not let a weaker match chain its group into another; mutual near-best matches still
join. It is the relative rule of issue 15 ("a neighbour is kept when it stands out from that
listing's own neighbourhood"), applied where over-merging hurts most: the groups.

Matches (each listing's own match set) are not changed by the guard; only the ``clusters``
table is. The report shows matches-F1 and clusters-F1 side by side so the choice is visible.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from listing_dedup.frames import cut_lineage
from listing_dedup.graph.components import components_numpy, edge_codes


def margin_keep(src: np.ndarray, dst: np.ndarray, score: np.ndarray, margin: float, n: int | None = None) -> np.ndarray:
    """Reference (numpy) of the group margin: which of the edges ``src - dst`` (integer
    vertices ``0..n-1``; one or both directions) join their ends into a group. ``best`` of a
    vertex is the highest score of its edges (either direction); an edge is kept when its score
    is within ``margin`` of the best of both ends (1e-12 slack for float noise). ``margin`` <= 0
    keeps every edge."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    if margin <= 0 or len(src) == 0:
        return np.ones(len(src), dtype=bool)
    n = int(max(src.max(), dst.max()) + 1) if n is None else int(n)
    best = np.full(n, -np.inf)
    np.maximum.at(best, src, score)
    np.maximum.at(best, dst, score)
    return score >= np.maximum(best[src], best[dst]) - (margin + 1e-12)  # as margin_cut, op for op


def margin_cut(edges, margin: float):
    """Spark: the edges (src, dst, score; both directions stored, as the job's edge table)
    that :func:`margin_keep` keeps; the same columns. One aggregation of the edges by ``src``
    (its size is the vertex count, not the edge count) joined back twice: no driver memory."""
    from pyspark.sql import functions as F

    if margin <= 0:
        return edges
    best = edges.groupBy("src").agg(F.max("score").alias("_best"))
    return (
        edges.join(best, "src")
        .join(best.select(F.col("src").alias("dst"), F.col("_best").alias("_best_dst")), "dst")
        .where(F.col("score") >= F.greatest("_best", "_best_dst") - F.lit(float(margin) + 1e-12))
        .select(*edges.columns)
    )


def split_large_numpy(
    ids: Sequence[str],
    src: Sequence[str],
    dst: Sequence[str],
    score: Sequence[float],
    *,
    base_threshold: float,
    max_group: int,
    step: float,
) -> np.ndarray:
    """Reference implementation: group id (smallest member) per id after the guard."""
    ids = list(ids)
    e = pd.DataFrame({"src": list(src), "dst": list(dst), "score": np.asarray(score, dtype=np.float64)})
    groups = pd.Series(components_numpy(ids, e["src"], e["dst"]), index=ids)
    t = base_threshold
    while True:
        sizes = groups.map(groups.value_counts())
        big = set(sizes[sizes > max_group].index)
        t += step
        if not big or t > 1.0 + 1e-9:
            return groups.to_numpy()
        sub = e[e["src"].isin(big) & e["dst"].isin(big) & (e["score"] >= t - 1e-12)]
        members = sorted(big)
        groups.loc[members] = components_numpy(members, sub["src"], sub["dst"])


def split_large(
    spark,
    groups,
    edges,
    *,
    base_threshold: float,
    max_group: int,
    step: float,
    components_fn,
    driver_max_vertices: int = 500_000,
    driver_max_edges: int = 5_000_000,
):
    """Spark: ``groups`` (posting_id, group_id, group_size), ``edges`` (src, dst, score, both
    directions). Returns the same columns after the guard, and the number of re-cut levels.

    Only listings of oversized components are touched. When they number at most
    ``driver_max_vertices`` and their edges at most ``driver_max_edges`` (the usual case: a
    few chained groups), their edges are collected and re-cut on the driver with
    :func:`split_large_numpy`; otherwise each level is a Spark connected-components run over
    the oversized part. Both give the same groups (tested)."""
    from pyspark.sql import functions as F

    big = groups.where(F.col("group_size") > max_group).select("posting_id").persist()
    try:
        n_big = big.count()
        if n_big == 0:
            return groups, 0
        sub_df = None
        if n_big <= driver_max_vertices:
            sub_df = (
                edges.join(F.broadcast(big.withColumnRenamed("posting_id", "src")), "src")
                .join(F.broadcast(big.withColumnRenamed("posting_id", "dst")), "dst")
                .select("src", "dst", "score")
            )
            if sub_df.count() > driver_max_edges:
                sub_df = None
        if sub_df is not None:
            ids = np.asarray(sorted(r["posting_id"] for r in big.collect()), dtype=object)
            sub = sub_df.toPandas()
            s, d, known = edge_codes(ids, sub["src"], sub["dst"])
            g, levels = recut_codes(
                len(ids),
                s,
                d,
                sub["score"].to_numpy(dtype=np.float64)[known],
                base_threshold=base_threshold,
                max_group=max_group,
                step=step,
            )
            recut = pd.DataFrame({"posting_id": ids, "group_id": ids[g]})
            recut["group_size"] = np.bincount(g, minlength=len(ids))[g].astype("int64")
            recut_df = spark.createDataFrame(recut, "posting_id string, group_id string, group_size long")
            out = groups.join(big, "posting_id", "left_anti").unionByName(
                recut_df.select(
                    *[F.col(c).cast(groups.schema[c].dataType) for c in ("posting_id", "group_id", "group_size")]
                )
            )
            return out, levels
    finally:
        big.unpersist()
    return _split_large_spark(
        groups, edges, base_threshold=base_threshold, max_group=max_group, step=step, components_fn=components_fn
    )


def recut_codes(
    n: int, src: np.ndarray, dst: np.ndarray, score: np.ndarray, *, base_threshold: float, max_group: int, step: float
) -> tuple[np.ndarray, int]:
    """:func:`split_large_numpy` on integer vertices ``0..n-1`` (their order is the ids'
    order), vectorised: the group of every vertex (the smallest vertex of its piece) and the
    number of re-cut levels. ``src``/``dst``/``score``: edges (either or both directions).
    Memory and time O(n + edges) a level; the driver path of :func:`split_large`."""
    from listing_dedup.graph.components import component_codes

    def pieces(members: np.ndarray, s: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Smallest member of the component of each of ``members`` (ascending) over edges s-d."""
        pos = np.full(n, -1, dtype=np.int64)
        pos[members] = np.arange(len(members))
        return members[component_codes(len(members), pos[s], pos[d])]

    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    groups = pieces(np.arange(n, dtype=np.int64), src, dst)
    t, levels = base_threshold, 0
    while True:
        big = np.bincount(groups, minlength=n)[groups] > max_group
        t += step
        if not big.any() or t > 1.0 + 1e-9:
            return groups, levels
        levels += 1
        e = big[src] & big[dst] & (score >= t - 1e-12)
        groups[big] = pieces(np.flatnonzero(big), src[e], dst[e])


def _split_large_spark(groups, edges, *, base_threshold: float, max_group: int, step: float, components_fn):
    from pyspark.sql import functions as F

    levels, t = 0, base_threshold
    while True:
        big = groups.where(F.col("group_size") > max_group).select("posting_id")
        t += step
        if t > 1.0 + 1e-9 or big.limit(1).count() == 0:
            return groups, levels
        levels += 1
        big = big.persist()
        sub_edges = (
            edges.where(F.col("score") >= F.lit(t - 1e-12))
            .join(big.withColumnRenamed("posting_id", "src"), "src")
            .join(big.withColumnRenamed("posting_id", "dst"), "dst")
            .select("src", "dst")
        )
        recut = components_fn(big, sub_edges)
        groups = groups.join(big, "posting_id", "left_anti").unionByName(
            recut.select("posting_id", "group_id", "group_size")
        )
        groups = cut_lineage(groups)
        big.unpersist()
