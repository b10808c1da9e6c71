"""The stable ids' smallest member per component (graph/lineage.assign_ids: a sort, not pandas'
per-group Python "min" of object strings) does not depend on the rows' order (pure, < 1 s)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from listing_dedup.graph.lineage import assign_ids

RUN, PREV = "2026-07-02", "2026-07-01"


def test_a_fallback_id_is_the_components_smallest_member_whatever_the_rows_order():
    # {b, a} split off yesterday's "a" and "b", whose larger parts keep both ids: the fallback
    # id is the piece's smallest posting_id, whether its rows come in order or not
    prev = pd.DataFrame({"posting_id": list("acdgbefh"), "group_id": list("aaaabbbb")})
    for order in (list("badgcfhe"), list("abcdgefh"), list("hfedgcba")):
        comp = {"a": "z1", "b": "z1", "c": "z2", "d": "z2", "g": "z2", "e": "z3", "f": "z3", "h": "z3"}
        cur = pd.DataFrame({"posting_id": order, "group_id": [comp[p] for p in order]})
        out, _ = assign_ids(cur, prev, RUN, PREV)
        got = dict(zip(out["posting_id"], out["group_id"], strict=True))
        assert got["a"] == got["b"] == f"a~{RUN}"
        assert got["c"] == "a" and got["e"] == "b"


def test_the_ids_and_changes_do_not_depend_on_the_rows_order():
    rng = np.random.default_rng(7)
    ids = np.array([f"p{i:03d}" for i in rng.permutation(300)], dtype=object)
    prev = pd.DataFrame({"posting_id": ids[:260], "group_id": ids[:260][rng.integers(0, 260, 260) // 4 * 4]})
    prev["group_id"] = prev.groupby("group_id")["posting_id"].transform(lambda s: sorted(s)[0])
    cur_ids = ids[20:]
    labels = np.array([f"c{x}" for x in rng.integers(0, 90, len(cur_ids))], dtype=object)
    cur = pd.DataFrame({"posting_id": cur_ids, "group_id": labels})
    first = assign_ids(cur, prev, RUN, PREV)
    for seed in range(3):
        again = assign_ids(cur.sample(frac=1, random_state=seed), prev.sample(frac=1, random_state=seed), RUN, PREV)
        pd.testing.assert_frame_equal(first[0], again[0])
        pd.testing.assert_frame_equal(first[1], again[1])
    # a component none of whose ids is free gets its smallest member's fallback id
    fallback = first[0][first[0]["group_id"].str.endswith(f"~{RUN}")]
    members = cur.merge(fallback[["posting_id", "group_id"]], on="posting_id")
    for gid, part in members.groupby("group_id_y"):
        comp = cur[cur["group_id"] == part["group_id_x"].iloc[0]]
        assert gid == f"{min(comp['posting_id'])}~{RUN}"
