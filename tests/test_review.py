"""The review queue's ranking (lib/listing_dedup/quality/review.py), by hand-worked pairs."""

from __future__ import annotations

import pandas as pd
from listing_dedup.quality.review import review_queue


def test_queue_ranks_merges_cuts_then_uncertainty_and_leaves_decided_pairs_out():
    pairs = pd.DataFrame(
        [
            ("a", "b", 0.99, True),  # sure: last
            ("c", "a", 0.52, True),  # near the 0.5 threshold
            ("a", "c", 0.40, False),  # the same pair again: its best probability counts
            ("d", "e", 0.90, True),  # an edge the guard cut (d, e in two groups): +1
            ("f", "g", 0.95, True),  # a merge of two groups of two of last night: +1
            ("h", "i", 0.50, False),  # exactly at the threshold, but decided already
        ],
        columns=["a", "b", "probability", "edge"],
    ).assign(title_a="t")
    groups = {"a": "a", "b": "a", "c": "a", "d": "d", "e": "e", "f": "f", "g": "f", "x": "f", "y": "f"}
    prev = {"a": "a", "b": "a", "c": "a", "f": "f", "x": "f", "g": "g", "y": "g"}
    q = review_queue(pairs, groups, threshold=0.5, max_pairs=10, prev_groups=prev, decided=[("i", "h")])
    assert q[["posting_id_a", "posting_id_b", "reason"]].values.tolist() == [
        ["d", "e", "guard_cut"],  # 1 + (1 - 0.4 / 0.5) = 1.2
        ["f", "g", "new_merge"],  # 1 + (1 - 0.45 / 0.5) = 1.1
        ["a", "c", "near_threshold"],  # 1 - 0.02 / 0.5 = 0.96
        ["a", "b", "near_threshold"],  # 1 - 0.49 / 0.5 = 0.02
    ]
    got = dict(zip(zip(q["posting_id_a"], q["posting_id_b"]), q["priority"].round(3)))
    assert got == {("d", "e"): 1.2, ("f", "g"): 1.1, ("a", "c"): 0.96, ("a", "b"): 0.02}
    assert q["rank"].tolist() == [1, 2, 3, 4] and q.loc[1, "group_size_a"] == 4
    assert q.loc[2, "probability"] == 0.52 and "title_a" in q.columns
    assert len(review_queue(pairs, groups, threshold=0.5, max_pairs=2)) == 2
