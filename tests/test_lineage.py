"""Stable group ids across nights (graph/lineage.py) and the previous night a date continues
(sink/state.py). Every expected id and change row is written out by hand from the rule in
graph/lineage.py's docstring; the Spark implementation is checked against the pandas one on
random nights."""

from __future__ import annotations

import random

import pandas as pd
import pytest
from listing_dedup.graph.lineage import assign_ids, assign_ids_spark, change_counts, check_unique
from listing_dedup.sink.delta import DeltaSink
from listing_dedup.sink.state import previous_clusters, previous_date

RUN = "2026-12-02"
PREV = "2026-12-01"


def night(*groups: str) -> pd.DataFrame:
    """``posting_id, group_id`` of groups given as strings of one-letter ids ("abc" = {a, b, c}),
    each labelled by its first listing (the label is arbitrary: only membership counts)."""
    return pd.DataFrame([(p, g[0]) for g in groups for p in g], columns=["posting_id", "group_id"])


def ids(out: pd.DataFrame) -> dict[str, str]:
    return dict(zip(out["posting_id"], out["group_id"]))


def rows(changes: pd.DataFrame) -> set[tuple]:
    """(kind, old_id, new_id, old_size, new_size, shared) of each row, None for nulls."""
    cols = ["kind", "old_id", "new_id", "old_size", "new_size", "shared"]
    return {
        tuple(None if pd.isna(v) else (v if isinstance(v, str) else int(v)) for v in r)
        for r in changes[cols].itertuples(index=False)
    }


def run(prev_groups, cur_groups):
    prev = night(*prev_groups) if prev_groups is not None else None
    return assign_ids(night(*cur_groups), prev, RUN, PREV if prev is not None else None)


def test_first_night_ids_are_the_smallest_member_and_every_group_is_new():
    out, ch = run(None, ["cab", "ed", "f"])
    assert ids(out) == {"a": "a", "b": "a", "c": "a", "d": "d", "e": "d", "f": "f"}
    assert out.set_index("posting_id")["group_size"].to_dict() == {"a": 3, "b": 3, "c": 3, "d": 2, "e": 2, "f": 1}
    assert rows(ch) == {("new", None, "a", None, 3, None), ("new", None, "d", None, 2, None)}
    assert ch["previous_date"].isna().all()


def test_a_group_that_gained_a_member_keeps_its_id():
    out, ch = run(["bcd", "e"], ["bcde"])
    assert set(ids(out).values()) == {"b"}
    assert rows(ch) == {("continued-with-changes", "b", "b", 3, 4, 3)}
    assert (ch["previous_date"] == PREV).all()


def test_a_group_that_lost_its_smallest_member_keeps_its_id():
    # the old rule (id = smallest posting_id) renamed this group "c"
    out, ch = run(["bcd", "x"], ["cd", "x"])  # b deleted
    assert ids(out) == {"c": "b", "d": "b", "x": "x"}
    assert rows(ch) == {("continued-with-changes", "b", "b", 3, 2, 2)}


def test_a_group_that_gained_a_smaller_id_keeps_its_id():
    out, ch = run(["cde"], ["acde"])  # a is a new listing
    assert set(ids(out).values()) == {"c"}
    assert rows(ch) == {("continued-with-changes", "c", "c", 3, 4, 3)}


def test_an_unchanged_group_has_no_row():
    out, ch = run(["abc", "de", "f"], ["abc", "de", "f"])
    assert ids(out) == {"a": "a", "b": "a", "c": "a", "d": "d", "e": "d", "f": "f"}
    assert ch.empty


def test_merge_keeps_the_largest_contributor_id():
    out, ch = run(["xyz", "ab"], ["abxyz"])
    assert set(ids(out).values()) == {"x"}  # the 3-listing group's id, though "a" is smaller
    assert rows(ch) == {("merged", "a", "x", 2, 5, 2), ("continued-with-changes", "x", "x", 3, 5, 3)}


