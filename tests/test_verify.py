"""Run verification on Spark (``sink/verify.py``): every problem is found by the aggregates, a
correct warehouse passes, and the data tables are read as their Delta snapshot (files the log
no longer references, or never did, are not counted).

The warehouses are small and written with :class:`DeltaSink`; the expected problems are
written out by hand. A base warehouse is written once per module and each case copies it and
rewrites the one table it breaks."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
from conftest import dedup_main
from listing_dedup.errors import InputError
from listing_dedup.sink.delta import DeltaSink
from listing_dedup.sink.runs import RUNS_SCHEMA
from listing_dedup.sink.verify import VerifyError, check_run, snapshot_files, verify_run

DATE, OTHER = "2026-03-01", "2026-03-02"
UTC = dt.timezone.utc  # noqa: UP017 (python 3.10)

MATCHES_DDL = "posting_id string, match_ids array<string>, scores array<double>"
CLUSTERS_DDL = "posting_id string, group_id string, group_size long"
REJECTS_DDL = "posting_id string, reason string, raw string"

# the good run: groups {a, b, c} and {d, e}, singleton f; two rejects
MATCHES = {"a": ["b", "c"], "b": ["a", "c"], "c": ["a", "b"], "d": ["e"], "e": ["d"], "f": []}
CLUSTERS = [("a", "a", 3), ("b", "a", 3), ("c", "a", 3), ("d", "d", 2), ("e", "d", 2), ("f", "f", 1)]
REJECTS = [(None, "null_posting_id", "{}"), ("g", "no_title_no_image", '{"posting_id": "g"}')]
BY_REASON = {"no_title_no_image": 1, "null_posting_id": 1}
RUN = {"rows_in": 8, "rows_kept": 6, "rows_rejected": 2, "rejects_by_reason": BY_REASON}


def _matches_rows(m: dict | list) -> list[tuple]:
    items = m.items() if isinstance(m, dict) else m
    return [(pid, list(ids), [0.95] * len(ids)) for pid, ids in items]


def _write(spark, wh, table: str, rows: list[tuple], ddl: str, date: str = DATE, mode: str = "overwrite_partition"):
    DeltaSink(str(wh)).write(spark.createDataFrame(rows, ddl).coalesce(1), table, date, mode=mode)


def _runs_row(status="succeeded", error="", finished_minute=0, **kw) -> tuple:
    r = {**RUN, **kw}
    finished = dt.datetime(2026, 3, 1, 3, finished_minute, tzinfo=UTC)
    return (
        f"run-{status}-{finished_minute}",
        status,
        error,
        finished - dt.timedelta(minutes=1),
        finished,
        "/in",
        "{}",
        "test",
        r["rows_in"],
        r["rows_kept"],
        r["rows_rejected"],
        json.dumps(r["rejects_by_reason"], sort_keys=True),
        r["rows_kept"],
        7,
        2,
        5,
        1,
        3,
        "{}",
        0,
        "{}",
        None,  # health_json
        None,  # health_warnings
        0,  # vectors_reused
        0,  # vectors_computed
    )


def _write_runs(spark, wh, rows: list[tuple], mode: str = "append", date: str = DATE):
    _write(spark, wh, "runs", rows, RUNS_SCHEMA, date=date, mode=mode)


@pytest.fixture(scope="module")
def base(spark, tmp_path_factory) -> Path:
    wh = tmp_path_factory.mktemp("verify") / "base"
    _write(spark, wh, "matches", _matches_rows(MATCHES), MATCHES_DDL)
    _write(spark, wh, "clusters", CLUSTERS, CLUSTERS_DDL)
    _write(spark, wh, "rejects", REJECTS, REJECTS_DDL)
    _write_runs(spark, wh, [_runs_row()])
    return wh


@pytest.fixture()
def wh(base, tmp_path) -> Path:
    """A copy of the base warehouse to break (a space in its path: delta-rs percent-encodes it)."""
    out = tmp_path / "the wh"
    shutil.copytree(base, out)
    return out


def _problems(spark, wh) -> list[str]:
    return check_run(str(wh), DATE, spark).problems


# --------------------------------------------------------------------------------------
# a correct warehouse


def test_correct_warehouse_passes(spark, base):
    res = verify_run(str(base), DATE, spark)
    assert (res.ok, res.problems) == (True, [])
    assert (res.rows_in, res.rows_kept, res.rows_rejected, res.n_groups) == (8, 6, 2, 2)


def test_uses_the_active_session_when_none_is_given(spark, base):
    res = verify_run(str(base), DATE)
    assert res.ok and res.n_groups == 2


def test_reads_the_delta_snapshot_not_the_folder(spark, wh):
    # a rerun's overwrite leaves the old files in the folder (tombstoned), an uncommitted stage
    # leaves an orphan: read as plain Parquet, the folder would hold 18 matches rows
    _write(spark, wh, "matches", _matches_rows(MATCHES), MATCHES_DDL)
    DeltaSink(str(wh)).stage(spark.createDataFrame(_matches_rows(MATCHES), MATCHES_DDL).coalesce(1), "matches", DATE)
    on_disk = list((wh / "matches" / f"run_date={DATE}").glob("*.parquet"))
    assert len(on_disk) == 3
    paths, schema = snapshot_files(str(wh), "matches", DATE)
    assert len(paths) == 1 and paths[0].startswith(f"file://{wh}/matches/run_date={DATE}/part-")
    assert schema.names == ["posting_id", "match_ids", "scores", "run_date"]
    res = check_run(str(wh), DATE, spark)
    assert res.problems == [] and res.rows_kept == 6


def test_empty_partitions_read_as_empty_tables(spark, wh):
    # a run that kept and rejected nothing: every data table's partition holds no file
    for table, ddl in (("matches", MATCHES_DDL), ("clusters", CLUSTERS_DDL), ("rejects", REJECTS_DDL)):
        _write(spark, wh, table, [], ddl, date=OTHER)
    _write_runs(spark, wh, [_runs_row(rows_in=0, rows_kept=0, rows_rejected=0, rejects_by_reason={})], date=OTHER)
    assert snapshot_files(str(wh), "matches", OTHER)[0] == []
    res = verify_run(str(wh), OTHER, spark)
    assert (res.rows_in, res.rows_kept, res.rows_rejected, res.n_groups) == (0, 0, 0, 0)


# --------------------------------------------------------------------------------------
# every problem, found by the Spark path


def test_asymmetric_match_lists(spark, wh):
    broken = {**MATCHES, "b": ["a"]}  # c lists b, b does not list c
    _write(spark, wh, "matches", _matches_rows(broken), MATCHES_DDL)
    assert _problems(spark, wh) == ["match lists are not symmetric (1 pair(s) listed one way only, e.g. [('c', 'b')])"]


def test_match_to_a_listing_that_is_not_kept(spark, wh):
    broken = {**MATCHES, "f": ["z"]}  # z is no kept listing (and lists nothing back)
    _write(spark, wh, "matches", _matches_rows(broken), MATCHES_DDL)
    assert _problems(spark, wh) == [
        "match_ids hold posting_ids that are not kept listings (1 reference(s), e.g. ['z'])",
        "match lists are not symmetric (1 pair(s) listed one way only, e.g. [('f', 'z')])",
    ]


def test_group_id_need_not_be_a_members_posting_id_but_must_be_set(spark, wh):
    # a stable group id continues across nights (graph/lineage.py): any id is fine, none is not
    renamed = [r if r[1] != "d" else (r[0], "x", 2) for r in CLUSTERS]
    _write(spark, wh, "clusters", renamed, CLUSTERS_DDL)
    assert _problems(spark, wh) == []
    broken = [r if r[0] != "f" else ("f", None, 1) for r in CLUSTERS]
    _write(spark, wh, "clusters", broken, CLUSTERS_DDL)
    assert _problems(spark, wh) == ["listings without a group_id, e.g. ['f']"]


def test_wrong_group_size(spark, wh):
    broken = [r if r[0] != "b" else ("b", "a", 2) for r in CLUSTERS]
    broken = [r if r[0] != "f" else ("f", "f", 2) for r in broken]
    _write(spark, wh, "clusters", broken, CLUSTERS_DDL)
    assert _problems(spark, wh) == [
        "group_size differs from the number of rows of the group (2 group(s), e.g. ['a', 'f'])"
    ]


def test_duplicate_posting_id(spark, wh):
    _write(spark, wh, "matches", _matches_rows([*MATCHES.items(), ("f", [])]), MATCHES_DDL)
    assert _problems(spark, wh) == [
        "matches holds 7 rows, the run kept 6",
        "matches holds 1 duplicate posting_id rows, e.g. ['f']",
    ]


def test_clusters_and_matches_hold_different_ids(spark, wh):
    renamed = [(k if k != "f" else "h", v) for k, v in MATCHES.items()]
    _write(spark, wh, "matches", _matches_rows(renamed), MATCHES_DDL)
    assert _problems(spark, wh) == [
        "clusters and matches hold different posting_ids: 1 only in clusters (e.g. ['f']), "
        "1 only in matches (e.g. ['h'])"
    ]


def test_rejects_count_differs(spark, wh):
    _write(spark, wh, "rejects", [*REJECTS, (None, "null_posting_id", "{}")], REJECTS_DDL)
    assert _problems(spark, wh) == [
        "rejects holds 3 rows, the run rejected 2",
        "rejects by reason {'no_title_no_image': 1, 'null_posting_id': 2} != recorded "
        "{'no_title_no_image': 1, 'null_posting_id': 1}",
    ]


def test_rejects_per_reason_differ(spark, wh):
    _write(spark, wh, "rejects", [REJECTS[0], ("g", "malformed_image_phash", "{}")], REJECTS_DDL)
    assert _problems(spark, wh) == [
        "rejects by reason {'malformed_image_phash': 1, 'null_posting_id': 1} != recorded "
        "{'no_title_no_image': 1, 'null_posting_id': 1}"
    ]


def test_rows_in_is_not_kept_plus_rejected(spark, wh):
    _write_runs(spark, wh, [_runs_row(rows_in=9)], mode="overwrite_partition")
    assert _problems(spark, wh) == ["rows_in 9 != kept 6 + rejected 2"]


def test_latest_attempt_failed(spark, wh):
    _write_runs(spark, wh, [_runs_row("failed", "boom: the embed stage died", finished_minute=30)])
    assert _problems(spark, wh) == [f"the latest attempt for {DATE} has status failed: boom: the embed stage died"]
    with pytest.raises(VerifyError, match=f"run {DATE} under .* failed verification: the latest attempt"):
        verify_run(str(wh), DATE, spark)


def test_no_run_recorded(spark, base):
    assert check_run(str(base), OTHER, spark).problems == [f"no run recorded for {OTHER}"]


def test_missing_table_is_an_input_error(spark, wh):
    shutil.rmtree(wh / "clusters")
    with pytest.raises(InputError, match="Delta table 'clusters' does not exist"):
        check_run(str(wh), DATE, spark)


# --------------------------------------------------------------------------------------
# run ids: every data table's rows carry the run that wrote them (the base warehouse is one of
# the version before run_id: no such column)

RUN_ID = "run-succeeded-0"  # the base's runs row (_runs_row)
CANDIDATES_DDL = "posting_id string, candidate_id string, score float, signal_scores map<string,float>"


def _with_run(spark, wh, table: str, rows: list[tuple], ddl: str, run_id: str | None, date: str = DATE):
    """``table``'s partition rewritten by ``run_id`` (the table gains the column)."""
    DeltaSink(str(wh)).write(
        spark.createDataFrame([(*r, run_id) for r in rows], f"{ddl}, run_id string").coalesce(1),
        table,
        date,
        added_columns=("run_id",),
    )


