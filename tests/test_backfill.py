"""Backfill without Airflow: ``--from-date D1 --to-date D2`` runs each date's input partition in
order, each idempotent; a failed date stops the loop and leaves earlier dates committed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import dedup_main
from listing_dedup.backfill import date_range, input_for_date, run_backfill
from listing_dedup.errors import DedupError, InputError, SinkError
from listing_dedup.sink.delta import read_table
from listing_dedup.sink.verify import verify_run

SETS = [
    "match.threshold=0.8",
    "match.min2_threshold=0.8",
    "match.relative=false",  # the threshold rule alone
    "match.mutual_rank=0",
    "inb.thresholds=[]",
    "index.n_shards=2",
    "input.partitions=2",
    "spark.conf.spark.sql.shuffle.partitions=2",
    # the loop is under test, not the signals: the lexical signal alone, no pHash stage (no
    # images here), no candidates table, no explanation pass
    "embed.text.enabled=false",
    "phash.enabled=false",
    "output.candidates=false",
    "output.explanations=false",
]


def test_date_range_and_input_layout():
    assert date_range("2026-02-27", "2026-03-02") == ["2026-02-27", "2026-02-28", "2026-03-01", "2026-03-02"]
    assert date_range("2026-01-01", "2026-01-01") == ["2026-01-01"]
    with pytest.raises(InputError, match="before --from-date"):
        date_range("2026-01-02", "2026-01-01")
    with pytest.raises(InputError, match="YYYY-MM-DD"):
        date_range("2026-01-01", "2026-02-30")
    with pytest.raises(InputError, match="split the range"):
        date_range("2000-01-01", "2026-01-01")
    assert input_for_date("/data/listings/", "2026-01-05") == "/data/listings/run_date=2026-01-05"
    assert input_for_date("s3://b/l/{run_date}/x.parquet", "2026-01-05") == "s3://b/l/2026-01-05/x.parquet"


def test_loop_runs_in_order_and_stops_at_the_first_failure():
    calls = []

    def run(*, input_path, run_date, tag):
        calls.append((run_date, input_path, tag))
        if run_date == "2026-01-03":
            raise SinkError("disk full")
        return run_date.upper()

    done = []
    with pytest.raises(SinkError) as e:
        run_backfill(
            from_date="2026-01-01",
            to_date="2026-01-05",
            input_path="/in",
            run=run,
            on_done=lambda d, r: done.append((d, r)),
            tag="x",
        )
    assert calls == [(f"2026-01-0{i}", f"/in/run_date=2026-01-0{i}", "x") for i in (1, 2, 3)]
    assert done == [("2026-01-01", "2026-01-01"), ("2026-01-02", "2026-01-02")]
    assert str(e.value) == (
        "backfill stopped at 2026-01-03: disk full; 2026-01-01..2026-01-02 (2 dates) stay committed; "
        "resume with --from-date 2026-01-03"
    )
    assert e.value.exit_code == 1

    def boom(**_):
        raise ValueError("bug")

    with pytest.raises(DedupError, match="stopped at 2026-01-01: bug; no date was committed"):
        run_backfill(from_date="2026-01-01", to_date="2026-01-02", input_path="/in", run=boom)


def _catalog(path: Path, rows: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["posting_id", "title"]).to_parquet(path, index=False)


cli = dedup_main


DAY1 = [("a1", "Rice cooker digital Miyako 1.8 liter"), ("a2", "MIYAKO RICE COOKER DIGITAL 1.8 LITER"),
        ("z1", "Susu UHT coklat 200ml")]  # fmt: skip
DAY2 = [("b1", "Mouse wireless Logitech M331 silent click"), ("b2", "Logitech M331 silent click wireless mouse"),
        ("b3", "Hijab segi empat voal motif bunga"), ("b3", "duplicate id")]  # fmt: skip


@pytest.mark.slow
def test_cli_backfill_commits_dates_in_order_and_stops_at_a_missing_partition(cli_spark, tmp_path, capsys):
    root, wh = tmp_path / "listings", str(tmp_path / "wh")
    _catalog(root / "run_date=2026-01-01" / "part-0.parquet", DAY1)
    _catalog(root / "run_date=2026-01-02" / "part-0.parquet", DAY2)
    # 2026-01-03 has no partition: the loop must stop there, 2026-01-04 must never run
    sets = [x for s in SETS for x in ("--set", s)]
    rc, out, err = cli(capsys, "--conf", "conf/local.yaml", "--input", str(root), "--from-date", "2026-01-01",
                       "--to-date", "2026-01-04", "--warehouse", wh, *sets)  # fmt: skip
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last == (
        f"error: backfill stopped at 2026-01-03: input path does not exist: {root}/run_date=2026-01-03; "
        "2026-01-01..2026-01-02 (2 dates) stay committed; resume with --from-date 2026-01-03"
    )
    assert out.count("listing-dedup run ") == 2  # one summary per committed date

    clusters = read_table(wh, "clusters")
    got = {(d, p): g for d, p, g in zip(clusters["run_date"], clusters["posting_id"], clusters["group_id"])}
    assert got == {
        ("2026-01-01", "a1"): "a1", ("2026-01-01", "a2"): "a1", ("2026-01-01", "z1"): "z1",
        ("2026-01-02", "b1"): "b1", ("2026-01-02", "b2"): "b1", ("2026-01-02", "b3"): "b3",
    }  # fmt: skip
    runs = read_table(wh, "runs").sort_values("started_at")
    # one row per attempt, in date order; the missing date failed before Spark read anything
    assert list(zip(runs["run_date"], runs["status"])) == [
        ("2026-01-01", "succeeded"), ("2026-01-02", "succeeded"), ("2026-01-03", "failed"),
    ]  # fmt: skip
    assert verify_run(wh, "2026-01-01").rows_kept == 3
    assert verify_run(wh, "2026-01-02").rows_rejected == 1

    # the committed dates verify through the CLI too (what the DAG's verify task runs)
    rc, out, err = cli(capsys, "--verify-only", "--run-date", "2026-01-02", "--warehouse", wh)
    assert rc == 0, err[-2000:]
    assert out.strip() == "verified 2026-01-02: 4 rows in, 3 kept, 1 rejected, 1 groups"
    rc, out, err = cli(capsys, "--verify-only", "--run-date", "2026-01-03", "--warehouse", wh)
    assert rc == 1
    assert "latest attempt for 2026-01-03 has status failed" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--from-date", "2026-01-02"], "--from-date needs --to-date"),
        (["--from-date", "2026-01-02", "--to-date", "2026-01-01"], "is before --from-date"),
        (["--run-date", "2026-01-01", "--from-date", "2026-01-01", "--to-date", "2026-01-02"], "not allowed with"),
        (["--from-date", "2026-01-01", "--to-date", "2026-02-31"], "backfill dates must be YYYY-MM-DD"),
    ],
)
def test_cli_backfill_bad_arguments_exit_2(tmp_path, capsys, args, message):
    rc, _, err = cli(capsys, "--conf", "conf/local.yaml", "--input", str(tmp_path), "--warehouse",
                     str(tmp_path / "wh"), *args)  # fmt: skip
    assert rc == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
