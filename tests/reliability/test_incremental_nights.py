"""Incremental nights (docs/incremental.md) through the job: a first night (full) and a second
night with listings changed, added and deleted that continues its match state; its tables equal
a full search of the same catalog on the same epoch (``incremental.search_all``); its rerun is
idempotent; a date older than the state is refused (exit 2, one line); a state another run
committed meanwhile fails the run cleanly (exit 1, no table moved; that run is past
``incremental.driver_max_listings``, so the Spark plan continues the driver plan's state). One
small generated catalog, lexical signal and one INB round; the inserted listings' search reaches every listing
(``incremental.search_depth``), so the incremental night must give exactly the full run's edges.

Four job runs and one refused at its start, shared by the checks: the second night runs first as
the reference (every listing searched on the epoch), then again with the incremental plan: that
second run of the date is the rerun (it must continue the same night and give the same tables
and group_changes as the date's first run) and the incremental night (it must equal the
reference) at once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _rel import LEXICAL, config, groups, job, snapshot, versions
from listing_dedup import pipeline
from listing_dedup.quality.sample import generate_catalog
from listing_dedup.search.driver_night import has_state
from listing_dedup.sink.delta import read_table
from listing_dedup.sink.state import STATE_LOG
from listing_dedup.sink.verify import verify_run

pytestmark = pytest.mark.slow  # whole job runs

D0, D1, D2, D3 = "2026-06-30", "2026-07-01", "2026-07-02", "2026-07-03"
SIGNALS = (*LEXICAL, "inb.thresholds=[0.7]", "phash.enabled=true", "output.explanations=true")  # compared too
INC = ("incremental.enabled=true", "incremental.slack=4", "incremental.search_depth=4096")


def night_two(cat: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, set[str]]]:
    """3 listings reworded (the first with another listing's pHash: a new pHash pair), 3 deleted,
    4 added (another seed's products)."""
    rng = np.random.default_rng(4)
    ok = cat[cat["posting_id"].notna() & cat["title"].fillna("").str.strip().astype(bool)]
    ok = ok[~ok["posting_id"].duplicated(keep=False)]
    picked = rng.choice(ok["posting_id"].to_numpy(), 6, replace=False)
    changed, deleted = set(picked[:3]), set(picked[3:])
    out = cat[~cat["posting_id"].isin(deleted)].copy()
    for i, p in enumerate(sorted(changed)):
        out.loc[out["posting_id"] == p, "title"] = f"Payung lipat otomatis anti UV warna {i} zzq{i}"
    other = out.loc[~out["posting_id"].isin(changed) & out["image_phash"].notna(), "image_phash"].iloc[0]
    out.loc[out["posting_id"] == sorted(changed)[0], "image_phash"] = other
    extra = generate_catalog(3, seed=99, with_bad_rows=False).listings.head(4)
    extra = extra.assign(posting_id="new_" + extra["posting_id"])
    return pd.concat([out, extra], ignore_index=True), {"changed": changed, "deleted": deleted}


def same(table: pd.DataFrame) -> pd.DataFrame:
    """A table's rows without the run_id (each run's own)."""
    return table.drop(columns=["run_id"])


@pytest.fixture(scope="module")
def nights(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("incremental")
    cat1 = generate_catalog(40, seed=5).listings
    cat2, moved = night_two(cat1)
    p1, p2 = str(root / "n1.parquet"), str(root / "n2.parquet")
    cat1.to_parquet(p1, index=False)
    cat2.to_parquet(p2, index=False)
    wh = str(root / "wh")
    cfg = config(*SIGNALS, *INC)
    out = {"wh": wh, "moved": moved}
    rc, err, out["r1"] = job(spark, cfg, p1, D1, wh)
    assert rc == 0, err
    # the date's first run: the reference, every listing searched on the epoch
    rc, err, out["full"] = job(spark, config(*SIGNALS, *INC, "incremental.search_all=true"), p2, D2, wh)
    assert rc == 0, err
    out["full2"], out["changes_full"] = snapshot(wh, D2), read_table(wh, "group_changes", D2)
    out["used_full"] = set(read_table(wh, "embeddings_used", D2)["key"])  # every title looked up
    # its rerun with the incremental plan: it continues the same night (D1), searches the delta
    rc, err, out["r2"] = job(spark, cfg, p2, D2, wh)
    assert rc == 0, err
    out["snap2"], out["changes2"] = snapshot(wh, D2), read_table(wh, "group_changes", D2)
    out["used2"] = set(read_table(wh, "embeddings_used", D2)["key"])
    out["v_before_old"] = versions(wh)
    out["old"] = job(spark, cfg, p1, D0, wh)  # older than the state: refused
    out["v_old"] = versions(wh)

    # another run commits the state of another date while this one runs: it must fail cleanly
    real = pipeline.stage_state

    def racing(run, night, matched):
        staged = real(run, night, matched)
        row = spark.createDataFrame(
            [("other", D2, "e", "incremental", "a race", None, None, None, None, None, None, None)],
            "run_id string, base_date string, epoch string, plan string, reason string, added long, changed long, "
            "deleted long, unchanged long, searched long, stale long, committed_at timestamp",
        )
        from listing_dedup.sink.delta import DeltaSink

        DeltaSink(wh).write(row, STATE_LOG, "2026-07-09", mode="append")
        return staged

    before = versions(wh)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "stage_state", racing)
        # past incremental.driver_max_listings: the Spark plan continues the driver plan's state
        # (its arrays as frames)
        out["race"] = job(spark, config(*SIGNALS, *INC, "incremental.driver_max_listings=0"), p2, D3, wh)
    out["race_before"], out["race_after"] = before, versions(wh)
    return out


def test_the_second_night_is_incremental_and_searches_the_delta_only(nights):
    r1, r2 = nights["r1"], nights["r2"]
    assert r1.plan == "full: first night: no state to continue"
    assert r2.plan.startswith(f"incremental: continues {D1} (epoch {D1}.")
    sc = r2.signal_counts
    assert (sc["night_added"], sc["night_changed"], sc["night_deleted"]) == (4, 3, 3)
    assert sc["night_unchanged"] == r2.rows_kept - 7
    # the pre-INB search: the 7 inserted listings and the stale lists, not the catalog
    assert 7 <= sc["incremental_searched"] < r2.rows_embedded // 4
    assert 0 < sc["incremental_blended1"] < r2.rows_embedded
    # pHash: the state's pairs and the blocks the delta touches (the reference searched all blocks)
    assert sc["phash_delta"] == 1 and "phash_delta" not in nights["full"].signal_counts
    # the driver plan (the catalog is under incremental.driver_max_listings): the lists and vectors
    # are files named by the night's run, the Delta state's lists and vectors partitions empty
    assert sc["incremental_driver"] == 1 and "incremental_driver" not in nights["full"].signal_counts
    # and its edges, groups and matches come from its arrays on the driver (graph/driver_graph)
    assert sc["graph_driver"] == 1 and "graph_driver" not in nights["full"].signal_counts
    # only the delta's titles embedded (the others' fused vectors are the arrays'), the catalog counted
    assert sc["embedded_delta"] == 7 and "embedded_delta" not in nights["full"].signal_counts
    assert r2.rows_embedded == nights["full"].rows_embedded
    # yet every title's cache key is marked used, as by the reference's whole lookup (the compaction keeps them)
    assert nights["used2"] == nights["used_full"] and len(nights["used2"]) > r2.rows_kept // 2
    assert has_state(nights["wh"], D1, r1.run_id) and has_state(nights["wh"], D2, r2.run_id)
    assert read_table(nights["wh"], "neighbours", D2).empty and read_table(nights["wh"], "vectors", D2).empty


def test_the_incremental_night_equals_a_full_search_on_the_epoch(nights):
    """Every listing searched and blended on the same epoch gives the same tables: the same
    groups with the same ids, the same match edges and scores, the same group_changes."""
    inc, full = nights["snap2"], nights["full2"]
    assert nights["full"].plan == nights["r2"].plan
    assert nights["full"].signal_counts.get("incremental_searched") is None  # it searched everything
    assert set(groups(inc["clusters"])) == set(groups(full["clusters"]))
    for t in ("matches", "clusters", "rejects"):
        pd.testing.assert_frame_equal(same(inc[t]), same(full[t]))
    cols = ["kind", "old_id", "new_id", "old_size", "new_size", "shared"]
    key = lambda df: df[cols].astype(str).sort_values(cols).reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(key(nights["changes2"]), key(nights["changes_full"]))
    verify_run(nights["wh"], D2)


def test_group_ids_continue_and_group_changes_are_written(nights):
    ch = nights["changes2"]
    assert (ch["previous_date"] == D1).all() and len(ch) > 0
    assert set(ch["kind"]) <= {"new", "merged", "split", "dissolved", "continued-with-changes"}


def test_rerun_of_an_incremental_night_is_idempotent(nights):
    """The date's second run continues the same night as its first and replaces its partitions
    with the same rows and the same group_changes."""
    assert nights["r2"].plan == nights["full"].plan  # it continues D1, not the date's own first run
    for t in ("matches", "clusters", "rejects"):
        pd.testing.assert_frame_equal(same(nights["snap2"][t]), same(nights["full2"][t]))
    cols = ["kind", "old_id", "new_id", "old_size", "new_size", "shared"]
    key = lambda df: df[cols].astype(str).sort_values(cols).reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(key(nights["changes2"]), key(nights["changes_full"]))
    assert read_table(nights["wh"], "clusters", D2)["run_id"].nunique() == 1  # one run's rows only


def test_a_date_older_than_the_state_is_refused(nights):
    rc, err, _ = nights["old"]
    assert rc == 2
    assert err.strip().count("\n") == 0 and "older than the match state's newest night 2026-07-02" in err
    assert "--full" in err
    before, after = nights["v_before_old"], nights["v_old"]
    assert {t: after[t] for t in ("matches", "clusters", "rejects")} == {
        t: before[t] for t in ("matches", "clusters", "rejects")
    }  # nothing committed (the failed attempt's runs row aside)


def test_a_state_committed_meanwhile_fails_the_run_cleanly(nights):
    rc, err, _ = nights["race"]
    assert rc == 1 and "another run committed the match state of 2026-07-09" in err
    before, after = nights["race_before"], nights["race_after"]
    assert {t: after[t] for t in ("matches", "clusters", "rejects")} == {
        t: before[t] for t in ("matches", "clusters", "rejects")
    }
    assert after["runs"] == before["runs"] + 1  # the failed attempt is recorded