def _all_with_run(spark, wh, run_id: str = RUN_ID, **runs: str) -> None:
    """Every data table rewritten by ``run_id`` (``runs``: table -> another run id)."""
    _with_run(spark, wh, "matches", _matches_rows(MATCHES), MATCHES_DDL, runs.get("matches", run_id))
    _with_run(spark, wh, "clusters", CLUSTERS, CLUSTERS_DDL, runs.get("clusters", run_id))
    _with_run(spark, wh, "rejects", REJECTS, REJECTS_DDL, runs.get("rejects", run_id))


def _mixed(run_date: str, tables: str) -> str:
    return (
        f"the tables of {run_date} do not all come from its latest run {RUN_ID} (the runs row checked above): "
        f"{tables}; a run stopped between its commits? rerun {run_date}"
    )


def test_tables_of_the_latest_run_pass(spark, wh):
    _all_with_run(spark, wh)
    assert _problems(spark, wh) == []


def test_tables_of_one_date_from_different_runs(spark, wh):
    """A run stopped after its matches commit: same rows, same counts, another run id."""
    _all_with_run(spark, wh, matches="run-b")
    assert _problems(spark, wh) == [
        _mixed(
            DATE,
            "matches: run run-b (6 rows), clusters: run run-succeeded-0 (6 rows), "
            "rejects: run run-succeeded-0 (2 rows)",
        )
    ]


