"""Group emission guard: stop connected components from chaining unrelated listings.

One weak edge is enough to join two product groups, and chains of such edges make
components far larger than any real product group. ``split`` mode re-cuts every component
larger than ``max_group``: its internal edges are filtered with a threshold raised by
``step`` and its components recomputed, level after level, until every piece fits (or the
threshold passes 1, after which the remaining large pieces are kept as they are). Listings
in components that already fit are never touched, so their group ids do not move.

Matches (each listing's own match set) are not changed by the guard; only the ``clusters``
table is. The report shows matches-F1 and clusters-F1 side by side so the choice is visible.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from listing_dedup.components import components_numpy


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


def split_large(spark, groups, edges, *, base_threshold: float, max_group: int, step: float, components_fn):
    """Spark: ``groups`` (posting_id, group_id, group_size), ``edges`` (src, dst, score, both
    directions). Returns the same columns after the guard, and the number of levels run."""
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
        groups = (
            groups.join(big, "posting_id", "left_anti")
            .unionByName(recut.select("posting_id", "group_id", "group_size"))
            .localCheckpoint()
        )
        big.unpersist()
