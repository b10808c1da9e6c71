"""Rerun of a date (same content, new Delta version, no duplicates), Spark task failures
injected through conf in the embed (lexical UDF), search and write stages (retried; output equals a clean run),
and group ids that stay stable when 1 % of the catalog changes the next night. One ~190-listing
generated catalog with known groups; three in-process runs share it (module scope): a clean run,
its rerun with a task of each of embed, search and write failing on its first attempt, and a run
of the changed catalog as the next night."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
from _rel import config, data_files, groups, job, live_files, snapshot, versions
from listing_dedup import faults, pipeline
from listing_dedup.embed import lexical
from listing_dedup.quality.sample import generate_catalog
from listing_dedup.search import indexer
from listing_dedup.sink import files
from listing_dedup.sink.delta import read_table
from listing_dedup.sink.verify import verify_run
from pyspark import cloudpickle

pytestmark = pytest.mark.slow  # three in-process job runs

DATE = "2026-05-01"
NEXT = "2026-05-02"  # the night after: the changed catalog
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


# lexical only; the components through the distributed rounds (the job's default labels a graph
# this small on the driver): the one job-level run of that path
SIGNALS = (
    "embed.text.enabled=false",
    "output.candidates=false",
    "output.explanations=false",  # their equality across runs: test_incremental_nights
    "components.driver_max_vertices=0",
)
FAULTS = "embed,search,write"  # testing.fail_once_stage: each of these stages fails once, in one run


def recording(real, log_path: str):
    """``real`` (faults.maybe_fail_once) that also appends the stage's name to ``log_path`` when it
    injects a failure: which stages really failed, as seen from inside the Spark tasks (local mode:
    the workers write the driver's disk)."""

    def maybe_fail_once(stage, fail_stage):
        try:
            real(stage, fail_stage)
        except RuntimeError:
            with open(log_path, "a") as f:
                f.write(stage + "\n")
            raise

    return maybe_fail_once


def run(spark, cfg, path, wh, group, date=DATE):
    spark.sparkContext.setJobGroup(group, group)
    try:
        rc, err, summary = job(spark, cfg, path, date, wh)
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
    # the lexical and pHash signals run (retries and reruns are under test, not the text model,
    # whose Spark UDF tests/test_embedder.py checks); the candidates table is no part of these
    # checks (tests/test_job.py and test_rerank.py read it)
    cfg = config(*SIGNALS)
    paths: list[str] = []  # which components path the clean run took
    with pytest.MonkeyPatch.context() as mp:
        for name in ("connected_components", "components_on_driver"):
            real = getattr(pipeline, name)
            mp.setattr(pipeline, name, lambda *a, _real=real, _name=name, **k: paths.append(_name) or _real(*a, **k))
        out["s1"] = run(spark, cfg, path, wh, "clean")
    out["components_paths"] = paths
    out["snap1"], out["v1"] = snapshot(wh, DATE), versions(wh)
    out["emb1"] = read_table(wh, "embeddings")
    files1 = data_files(wh)
    # the rerun, with a task of each of embed, search and write failing on its first attempt
    log_path = str(root / "injected.log")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests
    try:
        with pytest.MonkeyPatch.context() as mp:
            for module in (lexical, indexer, files):  # where the stages call it
                mp.setattr(module, "maybe_fail_once", recording(faults.maybe_fail_once, log_path))
            out["s2"] = run(spark, config(*SIGNALS, f"testing.fail_once_stage={FAULTS}"), path, wh, "rerun_faults")
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    out["snap2"], out["v2"] = snapshot(wh, DATE), versions(wh)
    out["emb2"] = read_table(wh, "embeddings")
    out["runs2"] = read_table(wh, "runs", DATE)
    out["failed_faults"] = failed_tasks(spark, "rerun_faults")
    out["failed_clean"] = failed_tasks(spark, "clean")
    out["injected"] = Path(log_path).read_text().split() if Path(log_path).exists() else []
    # the files the rerun wrote that its commits do not reference
    out["fault_orphans"] = (data_files(wh) - files1) - live_files(wh)

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
    out["s3"] = run(spark, cfg, path3, wh, "changed", date=NEXT)
    out["snap3"] = snapshot(wh, NEXT)
    out["changes3"] = read_table(wh, "group_changes", NEXT)
    out["emb3"] = read_table(wh, "embeddings")
    out["wh"] = wh

    return out


def same(table: pd.DataFrame) -> pd.DataFrame:
    """A table's rows without the run_id (each run's own): what two runs of one catalog share."""
    return table.drop(columns=["run_id"])


def test_rerun_same_date_same_content_new_version(runs):
    """(The rerun is also the run with injected task failures: its output must equal the clean run's
    either way.)"""
    s1, s2 = runs["s1"], runs["s2"]
    assert s1.n_groups >= 30  # the catalog has real groups, so the comparison means something
    assert runs["components_paths"] == ["connected_components"]  # the distributed rounds (SIGNALS)
    for t in ("matches", "clusters", "rejects"):
        pd.testing.assert_frame_equal(same(runs["snap2"][t]), same(runs["snap1"][t]))
        # every row carries the run that wrote it
        assert set(runs["snap1"][t]["run_id"]) == {s1.run_id} and set(runs["snap2"][t]["run_id"]) == {s2.run_id}
        assert not runs["snap2"][t].duplicated(subset=["posting_id", "raw"] if t == "rejects" else ["posting_id"]).any()
        assert runs["v2"][t] == runs["v1"][t] + 1  # a new Delta version replaced the partition
    assert len(runs["snap2"]["clusters"]) == s1.rows_kept == s2.rows_kept
    assert s1.rows_rejected == 5 and len(runs["snap2"]["rejects"]) == 5
    assert runs["runs2"]["status"].tolist() == ["succeeded", "succeeded"]  # the audit log keeps both attempts


def test_the_cache_across_the_rerun_and_the_change(runs):
    """The embeddings cache (lexical counts here): the rerun, whose embed stage failed once and
    was retried, reuses every vector and adds no row; the changed catalog embeds its 2 new
    titles only."""
    s1, s2, s3 = runs["s1"], runs["s2"], runs["s3"]
    n = s1.cache["lexical"]["computed"]
    assert n == len(runs["emb1"]) > 0 and s1.cache["lexical"]["reused"] == 0  # a new warehouse
    assert s2.cache == {"lexical": {"reused": n, "computed": 0}}
    assert len(runs["emb2"]) == n and not runs["emb2"].duplicated(subset=["key", "signal", "fingerprint"]).any()
    assert s3.cache["lexical"]["computed"] == 2 and s3.cache["lexical"]["reused"] >= n - 2
    assert len(runs["emb3"]) == n + 2


def test_injected_task_failures_are_retried_and_change_nothing(runs):
    assert runs["failed_clean"] == 0
    # each stage's injection fired (seen from the tasks), and Spark saw the failed attempts
    assert set(runs["injected"]) == set(FAULTS.split(",")), runs["injected"]
    assert runs["failed_faults"] >= len(FAULTS.split(","))
    for t in ("matches", "clusters", "rejects"):
        pd.testing.assert_frame_equal(same(runs["snap2"][t]), same(runs["snap1"][t]))
    # the failed write attempts left their files behind, uncommitted (vacuum's work)
    orphans = runs["fault_orphans"]
    assert orphans and all("/part-00000-" in f for f in orphans)
    assert {f.split("/")[0] for f in orphans} == {"matches", "clusters", "rejects"}  # each table's write failed once


def test_group_ids_are_stable_when_membership_is(runs):
    """The next night, with 1 % of the listings changed: every group keeps its id while it
    continues, also the one that lost its smallest member (stable ids, graph/lineage.py; until
    issue 31 that group took its next smallest posting_id), and group_changes says what changed."""
    before, after = groups(runs["snap1"]["clusters"]), groups(runs["snap3"]["clusters"])
    moved = {runs["moved_min"], runs["moved_other"]}
    unchanged = [m for m in after if m in before]
    # every group with the same members keeps its group_id ...
    assert all(after[m] == before[m] for m in unchanged)
    # ... and that is nearly all of them: only the groups the 2 changed listings touched moved
    touched = [m for m in before if m & moved]
    assert len(unchanged) >= len(before) - len(touched) - 2
    # the changed listings are alone now, each its own group: the one that founded its group
    # left the id with the group and gets a new one (its own posting_id is a live id)
    assert after[frozenset({runs["moved_other"]})] == runs["moved_other"]
    assert after[frozenset({runs["moved_min"]})] == f"{runs['moved_min']}~{NEXT}"
    # a group that lost a member keeps its id, whichever member it lost
    ids_after = runs["snap3"]["clusters"].set_index("posting_id")["group_id"]
    expected_changes = set()
    for m in touched:
        rest = sorted(m - moved)
        assert len({ids_after[p] for p in rest}) == 1  # the rest stayed together
        assert ids_after[rest[0]] == before[m]
        if len(rest) >= 2:
            expected_changes.add(("continued-with-changes", before[m], before[m], len(m), len(rest), len(rest)))
        else:
            expected_changes.add(("dissolved", before[m], None, len(m), None, 1))
    assert min(touched[0]) in moved or min(touched[1]) in moved  # one of them lost its smallest member
    ch = runs["changes3"]
    got = {
        tuple(None if pd.isna(v) else v for v in r)
        for r in ch[["kind", "old_id", "new_id", "old_size", "new_size", "shared"]].itertuples(index=False)
    }
    assert got == expected_changes
    assert (ch["previous_date"] == DATE).all()
    verify_run(runs["wh"], NEXT)