def test_tables_of_a_run_the_runs_table_does_not_record(spark, wh):
    """Every table of one run whose runs row was never written (the latest row is another run's)."""
    _all_with_run(spark, wh, "run-c")
    assert _problems(spark, wh) == [
        _mixed(DATE, "matches: run run-c (6 rows), clusters: run run-c (6 rows), rejects: run run-c (2 rows)")
    ]


def test_earlier_version_rows_beside_a_run_s_rows_are_a_mix(spark, wh):
    """The first run of the new version stopped after matches: the other tables are the earlier
    version's (no run_id), their rows read null once the table gains the column."""
    _with_run(spark, wh, "matches", _matches_rows(MATCHES), MATCHES_DDL, RUN_ID)
    expected = [
        _mixed(
            DATE,
            "matches: run run-succeeded-0 (6 rows), clusters: no run_id (an earlier version) (6 rows), "
            "rejects: no run_id (an earlier version) (2 rows)",
        )
    ]
    assert _problems(spark, wh) == expected
    # clusters gains the column (another date's write): the date's earlier files read null there
    _with_run(spark, wh, "clusters", CLUSTERS, CLUSTERS_DDL, RUN_ID, date=OTHER)
    assert _problems(spark, wh) == expected


def test_candidates_are_checked_where_the_table_exists(spark, wh):
    _all_with_run(spark, wh)
    cand = [("a", "b", 0.9, {"lexical": 0.9}), ("b", "a", 0.9, {"lexical": 0.9})]
    _with_run(spark, wh, "candidates", cand, CANDIDATES_DDL, "run-old")
    assert _problems(spark, wh) == [
        _mixed(
            DATE,
            "matches: run run-succeeded-0 (6 rows), clusters: run run-succeeded-0 (6 rows), "
            "rejects: run run-succeeded-0 (2 rows), candidates: run run-old (2 rows)",
        )
    ]
    _with_run(spark, wh, "candidates", [], CANDIDATES_DDL, None)  # the partition emptied by the rerun
    assert _problems(spark, wh) == []


