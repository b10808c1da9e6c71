"""Data safety around the commit: empty, shrunken or mostly rejected inputs, schema checks before
the first commit (and before any work), the runs row after the data commits, the run_id every data
table carries (a run stopped between its commits, tables of an earlier version), one-line config
errors, storage errors while reading the input. (Vacuum retention and the concurrent-commit
overlap: tests/test_writer.py.)

One job run makes the baseline warehouse (a 6-row catalog committed for DATE); each test works
on its own copy of it. The commit path is under test, not the signals: every run here uses the
lexical signal alone (``LEXICAL``: no text model, no pHash stage, no candidates table)."""

from __future__ import annotations

import datetime as dt
import functools
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from _rel import CONF, DATA_TABLES, LEXICAL, cli_args, config, data_files, job, snapshot, versions
from deltalake import DeltaTable
from listing_dedup import pipeline
from listing_dedup.cli import dedup as dedup_cli
from listing_dedup.config import InputConf
from listing_dedup.errors import ConfigError, InputError, SinkError, StorageError
from listing_dedup.ingest import reader
from listing_dedup.sink.delta import DeltaSink, read_table, table_version
from listing_dedup.sink.runs import last_succeeded_run
from listing_dedup.sink.schemas import OUTPUT_DATA_SCHEMAS
from listing_dedup.sink.verify import VerifyError, check_run, snapshot_files, verify_run

DATE, DATE2 = "2026-04-01", "2026-04-02"
CATALOG = [
    ("a1", "Rice cooker digital Miyako 1.8 liter"),
    ("a2", "MIYAKO RICE COOKER DIGITAL 1.8 LITER"),
    ("b1", "Mouse wireless Logitech M331 silent click"),
    ("b2", "Logitech M331 silent click wireless mouse"),
    ("c1", "Hijab segi empat voal motif bunga"),
    ("d1", "Susu UHT coklat 200ml"),
]


