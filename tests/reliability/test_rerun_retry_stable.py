"""Rerun of a date (same content, new Delta version, no duplicates), Spark task failures
injected through conf (retried; output equals a clean run), and group ids that stay stable
when 1 % of the catalog changes. One ~190-listing generated catalog with known groups;
five in-process runs share it (module scope)."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
from _rel import config, data_files, groups, job, live_files, snapshot, versions
from listing_dedup.quality.sample import generate_catalog
from listing_dedup.sink import files
from listing_dedup.sink.verify import verify_run
from pyspark import cloudpickle

DATE = "2026-05-01"
NEW_TITLES = ["Obeng set presisi 25 in 1 zzqx", "Tenda camping dome 4 orang qqvv"]


def failed_tasks(spark, group: str) -> int:
    """Failed task attempts of the Spark jobs run under ``group``."""
    tracker = spark.sparkContext.statusTracker()
    total = 0
    for job_id in tracker.getJobIdsForGroup(group):
        info = tracker.getJobInfo(job_id)
        for sid in info.stageIds if info else ():
            st = tracker.getStageInfo(sid)
            total += st.numFailedTasks if st else 0
    return total


def fail_once_after_writing(make_writer):
    """Wrap sink.files.file_writer: partition 0's first attempt writes its file, then fails.
    (An independent injection next to ``testing.fail_once_stage=write``, which tests/test_writer.py
    covers: this one fails after the writer returned, whatever the writer does.)"""

    def wrapped(uri, run_date, schema, *args):
        inner = make_writer(uri, run_date, schema, *args)

        def write_partition(batches):
            from pyspark import TaskContext

            out = list(inner(batches))  # the Parquet file is on storage now
            ctx = TaskContext.get()
            if out and ctx.partitionId() == 0 and ctx.attemptNumber() == 0:
                raise RuntimeError("injected failure after the file was written")
            yield from out

        return write_partition

    return wrapped


def run(spark, cfg, path, wh, group):
    spark.sparkContext.setJobGroup(group, group)
    try:
        rc, err, summary = job(spark, cfg, path, DATE, wh)
    finally:
        spark.sparkContext.setJobGroup("", "")
    assert rc == 0, err
    return summary


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("rerun")
    catalog = generate_catalog(60, seed=3).listings
    path = str(root / "listings.parquet")
    catalog.to_parquet(path, index=False)
    out: dict = {"catalog": catalog}
    wh = str(root / "wh")
    cfg = config()
    out["s1"] = run(spark, cfg, path, wh, "clean")
    out["snap1"], out["v1"] = snapshot(wh, DATE), versions(wh)
    out["s2"] = run(spark, cfg, path, wh, "rerun")
    out["snap2"], out["v2"] = snapshot(wh, DATE), versions(wh)

    # 1 % of the listings change: the smallest member of one group and another member of a
    # second group get titles unlike anything else
    g1 = groups(out["snap1"]["clusters"])
    big = sorted((sorted(m) for m in g1 if len(m) >= 3), key=lambda m: m[0])
    out["moved_min"], out["moved_other"] = big[0][0], big[1][1]
    changed = catalog.copy()
    new_photos = ("0f1e2d3c4b5a6978", "f0e1d2c3b4a59687")  # a changed listing gets a new photo too
    for pid, title, phash in zip((out["moved_min"], out["moved_other"]), NEW_TITLES, new_photos):
        changed.loc[changed["posting_id"] == pid, "title"] = title
        changed.loc[changed["posting_id"] == pid, "image_phash"] = phash
    assert (changed["title"] != catalog["title"]).sum() == 2  # 2 of ~190 rows: 1 %
    path3 = str(root / "listings_changed.parquet")
    changed.to_parquet(path3, index=False)
    out["s3"] = run(spark, cfg, path3, wh, "changed")
    out["snap3"] = snapshot(wh, DATE)
    out["wh"] = wh

    for stage in ("embed", "search"):
        whs = str(root / f"wh_{stage}")
        group = f"fail_once_{stage}"
        out[f"s_{stage}"] = run(spark, config(f"testing.fail_once_stage={stage}"), path, whs, group)
        out[f"snap_{stage}"] = snapshot(whs, DATE)
        out[f"failed_{stage}"] = failed_tasks(spark, group)
    out["failed_clean"] = failed_tasks(spark, "clean")

    whw = str(root / "wh_write")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(files, "file_writer", fail_once_after_writing(files.file_writer))
            out["s_write"] = run(spark, cfg, path, whw, "fail_once_write")
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    out["snap_write"] = snapshot(whw, DATE)
    out["failed_write"] = failed_tasks(spark, "fail_once_write")
    out["write_orphans"] = data_files(whw) - live_files(whw)
    return out


def test_rerun_same_date_same_content_new_version(runs):
    s1, s2 = runs["s1"], runs["s2"]
    assert s1.n_groups >= 30  # the catalog has real groups, so the comparison means something
    for t in ("matches", "clusters", "rejects"):
        pd.testing.assert_frame_equal(runs["snap2"][t], runs["snap1"][t])
        assert not runs["snap2"][t].duplicated(subset=["posting_id", "raw"] if t == "rejects" else ["posting_id"]).any()
        assert runs["v2"][t] == runs["v1"][t] + 1  # a new Delta version replaced the partition
    assert len(runs["snap2"]["clusters"]) == s1.rows_kept == s2.rows_kept
    assert s1.rows_rejected == 5 and len(runs["snap2"]["rejects"]) == 5


def test_injected_task_failures_are_retried_and_change_nothing(runs):
    assert runs["failed_clean"] == 0
    for stage in ("embed", "search", "write"):
        assert runs[f"failed_{stage}"] >= 1, f"no task of {stage} failed: the injection did not fire"
        for t in ("matches", "clusters", "rejects"):
            pd.testing.assert_frame_equal(runs[f"snap_{stage}"][t], runs["snap1"][t])
    # the failed write attempts left their files behind, uncommitted (vacuum's work)
    assert runs["write_orphans"] and all("/part-00000-" in f for f in runs["write_orphans"])


def test_group_ids_are_stable_when_membership_is(runs):
    before, after = groups(runs["snap1"]["clusters"]), groups(runs["snap3"]["clusters"])
    moved = {runs["moved_min"], runs["moved_other"]}
    unchanged = [m for m in after if m in before]
    # every group with the same members keeps its group_id ...
    assert all(after[m] == before[m] for m in unchanged)
    # ... and that is nearly all of them: only the groups the 2 changed listings touched moved
    touched = [m for m in before if m & moved]
    assert len(unchanged) >= len(before) - len(touched) - 2
    # the changed listings are alone now, each its own group
    assert after[frozenset({runs["moved_min"]})] == runs["moved_min"]
    assert after[frozenset({runs["moved_other"]})] == runs["moved_other"]
    # a group that lost a member other than its smallest keeps its id; one that lost its
    # smallest member takes the next smallest (the rule: group_id = min posting_id)
    ids_after = runs["snap3"]["clusters"].set_index("posting_id")["group_id"]
    for m in touched:
        rest = sorted(m - moved)
        if len({ids_after[p] for p in rest}) == 1:  # the rest stayed together
            assert ids_after[rest[0]] == rest[0]
            assert (ids_after[rest[0]] == before[m]) == (min(m) not in moved)
    verify_run(runs["wh"], DATE)