# --------------------------------------------------------------------------------------
# the DAG's verify task: --verify-only, and --fail-on-health (Airflow Variable listing_dedup_fail_on_health)


def test_verify_cli_fails_on_health_warnings_only_when_asked(cli_spark, wh, capsys):
    args = ("--verify-only", "--run-date", DATE, "--warehouse", str(wh))
    rc, out, err = dedup_main(capsys, *args, "--fail-on-health")
    assert (rc, out.strip()) == (0, "verified 2026-03-01: 8 rows in, 6 kept, 2 rejected, 2 groups"), err
    # a later attempt whose health check warned (the tables themselves are consistent)
    warned = list(_runs_row(finished_minute=40))
    warned[-4:-2] = ['{"warnings": []}', "matches_exploding,guard_cut"]  # health_json, health_warnings
    warned = tuple(warned)
    _write_runs(cli_spark, wh, [warned])
    rc, out, err = dedup_main(capsys, *args)
    assert rc == 0 and out.strip().endswith("2 groups; health warnings: matches_exploding,guard_cut"), err
    rc, out, err = dedup_main(capsys, *args, "--fail-on-health")
    assert rc == 1
    assert "error: the health check of 2026-03-01 warned: matches_exploding,guard_cut" in err
    rc, _, err = dedup_main(capsys, "--conf", "conf/local.yaml", "--input", "x", "--run-date", DATE,
                      "--warehouse", str(wh), "--fail-on-health")  # fmt: skip
    assert rc == 2 and "--fail-on-health goes with --verify-only" in err