@pytest.fixture(scope="module")
def baseline(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    path = root / "listings.parquet"
    pd.DataFrame(CATALOG, columns=["posting_id", "title"]).to_parquet(path, index=False)
    wh = root / "wh"
    rc, err, s = job(spark, config(*LEXICAL), str(path), DATE, str(wh))
    assert rc == 0, err
    assert s.rows_in == len(CATALOG)
    return str(path), wh


def copy_of(baseline, tmp_path) -> str:
    wh = tmp_path / "wh"
    shutil.copytree(baseline[1], wh)
    return str(wh)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def statuses(wh: str) -> list[str]:
    return read_table(wh, "runs").sort_values("started_at")["status"].tolist()


# --------------------------------------------------------------------------------------
# 1. every table is checked before the first commit


def odd_clusters(spark, wh: str) -> None:
    """``clusters`` as another writer left it: group_size is a string there."""
    shutil.rmtree(Path(wh) / "clusters")
    odd = spark.createDataFrame([("a1", "a1", "2")], "posting_id string, group_id string, group_size string")
    DeltaSink(wh).write(odd, "clusters", DATE)


def assert_failed_on_clusters(wh, err, before, before_versions) -> None:
    line = one_line(err)
    assert line.startswith("error: table 'clusters' has a different schema than this write"), line
    assert "column 'group_size' is string in the table, integer in this write" in line, line
    after = versions(wh)
    # `matches` (committed first) keeps its previous version, like every data table
    assert {t: after[t] for t in DATA_TABLES} == {t: before_versions[t] for t in DATA_TABLES}
    for t, df in snapshot(wh, DATE).items():
        pd.testing.assert_frame_equal(df, before[t])
    assert statuses(wh) == ["succeeded", "failed"]
    assert after["runs"] == before_versions["runs"] + 1


def test_the_job_checks_every_output_schema_it_declares(baseline):
    """OUTPUT_DATA_SCHEMAS (what the job checks the tables against before any work) is exactly
    what a run commits: the check of the baseline's own tables passes (it compares the whole
    Delta schema), and each declared schema names the committed columns in order."""
    sink = DeltaSink(baseline[1])
    for t in DATA_TABLES:
        sink.check_schema(t, OUTPUT_DATA_SCHEMAS[t])
        assert [f.name for f in DeltaTable(sink.table_uri(t)).schema().fields] == [
            *OUTPUT_DATA_SCHEMAS[t].names,
            "run_date",
        ]


def test_without_explanations_the_matches_keep_their_columns_null(baseline):
    """``output.explanations: false`` (the baseline's LEXICAL set): the same matches table, its
    explanation columns null (not recorded) where the default run fills them (test_decisions)."""
    m = read_table(str(baseline[1]), "matches", DATE).set_index("posting_id")
    assert sorted(m.loc["a1", "match_ids"]) == ["a2"] and sorted(m.loc["b1", "match_ids"]) == ["b2"]
    for c in ("kept_by", "signal_scores", "phash_distance"):
        assert m[c].isna().all(), c


def test_incompatible_table_fails_the_run_before_any_work(spark, baseline, tmp_path):
    path, _ = baseline
    wh = copy_of(baseline, tmp_path)
    odd_clusters(spark, wh)
    before, before_versions, before_files = snapshot(wh, DATE), versions(wh), data_files(wh)

    rc, err, _ = job(spark, config(*LEXICAL), path, DATE, wh)
    assert rc == SinkError.exit_code == 1
    assert_failed_on_clusters(wh, err, before, before_versions)
    assert data_files(wh) == before_files  # nothing was even staged
    failed = read_table(wh, "runs").sort_values("started_at").iloc[-1]
    assert json.loads(failed["stage_seconds"]) == {}  # no stage ran: not even the input was read


def test_table_changed_during_the_run_fails_it_before_any_table_moves(spark, baseline, tmp_path, monkeypatch):
    """Another writer changes `clusters` after the run's first check (while it embeds): the
    staged writes are checked again, all of them before the first commit."""
    path, _ = baseline
    wh = copy_of(baseline, tmp_path)
    before, before_versions, before_files = snapshot(wh, DATE), versions(wh), data_files(wh)
    real = pipeline.check_output_tables

    def check_then_change(spark_, sink, cfg):
        real(spark_, sink, cfg)
        odd_clusters(spark, wh)

    monkeypatch.setattr(pipeline, "check_output_tables", check_then_change)
    rc, err, _ = job(spark, config(*LEXICAL), path, DATE, wh)
    assert rc == SinkError.exit_code == 1
    # `clusters` is what the other writer left (its one row, its new version); the rest as before
    changed = snapshot(wh, DATE)["clusters"]
    assert changed["group_size"].tolist() == ["2"]
    assert_failed_on_clusters(
        wh, err, {**before, "clusters": changed}, {**before_versions, "clusters": versions(wh)["clusters"]}
    )
    new_files = data_files(wh) - before_files
    # matches was staged (the catalog has no rejects to stage), never committed: orphans for vacuum
    assert "matches" in {f.split("/")[0] for f in new_files}


# --------------------------------------------------------------------------------------
# 2. the runs row after the data commits


def test_runs_row_failure_after_the_data_commits_is_not_recorded_as_failed(spark, baseline, tmp_path, monkeypatch):
    path, _ = baseline
    wh = copy_of(baseline, tmp_path)
    before = versions(wh)
    real_commit = DeltaSink.commit
    refused = []

    def commit(self, staged, **kwargs):  # the first runs commit fails, as storage might
        if staged.table == "runs" and not refused:
            refused.append(staged)
            raise SinkError("committing table 'runs' (2026-04-01) failed: the object store said 503")
        return real_commit(self, staged, **kwargs)

    monkeypatch.setattr(DeltaSink, "commit", commit)
    rc, err, _ = job(spark, config(*LEXICAL), path, DATE, wh)
    monkeypatch.undo()

    assert rc == 1 and len(refused) == 1
    after = versions(wh)
    assert {t: after[t] for t in DATA_TABLES} == {t: before[t] + 1 for t in DATA_TABLES}  # the data committed
    committed = ", ".join(f"{t} version {table_version(wh, t)}" for t in DATA_TABLES)
    # then the night's group_changes (stable group ids), and the embeddings cache's record of the
    # date's keys (every vector was reused from the baseline's run: no new vectors, so no
    # embeddings commit)
    committed += f", group_changes version {table_version(wh, 'group_changes')}"
    committed += f", embeddings_used version {table_version(wh, 'embeddings_used')}"
    assert one_line(err) == (
        f"error: the data tables were committed ({committed}) but the runs row was not recorded: committing "
        "table 'runs' (2026-04-01) failed: the object store said 503; rerun 2026-04-01 to record it (the rerun "
        "replaces the date's partitions: idempotent)"
    )
    # no "failed" row (a later runs write would have landed: only the first one was refused)
    assert after["runs"] == before["runs"]
    assert statuses(wh) == ["succeeded"]
    # the tables are the new run's, the runs table's latest row the baseline's: verify says so
    # (the counts agree: the same catalog), until a rerun records the row
    baseline_run = read_table(wh, "runs")["run_id"].iloc[0]
    new_run = read_table(wh, "matches", DATE)["run_id"].unique().tolist()
    assert len(new_run) == 1 and new_run[0] != baseline_run
    assert check_run(wh, DATE).problems == [
        f"the tables of {DATE} do not all come from its latest run {baseline_run} (the runs row checked above): "
        f"matches: run {new_run[0]} (6 rows), clusters: run {new_run[0]} (6 rows), rejects: empty; a run stopped "
        f"between its commits? rerun {DATE}"
    ]


# --------------------------------------------------------------------------------------
# 3. empty and shrunken inputs


def test_check_row_count_rules():
    conf = InputConf()
    assert (conf.allow_empty, conf.max_shrink) == (False, 0.5)
    for rows, prev in [(1, None), (50, 100), (100, 100), (150, 100), (1, 0)]:
        reader.check_row_count(rows, conf, previous_rows=prev)  # accepted
    for rows, prev in [(0, None), (0, 100), (49, 100), (1, 3)]:
        with pytest.raises(InputError):
            reader.check_row_count(rows, conf, previous_rows=prev)
    with pytest.raises(InputError, match=r"holds 10 rows, 90% fewer than the 100 rows .* \(run r7 for 2026-01-01\)"):
        reader.check_row_count(10, conf, previous_rows=100, previous_run="run r7 for 2026-01-01")
    with pytest.raises(InputError, match="no succeeded run is recorded before it"):
        reader.check_row_count(0, conf)
    loose = InputConf(max_shrink=0.8)
    reader.check_row_count(20, loose, previous_rows=100)
    with pytest.raises(InputError, match="input.max_shrink=0.8"):
        reader.check_row_count(19, loose, previous_rows=100)
    reader.check_row_count(1, InputConf(max_shrink=1.0), previous_rows=10**9)
    with pytest.raises(InputError):  # a shrink limit of 1.0 does not accept an empty input ...
        reader.check_row_count(0, InputConf(max_shrink=1.0), previous_rows=5)
    reader.check_row_count(0, InputConf(allow_empty=True), previous_rows=5)  # ... allow_empty does


def test_last_succeeded_run_is_the_latest_by_finished_at_whatever_its_date(spark, tmp_path):
    wh = str(tmp_path)
    sink = DeltaSink(wh)
    assert last_succeeded_run(sink) is None  # no runs table yet
    schema = "run_id string, status string, rows_in long, finished_at timestamp"

    def row(run_id, status, rows_in, day):
        return (run_id, status, rows_in, dt.datetime(2026, 4, day, 3, tzinfo=dt.timezone.utc))  # noqa: UP017

    sink.write(spark.createDataFrame([row("r-failed", "failed", 0, 9)], schema), "runs", "2026-04-08", mode="append")
    assert last_succeeded_run(sink) is None  # failed attempts never count
    for date, rows in {
        "2026-04-02": [row("r-new-date", "succeeded", 900, 2), row("r-older", "succeeded", 800, 1)],
        "2026-03-01": [row("r-backfill", "succeeded", 500, 5)],  # an old date, run last
        "2026-04-06": [row("r-refused", "failed", 3, 7)],
    }.items():
        sink.write(spark.createDataFrame(rows, schema), "runs", date, mode="append")
    got = last_succeeded_run(sink)
    assert (got.run_id, got.run_date, got.rows_in) == ("r-backfill", "2026-03-01", 500)
    assert got.describe() == "run r-backfill for 2026-03-01, finished 2026-04-05 03:00 UTC"


def test_empty_input_is_refused_unless_allowed(cli_spark, baseline, tmp_path, monkeypatch, capsys):
    wh = copy_of(baseline, tmp_path)
    # pandas writes an empty object column with no type (Parquet null, read by Spark as int)
    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"posting_id": pd.Series([], dtype=object), "title": pd.Series([], dtype=object)}).to_parquet(empty)
    monkeypatch.setattr(dedup_cli, "build_spark", lambda _conf: cli_spark)  # the test session, not a new one
    before, before_versions, before_files = snapshot(wh, DATE), versions(wh), data_files(wh)

    rc = dedup_cli.main(cli_args(str(empty), DATE, wh, *LEXICAL))
    out = capsys.readouterr()
    assert rc == 2
    line = one_line(out.err)
    assert line.startswith(f"error: input {empty} holds 0 rows; the previous succeeded run (run "), line
    assert f"for {DATE}, finished " in line and ") read 6 rows: refusing to replace" in line, line
    assert "--allow-empty" in line
    after = versions(wh)
    assert {t: after[t] for t in DATA_TABLES} == {t: before_versions[t] for t in DATA_TABLES}
    assert data_files(wh) == before_files  # refused before anything was staged
    for t, df in snapshot(wh, DATE).items():
        pd.testing.assert_frame_equal(df, before[t])
    runs = read_table(wh, "runs").sort_values("started_at")
    assert runs["status"].tolist() == ["succeeded", "failed"]  # recorded like other unusable inputs
    assert runs["rows_in"].tolist() == [6, 0]

    rc = dedup_cli.main([*cli_args(str(empty), DATE, wh, *LEXICAL), "--allow-empty"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "rows in        0" in out.out
    for t in DATA_TABLES:
        assert read_table(wh, t, DATE).empty
    assert verify_run(wh, DATE).rows_in == 0
    last = read_table(wh, "runs").sort_values("started_at").iloc[-1]
    assert (last["status"], last["rows_in"]) == ("succeeded", 0)
    recorded = json.loads(last["config_json"])["input"]
    assert (recorded["allow_empty"], recorded["max_shrink"]) == (True, 1.0)


def test_shrunken_input_is_refused_unless_the_shrink_limit_allows_it(spark, baseline, tmp_path):
    wh = copy_of(baseline, tmp_path)
    # 2 rows where the previous run read 6; the optional columns are entirely null
    nulls = tmp_path / "nulls.parquet"
    pd.DataFrame(
        {"posting_id": ["a", "b"], "title": ["Payung lipat", None], "image": [None, None], "image_phash": [None, None]}
    ).to_parquet(nulls)
    before = versions(wh)
    # another date: the previous succeeded run of any date is the baseline
    rc, err, _ = job(spark, config(*LEXICAL), str(nulls), DATE2, wh)
    assert rc == 2
    line = one_line(err)
    assert line.startswith(
        f"error: input {nulls} holds 2 rows, 67% fewer than the 6 rows the previous succeeded run"
    ), line
    assert "input.max_shrink=0.5 allows at most 50% fewer" in line, line
    assert {t: versions(wh)[t] for t in DATA_TABLES} == {t: before[t] for t in DATA_TABLES}
    assert read_table(wh, "clusters", DATE2).empty

    # a limit that lets the 2 rows in (>= 1.2) refuses the 1 row kept of the previous run's 6
    rc, err, _ = job(spark, config(*LEXICAL, "input.max_shrink=0.8"), str(nulls), DATE2, wh)
    assert rc == 2
    line = one_line(err)
    assert line.startswith(
        f"error: input {nulls} keeps 1 of its 2 rows (50%, 1 rejected: no_title_no_image 1), 83% fewer kept rows "
        "than the previous succeeded run (run "
    ), line
    assert ") kept 6 of 6 (100%); input.max_shrink=0.8 allows at most 80% fewer: refusing it" in line, line

    # a conf'd limit that allows the drop; all-null optional columns are accepted (read as string)
    rc, err, s = job(spark, config(*LEXICAL, "input.max_shrink=0.9"), str(nulls), DATE2, wh)
    assert rc == 0, err
    assert (s.rows_in, s.rows_kept, s.rejects_by_reason) == (2, 1, {"no_title_no_image": 1})
    assert verify_run(wh, DATE2).ok
    assert statuses(wh) == ["succeeded", "failed", "failed", "succeeded"]
    got = last_succeeded_run(DeltaSink(wh))
    assert (got.run_date, got.rows_in) == (DATE2, 2)  # the new baseline


# --------------------------------------------------------------------------------------
# 4. mostly rejected inputs: the guard on the rows kept


def test_check_kept_rows_rules():
    conf = InputConf()
    assert conf.max_rejected_share == 0.5
    prev = {"previous_in": 100, "previous_kept": 100, "previous_run": "run r7 for 2026-01-01"}
    for rows_in, kept in [(100, 100), (100, 50), (60, 50), (200, 100)]:
        reader.check_kept_rows(rows_in, kept, conf, **prev)  # accepted
    for rows_in, kept in [(1, 1), (2, 1), (0, 0)]:
        reader.check_kept_rows(rows_in, kept, conf)  # no previous run: the share alone
    for rows_in, kept in [(100, 49), (100, 0), (3, 1), (1, 0)]:  # more than half rejected
        with pytest.raises(InputError, match="input.max_rejected_share=0.5 allows at most 50% rejected"):
            reader.check_kept_rows(rows_in, kept, conf)
    with pytest.raises(InputError) as e:
        reader.check_kept_rows(
            6,
            0,
            conf,
            previous_in=6,
            previous_kept=6,
            previous_run="run r7 for 2026-01-01",
            rejects_by_reason={"no_title_no_image": 5, "duplicate_posting_id": 1},
            path="/in/x",
        )
    assert str(e.value) == (
        "input /in/x keeps 0 of its 6 rows (0%, 6 rejected: no_title_no_image 5, duplicate_posting_id 1); the "
        "previous succeeded run (run r7 for 2026-01-01) kept 6 of 6 (100%): input.max_rejected_share=0.5 allows "
        "at most 50% rejected: refusing it as a probable upstream bug (the date's tables are unchanged); rerun with "
        "--allow-empty (or a higher input.max_rejected_share) if the rows really are bad"
    )
    with pytest.raises(InputError, match="no succeeded run with a kept count is recorded before it"):
        reader.check_kept_rows(6, 0, conf)  # an all-rejected first run
    # the kept rows against the previous run's kept rows, with max_shrink
    off = InputConf(max_rejected_share=1.0)
    reader.check_kept_rows(6, 0, off)  # no previous run: nothing to shrink from
    reader.check_kept_rows(100, 50, off, **prev)
    with pytest.raises(InputError) as e:
        reader.check_kept_rows(100, 49, off, **prev)
    assert str(e.value).startswith(
        "input keeps 49 of its 100 rows (49%, 51 rejected), 51% fewer kept rows than the previous succeeded run "
        "(run r7 for 2026-01-01) kept 100 of 100 (100%); input.max_shrink=0.5 allows at most 50% fewer"
    )
    reader.check_kept_rows(100, 0, InputConf(max_rejected_share=1.0, max_shrink=1.0), **prev)  # both off
    reader.check_kept_rows(100, 1, off, previous_in=100, previous_kept=0)  # nothing kept before: no floor
    with pytest.raises(ConfigError, match="input.max_rejected_share"):
        InputConf(max_rejected_share=1.5)


def null_titles(tmp_path) -> str:
    """Yesterday's 6 ids, every title null (an upstream bug)."""
    path = tmp_path / "null_titles.parquet"
    pd.DataFrame({"posting_id": [pid for pid, _ in CATALOG], "title": pd.Series([None] * 6, dtype=object)}).to_parquet(
        path
    )
    return str(path)


@pytest.mark.slow
def test_all_rejected_input_is_refused_before_any_table_changes(cli_spark, baseline, tmp_path, monkeypatch, capsys):
    wh = copy_of(baseline, tmp_path)
    path = null_titles(tmp_path)
    before, before_versions, before_files = snapshot(wh, DATE), versions(wh), data_files(wh)
    previous = last_succeeded_run(DeltaSink(wh))

    rc, err, _ = job(cli_spark, config(*LEXICAL), path, DATE, wh)
    assert rc == InputError.exit_code == 2
    assert one_line(err) == (
        f"error: input {path} keeps 0 of its 6 rows (0%, 6 rejected: no_title_no_image 6); the previous succeeded "
        f"run ({previous.describe()}) kept 6 of 6 (100%): input.max_rejected_share=0.5 allows at most 50% "
        "rejected: refusing it as a probable upstream bug (the date's tables are unchanged); rerun with "
        "--allow-empty (or a higher input.max_rejected_share) if the rows really are bad"
    )
    # a conf'd share limit that accepts every row rejected still has the kept rows shrink by 100%
    rc, err, _ = job(cli_spark, config(*LEXICAL, "input.max_rejected_share=1.0"), path, DATE, wh)
    assert rc == 2
    assert "100% fewer kept rows than the previous succeeded run" in one_line(err)
    after = versions(wh)
    assert {t: after[t] for t in DATA_TABLES} == {t: before_versions[t] for t in DATA_TABLES}
    assert data_files(wh) == before_files  # refused before anything was staged
    for t, df in snapshot(wh, DATE).items():
        pd.testing.assert_frame_equal(df, before[t])
    runs = read_table(wh, "runs").sort_values("started_at")
    assert runs["status"].tolist() == ["succeeded", "failed", "failed"]
    assert (runs["rows_in"].tolist(), runs["rows_kept"].tolist()) == ([6, 6, 6], [6, 0, 0])  # nothing lost

    # --allow-empty accepts it for one run
    monkeypatch.setattr(dedup_cli, "build_spark", lambda _conf: cli_spark)
    rc = dedup_cli.main([*cli_args(path, DATE, wh, *LEXICAL), "--allow-empty"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert read_table(wh, "clusters", DATE).empty and len(read_table(wh, "rejects", DATE)) == 6
    res = verify_run(wh, DATE)
    assert (res.rows_in, res.rows_kept, res.rows_rejected) == (6, 0, 6)
    recorded = json.loads(read_table(wh, "runs").sort_values("started_at")["config_json"].iloc[-1])["input"]
    assert (recorded["allow_empty"], recorded["max_shrink"], recorded["max_rejected_share"]) == (True, 1.0, 1.0)


@pytest.mark.slow
def test_all_rejected_first_run_is_refused(spark, tmp_path):
    wh = str(tmp_path / "wh")
    path = null_titles(tmp_path)
    rc, err, _ = job(spark, config(*LEXICAL), path, DATE, wh)
    assert rc == 2
    assert one_line(err).startswith(
        f"error: input {path} keeps 0 of its 6 rows (0%, 6 rejected: no_title_no_image 6); no succeeded run with a "
        "kept count is recorded before it: input.max_rejected_share=0.5 allows at most 50% rejected: refusing it"
    )
    assert statuses(wh) == ["failed"]
    for t in DATA_TABLES:
        assert not DeltaTable.is_deltatable(str(Path(wh) / t))  # no data table was created


# --------------------------------------------------------------------------------------
# 5. run ids: a run stopped between two table commits; tables of an earlier version;
#    the candidates table of a run that does not write it


@pytest.mark.slow
def test_run_stopped_between_two_table_commits_is_found_by_verify(cli_spark, baseline, tmp_path, monkeypatch, capsys):
    """A rerun of the same catalog stops after `matches` committed (the driver is interrupted: no
    runs row). Counts and contents agree with the runs row, so only the run ids tell the mix."""
    path, _ = baseline
    wh = copy_of(baseline, tmp_path)
    baseline_run = read_table(wh, "runs")["run_id"].iloc[0]
    assert set(read_table(wh, "clusters", DATE)["run_id"]) == {baseline_run}
    real_commit = DeltaSink.commit

    def commit(self, staged, **kwargs):
        if staged.table == "clusters":
            raise KeyboardInterrupt  # between the commits of matches and clusters
        return real_commit(self, staged, **kwargs)

    monkeypatch.setattr(DeltaSink, "commit", commit)
    rc, err, _ = job(cli_spark, config(*LEXICAL), path, DATE, wh)
    monkeypatch.undo()
    assert (rc, one_line(err)) == (1, "error: interrupted")
    assert statuses(wh) == ["succeeded"]  # the stopped run left no row
    new_run = read_table(wh, "matches", DATE)["run_id"].unique().tolist()
    assert len(new_run) == 1 and new_run[0] != baseline_run
    with pytest.raises(VerifyError) as e:
        verify_run(wh, DATE)
    problem = (
        f"the tables of {DATE} do not all come from its latest run {baseline_run} (the runs row checked above): "
        f"matches: run {new_run[0]} (6 rows), clusters: run {baseline_run} (6 rows), rejects: empty; a run stopped "
        f"between its commits? rerun {DATE}"
    )
    assert str(e.value) == f"run {DATE} under {wh} failed verification: {problem}"
    # the DAG's verify task: exit 1, that one line
    monkeypatch.setattr(dedup_cli, "build_spark", lambda _conf: cli_spark)
    capsys.readouterr()
    rc = dedup_cli.main(["--verify-only", "--run-date", DATE, "--warehouse", wh])
    assert (rc, one_line(capsys.readouterr().err)) == (1, f"error: {e.value}")


def earlier_version(spark, wh: str) -> None:
    """The baseline's data tables as the version before run_id wrote them (same rows, no run_id
    column), and that version's candidates table with rows for DATE and DATE2."""
    sink = DeltaSink(wh)
    for t in DATA_TABLES:
        paths, _ = snapshot_files(wh, t, DATE)
        old = {"rejects": "posting_id string, reason string, raw string"}.get(t)
        if paths:
            df = spark.read.parquet(*paths).drop("run_id")
            rows, old = df.collect(), df.schema
        else:
            rows = []
        shutil.rmtree(Path(wh) / t)
        sink.write(spark.createDataFrame(rows, old), t, DATE)
    cand = "posting_id string, candidate_id string, score float, signal_scores map<string,float>"
    for date in (DATE, DATE2):
        sink.write(spark.createDataFrame([("a1", "a2", 0.9, {"lexical": 0.9})], cand), "candidates", date)


@pytest.mark.slow
def test_tables_of_an_earlier_version_gain_run_id_and_a_rerun_empties_the_date_s_candidates(spark, baseline, tmp_path):
    """A warehouse of the version before run_id: verify accepts it (no run to check), the job
    accepts its tables and adds the column; the rerun with output.candidates off empties the
    date's candidates partition (another date's stays)."""
    path, _ = baseline
    wh = copy_of(baseline, tmp_path)
    earlier_version(spark, wh)
    for t in (*DATA_TABLES, "candidates"):
        assert "run_id" not in DeltaTable(str(Path(wh) / t)).schema().to_arrow().names
    verify_run(wh, DATE)  # every table of the date without run_id: written whole by that version

    rc, err, s = job(spark, config(*LEXICAL), path, DATE, wh)  # LEXICAL: output.candidates=false
    assert rc == 0, err
    assert read_table(wh, "candidates", DATE).empty  # the earlier run's candidates of the date are gone
    for t in (*DATA_TABLES, "candidates"):
        assert [f.name for f in DeltaTable(str(Path(wh) / t)).schema().fields][-1] == "run_id", t
    for t in ("matches", "clusters"):
        assert read_table(wh, t, DATE)["run_id"].tolist() == [s.run_id] * 6
    other = read_table(wh, "candidates", DATE2)
    assert other["posting_id"].tolist() == ["a1"] and other["run_id"].isna().all()  # read null: no file rewritten
    assert s.table_versions["candidates"] == table_version(wh, "candidates")
    assert verify_run(wh, DATE).ok


# --------------------------------------------------------------------------------------
# 6. one-line config errors; storage errors while reading the input


def test_yaml_syntax_error_is_one_line_and_exit_2(tmp_path, capsys):
    wh = str(tmp_path / "wh")
    for text, where in [("input:\n\tpartitions: 1\n", "line 2, column 1"), ("a: b: c\n", "line 1, column 5")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        rc = dedup_cli.main(["--conf", str(bad), "--input", "x.parquet", "--run-date", DATE, "--warehouse", wh])
        err = capsys.readouterr().err
        assert rc == 2
        assert err.endswith("\n") and err.count("\n") == 1, err
        assert err.startswith(f"error: config file {bad} is not valid YAML: {where}: "), err
    rc = dedup_cli.main(
        ["--conf", CONF[0], "--set", "input.partitions=[1,", "--input", "x", "--run-date", DATE, "--warehouse", wh]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: --set input.partitions: cannot parse"), err
    with pytest.raises(SystemExit) as e:  # argparse errors exit from the parser
        dedup_cli.main(["--verify-only", "--allow-empty", "--run-date", DATE, "--warehouse", wh])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == "error: --allow-empty does not go with --verify-only (see --help)\n"
    assert not Path(wh).exists()


def _java_error(spark, exception: str, message: str):
    """A real Py4JJavaError whose cause is a Java ``exception`` (a failed future rethrows it)."""
    jvm = spark.sparkContext._jvm
    exc = functools.reduce(getattr, exception.split("."), jvm)(message)
    try:
        jvm.java.util.concurrent.CompletableFuture.failedFuture(exc).get()
    except Exception as e:  # noqa: BLE001 - the error object is what we want
        return e
    raise AssertionError("the failed future did not raise")


def test_storage_failure_reading_the_input_exits_1_with_the_cause(spark, tmp_path, monkeypatch):
    wh = str(tmp_path / "wh")
    # a real one: the HDFS name node refuses the connection (no retries, so it fails at once)
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    keys = ("ipc.client.connect.max.retries", "ipc.client.connect.max.retries.on.timeouts")
    saved = {k: hadoop.get(k) for k in keys}
    for k in keys:
        hadoop.set(k, "0")
    try:
        rc, err, _ = job(spark, config(), "hdfs://127.0.0.1:1/listings/day.parquet", DATE, wh)
    finally:
        for k, v in saved.items():
            hadoop.unset(k) if v is None else hadoop.set(k, v)
    assert rc == StorageError.exit_code == 1
    line = one_line(err)
    assert line.startswith(
        "error: cannot read input at hdfs://127.0.0.1:1/listings/day.parquet: storage error (not the input's fault): "
    ), line
    assert "java.net.ConnectException" in line and "Connection refused" in line, line

    # credentials: the object store denies the read (Spark's error, as py4j raises it)
    denied = _java_error(spark, "java.nio.file.AccessDeniedException", "s3a://bucket/day.parquet: getFileStatus: 403")

    def read_parquet(spark, path):
        raise denied

    monkeypatch.setattr(reader, "_read_parquet", read_parquet)
    rc, err, _ = job(spark, config(), "s3a://bucket/day.parquet", DATE, wh)
    assert rc == 1
    line = one_line(err)
    assert line == (
        "error: cannot read input at s3a://bucket/day.parquet: storage error (not the input's fault): "
        "java.util.concurrent.ExecutionException: java.nio.file.AccessDeniedException: s3a://bucket/day.parquet: "
        "getFileStatus: 403"
    )
    assert statuses(wh) == ["failed", "failed"]  # the attempts are recorded


def test_read_errors_are_classified_by_their_cause():
    p = "/data/listings/day.parquet"
    assert isinstance(reader.read_error(p, FileNotFoundError(2, "No such file or directory", p)), InputError)
    e = reader.read_error(p, PermissionError(13, "Permission denied", p))
    assert isinstance(e, StorageError) and e.exit_code == 1
    assert (
        str(e)
        == f"cannot read input at {p}: storage error (not the input's fault): PermissionError: Permission denied ({p})"
    )
    e = reader.read_error(p, TimeoutError(110, "Connection timed out"))
    assert isinstance(e, StorageError) and "TimeoutError: Connection timed out" in str(e)
    # a file that is not Parquet stays the input's fault, even when its path looks like a storage error
    odd = "/data/Permission denied/day.parquet"
    e = reader.read_error(odd, RuntimeError(f"[FAILED_READ_FILE.CANNOT_READ_FILE_FOOTER] {odd} is not a Parquet file"))
    assert isinstance(e, InputError) and e.exit_code == 2
    assert str(e).startswith(f"cannot read input Parquet at {odd}: [FAILED_READ_FILE.CANNOT_READ_FILE_FOOTER]")


# --------------------------------------------------------------------------------------
# 7. an embeddings cache that cannot be read fails no run (issue 29 row 10)


@pytest.mark.slow
def test_a_corrupt_cache_file_is_recomputed_and_the_run_succeeds(spark, baseline, tmp_path):
    """A Parquet file of the ``embeddings`` table that the Delta log lists but that does not
    decode is skipped, the contents it held are recomputed, and the summary says so; the run's
    tables are the ones a readable cache gives (the baseline's, computed with the cache whole)."""
    path, wh = baseline[0], Path(copy_of(baseline, tmp_path))
    before = snapshot(str(wh), DATE)
    assert len(read_table(str(wh), "embeddings")) == len(CATALOG)  # the baseline filled the cache
    files = sorted((wh / "embeddings").rglob("*.parquet"))
    assert files
    files[0].write_bytes(b"PAR1" + b"\x00not parquet" * 50 + b"PAR1")  # listed by the log, does not decode

    rc, err, again = job(spark, config(*LEXICAL), path, DATE, str(wh))
    assert rc == 0, err  # the old code: exit 1 on FAILED_READ_FILE
    assert again.rows_in == again.rows_kept + again.rows_rejected == len(CATALOG)
    assert again.cache_warning.startswith(f"the embeddings cache at {wh.resolve() / 'embeddings'} could not be read (")
    text = again.as_text()
    assert "; WARNING: the embeddings cache at " in text and "recomputed" in text
    assert again.cache["lexical"]["computed"] >= 1  # what the corrupt file held
    assert again.cache["lexical"]["reused"] + again.cache["lexical"]["computed"] == len(CATALOG)
    for t, df in snapshot(str(wh), DATE).items():  # the same tables as with a readable cache
        drop = [c for c in ("run_id",) if c in df.columns]  # each run's own id
        pd.testing.assert_frame_equal(df.drop(columns=drop), before[t].drop(columns=drop))