def test_merge_of_equal_contributors_keeps_the_smaller_id():
    out, ch = run(["de", "ab"], ["abde"])
    assert set(ids(out).values()) == {"a"}
    assert rows(ch) == {("merged", "d", "a", 2, 4, 2), ("continued-with-changes", "a", "a", 2, 4, 2)}


def test_split_largest_piece_keeps_the_id_others_are_born():
    out, ch = run(["abcde"], ["abc", "de"])
    assert ids(out) == {"a": "a", "b": "a", "c": "a", "d": "d", "e": "d"}
    assert rows(ch) == {("continued-with-changes", "a", "a", 5, 3, 3), ("split", "a", "d", 5, 2, 2)}


def test_split_off_with_the_smallest_member_takes_a_free_member_id():
    # the larger piece {c, d, e} keeps "a"; the piece holding a cannot reuse "a" (live): next member
    out, ch = run(["abcde"], ["ab", "cde"])
    assert ids(out) == {"a": "b", "b": "b", "c": "a", "d": "a", "e": "a"}
    assert rows(ch) == {("continued-with-changes", "a", "a", 5, 3, 3), ("split", "a", "b", 5, 2, 2)}


def test_a_new_id_never_reuses_an_id_of_the_previous_night():
    # "d" was yesterday's id of a group that merged into "a": the new group {d, q} must not take it
    out, ch = run(["abc", "de"], ["abce", "dq"])
    assert ids(out)["a"] == "a" and ids(out)["e"] == "a"
    assert ids(out)["d"] == "q" and ids(out)["q"] == "q"
    assert rows(ch) == {
        ("continued-with-changes", "a", "a", 3, 4, 3),
        ("merged", "d", "a", 2, 4, 1),
        ("split", "d", "q", 2, 2, 1),
    }


def test_fallback_id_when_every_member_id_is_taken():
    # the piece {a, b} split off groups "a" and "b", whose larger parts keep both ids
    out, _ = run(["acdg", "befh"], ["ab", "cdg", "efh"])
    assert ids(out)["c"] == "a" and ids(out)["e"] == "b"
    assert ids(out)["a"] == ids(out)["b"] == f"a~{RUN}"


def test_new_group_of_new_listings_and_of_matching_singletons():
    out, ch = run(["x", "y", "abc"], ["xy", "abc", "pq"])
    assert ids(out)["x"] == ids(out)["y"] == "x"
    assert ids(out)["p"] == ids(out)["q"] == "p"
    assert rows(ch) == {("new", None, "x", None, 2, None), ("new", None, "p", None, 2, None)}


def test_dissolved_when_deleted_or_left_alone():
    out, ch = run(["ab", "cd", "ef"], ["c", "d", "ef"])  # a, b deleted; c and d no longer match
    assert ids(out) == {"c": "c", "d": "d", "e": "e", "f": "e"}
    assert rows(ch) == {("dissolved", "a", None, 2, None, 0), ("dissolved", "c", None, 2, None, 1)}
    assert change_counts(ch) == {"new": 0, "merged": 0, "split": 0, "dissolved": 2, "continued-with-changes": 0}


def test_rerun_gives_the_same_ids_and_changes():
    a = run(["abc", "de", "fg"], ["ab", "cde", "fgh"])
    b = run(["abc", "de", "fg"], ["ab", "cde", "fgh"])
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])


# --------------------------------------------------------------------------- Spark = pandas


