"""The review queue: the candidate pairs whose verdict a person should give first.

A reviewer's time goes furthest on pairs the job is least sure of, or whose verdict moves the
most listings. :func:`review_queue` ranks candidate pairs (pure pandas) by

* ``near_threshold``: closeness of the pair's probability (the re-ranker's; the fused score
  under the threshold rule) to the edge threshold, 1 at the threshold and 0 at 0 or 1;
* ``guard_cut``: a match edge whose two ends ended in different groups (the group margin or
  the guard cut it): +1;
* ``new_merge``: a pair of one group tonight whose ends were in two different groups of at
  least two listings the night before (a merge of two established groups): +1;

the priority being their sum, ties broken by the listings the verdict would move (the two groups'
sizes), then by the ids. Pairs already decided are left out; at most ``max_pairs`` are kept.
``bench/review.py`` measures the queue against random review with a simulated reviewer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

QUEUE_COLUMNS = (
    "rank",
    "posting_id_a",
    "posting_id_b",
    "probability",
    "priority",
    "reason",
    "group_a",
    "group_b",
    "group_size_a",
    "group_size_b",
)


def review_queue(
    pairs: pd.DataFrame,
    groups: Mapping,
    *,
    threshold: float,
    max_pairs: int,
    prev_groups: Mapping | None = None,
    decided: Iterable[tuple] = (),
) -> pd.DataFrame:
    """The ranked queue (columns :data:`QUEUE_COLUMNS`, then any other column of ``pairs``, e.g.
    titles, image paths and per-signal scores, carried through).

    ``pairs``: candidate pairs ``a``, ``b`` (ids, either order, a pair may repeat: its highest
    ``probability`` is kept), ``probability`` and ``edge`` (bool: the pair is a match edge).
    ``groups`` / ``prev_groups``: id -> group id tonight / the night before. ``decided``: pairs
    ``(a, b)`` (either order) with a verdict already."""
    if max_pairs < 0:
        raise ValueError(f"max_pairs must be >= 0, got {max_pairs}")
    p = pairs.copy()
    lo = np.where(p["a"] < p["b"], p["a"], p["b"])
    hi = np.where(p["a"] < p["b"], p["b"], p["a"])
    p["posting_id_a"], p["posting_id_b"] = lo, hi
    p = p[p["posting_id_a"] != p["posting_id_b"]]
    p = p.sort_values("probability", ascending=False, kind="mergesort")
    p = p.drop_duplicates(["posting_id_a", "posting_id_b"]).drop(columns=["a", "b"])
    done = {(min(a, b), max(a, b)) for a, b in decided}
    if done:
        key = list(zip(p["posting_id_a"], p["posting_id_b"]))
        p = p[[k not in done for k in key]]
    g = pd.Series(groups)
    size = g.map(g.value_counts())
    p["group_a"] = p["posting_id_a"].map(g)
    p["group_b"] = p["posting_id_b"].map(g)
    p["group_size_a"] = p["posting_id_a"].map(size).fillna(1).astype(np.int64)
    p["group_size_b"] = p["posting_id_b"].map(size).fillna(1).astype(np.int64)
    span = max(threshold, 1.0 - threshold, 1e-9)
    near = (1.0 - (p["probability"].astype(np.float64) - threshold).abs() / span).clip(0.0, 1.0)
    cut = p["edge"].astype(bool) & (p["group_a"] != p["group_b"])
    merge = pd.Series(False, index=p.index)
    if prev_groups is not None:
        pg = pd.Series(prev_groups)
        psize = pg.map(pg.value_counts())
        pa, pb = p["posting_id_a"].map(pg), p["posting_id_b"].map(pg)
        established = (p["posting_id_a"].map(psize) >= 2) & (p["posting_id_b"].map(psize) >= 2)
        merge = (p["group_a"] == p["group_b"]) & pa.notna() & pb.notna() & (pa != pb) & established
    p["priority"] = near + cut.astype(float) + merge.astype(float)
    p["reason"] = np.where(merge, "new_merge", np.where(cut, "guard_cut", "near_threshold"))
    moved = np.where(p["group_a"] == p["group_b"], p["group_size_a"], p["group_size_a"] + p["group_size_b"])
    p = p.assign(_moved=moved).sort_values(
        ["priority", "_moved", "posting_id_a", "posting_id_b"], ascending=[False, False, True, True], kind="mergesort"
    )
    p = p.head(max_pairs).drop(columns=["_moved", "edge"]).reset_index(drop=True)
    p["rank"] = np.arange(1, len(p) + 1)
    rest = [c for c in p.columns if c not in QUEUE_COLUMNS]
    return p[list(QUEUE_COLUMNS) + rest]