def random_nights(rng: random.Random, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A previous night of random groups, and tonight: some listings deleted, some added, some
    groups merged, split or moved."""
    ids_ = [f"p{i:03d}" for i in range(n)]
    rng.shuffle(ids_)

    def groups_of(members):
        out, i = [], 0
        while i < len(members):
            k = rng.choice([1, 1, 2, 2, 3, 4, 6])
            out.append(members[i : i + k])
            i += k
        return out

    prev = groups_of(ids_)
    alive = [p for p in ids_ if rng.random() > 0.1] + [f"n{i:03d}" for i in range(n // 10)]
    cur = []
    for g in prev:
        g = [p for p in g if p in set(alive)]
        if g and rng.random() < 0.3:  # split
            cut = rng.randint(0, len(g))
            cur += [g[:cut], g[cut:]]
        else:
            cur.append(g)
    cur = [g for g in cur if g]
    new = [p for p in alive if p.startswith("n")]
    cur += groups_of(new)
    for _ in range(n // 15):  # merges
        if len(cur) > 2:
            a, b = rng.sample(range(len(cur)), 2)
            cur[a] = cur[a] + cur[b]
            cur[b] = []
            cur = [g for g in cur if g]
    frame = lambda gs: pd.DataFrame([(p, g[0]) for g in gs for p in g], columns=["posting_id", "group_id"])  # noqa: E731
    return frame(prev), frame(cur)


def test_spark_equals_the_pandas_reference(spark):
    # one random pair of nights of 240 listings (two seeds of 120 cost two Spark passes, no more cases)
    prev, cur = random_nights(random.Random(1), 240)
    want_ids, want_ch = assign_ids(cur, prev, RUN, PREV)
    assert change_counts(want_ch)["merged"] and change_counts(want_ch)["split"]  # the cases occur
    g, ch = assign_ids_spark(spark.createDataFrame(cur), spark.createDataFrame(prev), RUN, PREV)
    check_unique(g, RUN)
    got_ids = g.toPandas().sort_values("posting_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got_ids, want_ids, check_dtype=False)
    got_ch = ch.toPandas()
    assert sorted(map(str, rows(got_ch))) == sorted(map(str, rows(want_ch)))
    assert (got_ch["previous_date"] == PREV).all()


def test_spark_first_night(spark):
    cur = night("cab", "ed", "f")
    g, ch = assign_ids_spark(spark.createDataFrame(cur), None, RUN)
    assert ids(g.toPandas()) == {"a": "a", "b": "a", "c": "a", "d": "d", "e": "d", "f": "f"}
    assert rows(ch.toPandas()) == {("new", None, "a", None, 3, None), ("new", None, "d", None, 2, None)}


# --------------------------------------------------------------------------- the previous night


def test_previous_date_is_the_latest_succeeded_date_before(spark, tmp_path):
    sink = DeltaSink(str(tmp_path / "wh"))
    assert previous_date(sink, "2026-12-03") is None
    dates = {"2026-12-01": "succeeded", "2026-12-02": "succeeded", "2026-12-03": "failed", "2026-12-05": "succeeded"}
    for date, status in dates.items():
        row = spark.createDataFrame([(date, status)], "run_id string, status string")
        sink.write(row, "runs", date, mode="append")
    assert previous_date(sink, "2026-12-02") == "2026-12-01"  # a rerun continues the date before it
    assert previous_date(sink, "2026-12-03") == "2026-12-02"
    assert previous_date(sink, "2026-12-04") == "2026-12-02"  # 12-03 failed
    assert previous_date(sink, "2026-12-06") == "2026-12-05"
    assert previous_clusters(spark, sink, "2026-12-06") == (None, None)  # no clusters table yet
    sink.write(spark.createDataFrame(night("ab", "c")), "clusters", "2026-12-05")
    date, df = previous_clusters(spark, sink, "2026-12-06")
    assert date == "2026-12-05"
    assert ids(df.toPandas()) == {"a": "a", "b": "a", "c": "c"}


# --------------------------------------------------------------------------- the match state's records


def test_epoch_files_round_trip(tmp_path):
    import numpy as np
    from listing_dedup.errors import SinkError
    from listing_dedup.sink.state import Epoch, load_epoch, save_epoch

    c = np.arange(12, dtype=np.float32).reshape(3, 4)
    idf = np.linspace(0.5, 3.0, 7)
    wh = str(tmp_path / "wh")
    save_epoch(wh, Epoch("2026-12-01.abc", "2026-12-01", "first night", "fp1", 300, c, idf))
    save_epoch(wh, Epoch("2026-12-09.def", "2026-12-09", "--full", "fp2", 310, c[:2]))
    e = load_epoch(wh, "2026-12-01.abc")
    assert (e.started, e.reason, e.fingerprint, e.listings) == ("2026-12-01", "first night", "fp1", 300)
    assert np.array_equal(e.centroids, c) and np.array_equal(e.idf, idf)
    assert load_epoch(wh, "2026-12-09.def").idf is None
    with pytest.raises(SinkError, match="cannot read the epoch"):
        load_epoch(wh, "2026-12-10.missing")


def test_base_state_and_a_concurrent_commit(spark, tmp_path):
    import datetime as dt

    from listing_dedup.sink.state import (
        STATE_LOG,
        StateConflictError,
        base_state,
        check_state_unmoved,
        newest_state_date,
        state_dates,
    )

    sink = DeltaSink(str(tmp_path / "wh"))

    def night(date, status="succeeded", state=True, plan="full", base=None):
        sink.write(spark.createDataFrame([(date, status)], "run_id string, status string"), "runs", date, mode="append")
        if state:
            row = [(date, base, "e1", plan, dt.datetime(2026, 12, 7, tzinfo=dt.timezone.utc))]
            ddl = "run_id string, base_date string, epoch string, plan string, committed_at timestamp"
            sink.write(spark.createDataFrame(row, ddl), STATE_LOG, date, mode="append")

    assert base_state(sink, "2026-12-01") is None and newest_state_date(sink) is None
    night("2026-12-01")
    night("2026-12-02", plan="incremental", base="2026-12-01")
    night("2026-12-03", status="failed", state=False)
    night("2026-12-04", state=False)  # a night that kept no state (incremental off)
    b = base_state(sink, "2026-12-03")
    assert (b.run_date, b.base_date, b.plan) == ("2026-12-02", "2026-12-01", "incremental")
    assert base_state(sink, "2026-12-02").run_date == "2026-12-01"  # a rerun continues the night before
    assert base_state(sink, "2026-12-05") is None  # 12-04 kept no state: a full night
    assert newest_state_date(sink) == "2026-12-02"
    seen = state_dates(sink)
    check_state_unmoved(sink, "2026-12-03", seen)  # nothing moved
    night("2026-12-03", base="2026-12-02")  # another run commits 12-03 meanwhile
    check_state_unmoved(sink, "2026-12-03", seen)  # the same date: a rerun's race is idempotent
    with pytest.raises(StateConflictError, match="2026-12-03"):
        check_state_unmoved(sink, "2026-12-05", seen)
    # a night that crashed after its state's commit (its runs row never says succeeded) is not continued
    night("2026-12-06")
    night("2026-12-07", status="failed", plan="incremental", base="2026-12-06")
    assert base_state(sink, "2026-12-08").run_date == "2026-12-06"
    assert base_state(sink, "2026-12-07").run_date == "2026-12-06"  # its rerun continues the night before


def test_prune_state_keeps_the_date_a_rerun_continues(spark, tmp_path):
    from listing_dedup.sink.delta import read_table
    from listing_dedup.sink.state import prune_state, read_state

    sink = DeltaSink(str(tmp_path / "wh"))
    for date in ("2026-12-01", "2026-12-02", "2026-12-03"):
        df = spark.createDataFrame([("a", date, "r")], "posting_id string, digest string, run_id string")
        sink.write(df, "listing_state", date)
    prune_state(sink, "2026-12-02")
    assert sorted(read_table(sink.warehouse, "listing_state")["run_date"]) == ["2026-12-02", "2026-12-03"]
    assert [r["digest"] for r in read_state(spark, sink, "listing_state", "2026-12-02").collect()] == ["2026-12-02"]


def test_first_night_changes_on_spark(spark):
    from listing_dedup.graph.lineage import first_night_changes

    groups = spark.createDataFrame(
        [("a", "a", 3), ("b", "a", 3), ("c", "a", 3), ("d", "d", 2), ("e", "d", 2), ("f", "f", 1)],
        "posting_id string, group_id string, group_size int",
    )
    assert rows(first_night_changes(groups).toPandas()) == {
        ("new", None, "a", None, 3, None),
        ("new", None, "d", None, 2, None),
    }
