"""Delta sink: executors write Parquet, the driver commits one Delta transaction per table."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from listing_dedup.errors import InputError, SinkError
from listing_dedup.sink.delta import CommitResult, DeltaSink, read_table, table_version, vacuum
from listing_dedup.sink.schemas import FileStats, spark_to_arrow_schema
from pyspark.sql import functions as F
from pyspark.sql import types as T

UTC = dt.timezone.utc  # noqa: UP017 (python 3.10)
D1, D2 = "2024-05-01", "2024-05-02"

SCHEMA = T.StructType(
    [
        T.StructField("posting_id", T.StringType(), False),
        T.StructField("n", T.LongType()),
        T.StructField("score", T.DoubleType()),
        T.StructField("tags", T.ArrayType(T.StringType(), False)),
        T.StructField("vec", T.ArrayType(T.FloatType())),
        T.StructField("attrs", T.MapType(T.StringType(), T.StringType())),
        T.StructField("meta", T.StringType()),  # a JSON string column
        T.StructField("ts", T.TimestampType()),
    ]
)
COLUMNS = [f.name for f in SCHEMA.fields]


def _rows(prefix: str, count: int) -> list[tuple]:
    out = []
    for i in range(count):
        out.append(
            (
                f"{prefix}{i}",
                10**12 + i,
                0.25 * i if i != 2 else None,
                [f"t{i}", "x"] if i % 2 == 0 else [],
                [0.5, -1.25, float(i)],
                {"k": f"v{i}"} if i != 1 else None,
                json.dumps({"i": i, "s": "é"}),
                dt.datetime(2024, 5, 1, 12, 34, 56, 123456 + i, tzinfo=UTC) if i != 3 else None,
            )
        )
    return out


def _df(spark, prefix: str, count: int, partitions: int = 3):
    return spark.createDataFrame(_rows(prefix, count), SCHEMA).repartition(partitions)


def _nonempty_partitions(df) -> int:
    return sum(1 for n in df.rdd.glom().map(len).collect() if n)


def _ids(pdf) -> list[str]:
    return sorted(pdf["posting_id"].tolist())


def _parquet_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.parquet")}


def _active_files(uri: str) -> set[str]:
    return {p.replace(f"file://{uri}/", "").replace(f"{uri}/", "") for p in DeltaTable(uri).file_uris()}


# --------------------------------------------------------------------------------------


def test_spark_to_arrow_schema_types():
    schema = spark_to_arrow_schema(SCHEMA)
    assert schema.field("posting_id").type == pa.string()
    assert schema.field("posting_id").nullable  # everything is nullable in the table
    assert schema.field("n").type == pa.int64()
    assert schema.field("score").type == pa.float64()
    assert schema.field("tags").type == pa.list_(pa.field("element", pa.string()))
    assert schema.field("vec").type == pa.list_(pa.field("element", pa.float32()))
    assert schema.field("attrs").type == pa.map_(pa.string(), pa.string())
    assert schema.field("ts").type == pa.timestamp("us", tz="UTC")


def test_stats_json_exact():
    schema = pa.schema(
        [
            ("i", pa.int64()),
            ("f", pa.float64()),
            ("s", pa.string()),
            ("t", pa.timestamp("us", tz="UTC")),
            ("l", pa.list_(pa.string())),
            ("nan", pa.float64()),
        ]
    )
    acc = FileStats(schema)
    t0 = dt.datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    acc.update(
        pa.table(
            {
                "i": [3, None],
                "f": [1.5, -2.0],
                "s": ["b", "y" * 40],
                "t": [t0, None],
                "l": [["a"], None],
                "nan": [1.0, float("nan")],
            },
            schema=schema,
        )
    )
    acc.update(
        pa.table(
            {"i": [7], "f": [None], "s": ["a" * 40], "t": [t0 + dt.timedelta(seconds=1)], "l": [[]], "nan": [0.0]},
            schema=schema,
        )
    )
    assert json.loads(acc.to_json()) == {
        "numRecords": 3,
        "minValues": {"i": 3, "f": -2.0, "s": "a" * 32, "t": "2024-01-01T00:00:00.123Z"},
        # max timestamp rounds up to the millisecond; a string max longer than 32 is left out
        "maxValues": {"i": 7, "f": 1.5, "t": "2024-01-01T00:00:01.124Z"},
        "nullCount": {"i": 1, "f": 1, "s": 0, "t": 1, "l": 1, "nan": 0},
    }


def test_write_and_read_back_values(spark, tmp_path):
    sink = DeltaSink(str(tmp_path))
    df = _df(spark, "p", 5, partitions=8)  # 8 partitions for 5 rows: some are empty
    expected_files = _nonempty_partitions(df)
    res = sink.write(df, "matches", D1)
    assert res == CommitResult("matches", 0, expected_files, 5)

    got = read_table(str(tmp_path), "matches", D1).sort_values("posting_id").reset_index(drop=True)
    assert list(got.columns) == COLUMNS + ["run_date"]
    assert got["posting_id"].tolist() == [f"p{i}" for i in range(5)]
    assert str(got["n"].dtype) == "int64"
    assert got["n"].tolist() == [10**12 + i for i in range(5)]
    assert [None if pd.isna(x) else x for x in got["score"].tolist()] == [0.0, 0.25, None, 0.75, 1.0]
    assert [list(x) for x in got["tags"]] == [["t0", "x"], [], ["t2", "x"], [], ["t4", "x"]]
    assert [list(map(float, x)) for x in got["vec"]] == [[0.5, -1.25, float(i)] for i in range(5)]
    assert [dict(x) if x is not None else None for x in got["attrs"]] == [
        {"k": "v0"},
        None,
        {"k": "v2"},
        {"k": "v3"},
        {"k": "v4"},
    ]
    assert [json.loads(x) for x in got["meta"]] == [{"i": i, "s": "é"} for i in range(5)]
    assert str(got["ts"].dtype) == "datetime64[us, UTC]"
    ts = got["ts"].tolist()
    assert pd.isna(ts[3])  # NaT
    assert [t.to_pydatetime() for i, t in enumerate(ts) if i != 3] == [
        dt.datetime(2024, 5, 1, 12, 34, 56, 123456 + i, tzinfo=UTC) for i in (0, 1, 2, 4)
    ]
    assert set(got["run_date"]) == {D1}

    # Hive-style layout; the data files do not hold the partition column
    root = tmp_path / "matches"
    files = _parquet_files(root)
    assert len(files) == expected_files
    assert all(f.startswith(f"run_date={D1}/part-") for f in files)
    for f in files:
        assert "run_date" not in pq.read_schema(root / f).names
    assert _active_files(str(root)) == files
    # per-file stats made it into the log
    actions = pa.table(DeltaTable(str(root)).get_add_actions(flatten=True))
    assert sum(actions.column("num_records").to_pylist()) == 5
    assert min(actions.column("min.n").to_pylist()) == 10**12
    assert max(actions.column("max.n").to_pylist()) == 10**12 + 4
    assert sum(actions.column("null_count.score").to_pylist()) == 1

    only = read_table(str(tmp_path), "matches", D1, columns=["posting_id", "n"])
    assert list(only.columns) == ["posting_id", "n"]


def test_timestamps_are_utc_instants_whatever_the_session_zone(spark, tmp_path):
    old = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        instant = dt.datetime(2024, 5, 1, 3, 0, 0, 7, tzinfo=UTC)
        df = spark.createDataFrame([("a", instant)], "posting_id string, ts timestamp")
        DeltaSink(str(tmp_path)).write(df, "runs", D1)
    finally:
        spark.conf.set("spark.sql.session.timeZone", old)
    got = read_table(str(tmp_path), "runs", D1)
    assert [t.to_pydatetime() for t in got["ts"]] == [instant]


def test_rerun_replaces_partition_and_other_dates_stay(spark, tmp_path):
    wh = str(tmp_path)
    sink = DeltaSink(wh)
    assert sink.write(_df(spark, "a", 4), "clusters", D1).version == 0
    assert sink.write(_df(spark, "b", 3), "clusters", D2).version == 1
    first_d1_files = {f for f in _parquet_files(tmp_path / "clusters") if f.startswith(f"run_date={D1}")}

    res = sink.write(_df(spark, "c", 2), "clusters", D1)  # rerun of D1 with new content
    assert (res.version, res.rows) == (2, 2)
    assert table_version(wh, "clusters") == 2
    assert _ids(read_table(wh, "clusters", D1)) == ["c0", "c1"]
    assert _ids(read_table(wh, "clusters", D2)) == ["b0", "b1", "b2"]
    everything = read_table(wh, "clusters")
    assert sorted(zip(everything["run_date"], everything["posting_id"])) == [
        (D1, "c0"),
        (D1, "c1"),
        (D2, "b0"),
        (D2, "b1"),
        (D2, "b2"),
    ]
    active = _active_files(str(tmp_path / "clusters"))
    assert not (active & first_d1_files)  # the old D1 files were removed from the table

    # the same rerun again: still no duplicates, one more version
    assert sink.write(_df(spark, "c", 2), "clusters", D1).version == 3
    assert _ids(read_table(wh, "clusters", D1)) == ["c0", "c1"]


def test_append_mode_accumulates(spark, tmp_path):
    wh = str(tmp_path)
    sink = DeltaSink(wh)
    r1 = sink.write(_df(spark, "r", 1, partitions=1), "runs", D1, mode="append")
    r2 = sink.write(_df(spark, "s", 2, partitions=1), "runs", D1, mode="append")
    assert (r1.version, r2.version) == (0, 1)
    assert _ids(read_table(wh, "runs", D1)) == ["r0", "s0", "s1"]
    with pytest.raises(ValueError):
        sink.write(_df(spark, "r", 1), "runs", D1, mode="upsert")


def test_empty_dataframe_empties_partition(spark, tmp_path):
    wh = str(tmp_path)
    sink = DeltaSink(wh)
    sink.write(_df(spark, "a", 3), "rejects", D1)
    sink.write(_df(spark, "b", 2), "rejects", D2)
    empty = spark.createDataFrame([], SCHEMA)
    res = sink.write(empty, "rejects", D1)
    assert res == CommitResult("rejects", 2, 0, 0)
    got = read_table(wh, "rejects", D1)
    assert len(got) == 0
    assert list(got.columns) == COLUMNS + ["run_date"]
    assert _ids(read_table(wh, "rejects", D2)) == ["b0", "b1"]

    # an empty first write still creates the table
    res = sink.write(empty, "fresh", D1)
    assert res == CommitResult("fresh", 0, 0, 0)
    assert list(read_table(wh, "fresh", D1).columns) == COLUMNS + ["run_date"]


def test_crash_before_commit_leaves_orphans_that_vacuum_removes(spark, tmp_path):
    wh = str(tmp_path)
    root = tmp_path / "matches"
    sink = DeltaSink(wh)
    sink.write(_df(spark, "ok", 3), "matches", D1)
    committed = _parquet_files(root)

    with pytest.raises(SinkError, match="crash_before_commit"):
        sink.write(_df(spark, "bad", 4), "matches", D1, crash_before_commit=True)
    assert table_version(wh, "matches") == 0
    assert _ids(read_table(wh, "matches", D1)) == ["ok0", "ok1", "ok2"]
    orphans = _parquet_files(root) - committed
    assert len(orphans) == 3  # one file per non-empty partition of the crashed write

    # the default retention (a week) keeps them: young uncommitted files may be a run in flight
    assert vacuum(wh, "matches") == []
    assert _parquet_files(root) == committed | orphans
    # the 0-hour form deletes every unreferenced file, staged ones too: only when asked for it
    with pytest.raises(ValueError, match="allow_in_flight_deletion"):
        vacuum(wh, "matches", retention_hours=0)
    with pytest.raises(ValueError, match="allow_in_flight_deletion"):
        vacuum(wh, "matches", retention_hours=24)
    assert _parquet_files(root) == committed | orphans
    zero = {"retention_hours": 0, "allow_in_flight_deletion": True}
    assert sorted(vacuum(wh, "matches", dry_run=True, **zero)) == sorted(orphans)
    assert _parquet_files(root) == committed | orphans  # dry run deletes nothing
    assert sorted(vacuum(wh, "matches", **zero)) == sorted(orphans)
    assert _parquet_files(root) == committed
    assert _ids(read_table(wh, "matches", D1)) == ["ok0", "ok1", "ok2"]


def test_default_vacuum_removes_only_orphans_older_than_a_week(spark, tmp_path):
    wh = str(tmp_path)
    root = tmp_path / "matches"
    sink = DeltaSink(wh)
    sink.write(_df(spark, "ok", 2, partitions=1), "matches", D1)
    committed = _parquet_files(root)
    old = sink.stage(_df(spark, "old", 2, partitions=1), "matches", D1)  # crashed a while ago
    fresh = sink.stage(_df(spark, "new", 2, partitions=1), "matches", D2)  # a run still in flight
    eight_days_ago = time.time() - 8 * 24 * 3600
    for f in old.files:
        os.utime(root / f.path, (eight_days_ago, eight_days_ago))
    assert vacuum(wh, "matches") == sorted(f.path for f in old.files)
    assert _parquet_files(root) == committed | {f.path for f in fresh.files}
    # the in-flight run commits afterwards and its files are all there
    before = table_version(wh, "matches")  # vacuum logs its own commits
    assert sink.commit(fresh).version == before + 1
    assert _ids(read_table(wh, "matches", D2)) == ["new0", "new1"]


def _copy_staged(template, k: int):
    """Another write of the same rows: copies of ``template``'s staged files under new names."""
    from pyarrow import fs

    local = fs.LocalFileSystem()
    files = []
    for f in template.files:
        new = f.path.rsplit("/", 1)[0] + f"/part-copy{k}-{uuid.uuid4()}.parquet"
        local.copy_file(template.table_uri + "/" + f.path, template.table_uri + "/" + new)
        files.append(dataclasses.replace(f, path=new))
    return dataclasses.replace(template, files=tuple(files))


def _log_operations(table_root: Path) -> list[str]:
    """The commitInfo operation of every commit in the Delta log, by version (read from the files)."""
    out = []
    for f in sorted((table_root / "_delta_log").glob("*.json")):
        infos = [json.loads(line)["commitInfo"] for line in f.read_text().splitlines() if '"commitInfo"' in line]
        out.append(infos[0]["operation"])
    return out


def test_concurrent_commits_of_different_dates_overlap_and_all_land(spark, tmp_path, monkeypatch):
    """Two writers (threads) commit three overwrites each of their own date into one fresh table.
    A barrier holds each writer at its first table create and at its first write transaction
    until the other one is there too, so the commits really overlap (whatever the machine's
    load): both try to create the table, and both commit from the same snapshot."""
    import deltalake.transaction as dtx

    wh = str(tmp_path / "wh")
    sink = DeltaSink(wh, max_attempts=30, backoff_s=0.02)
    copies = 3  # commits per writer
    templates = {
        d: sink.stage(_df(spark, f"{d[-1]}_", 2 + i, partitions=1), "matches", d) for i, d in enumerate((D1, D2))
    }
    staged = {d: [_copy_staged(t, k) for k in range(copies)] for d, t in templates.items()}

    barrier = threading.Barrier(2, timeout=120)  # a hang guard, not a timing condition
    reached: dict[str, list[tuple[str, int | None]]] = {"create": [], "write": []}
    passed = threading.local()

    def gate(kind: str, snapshot: int | None) -> None:
        reached[kind].append((threading.current_thread().name, snapshot))
        if not getattr(passed, kind, False):
            setattr(passed, kind, True)
            barrier.wait()

    real_create, real_write = dtx.create_table_with_add_actions, DeltaTable.create_write_transaction

    def create(*args, **kwargs):
        gate("create", None)
        return real_create(*args, **kwargs)

    def write(self, *args, **kwargs):
        gate("write", self.version())  # the snapshot this transaction was built on
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(dtx, "create_table_with_add_actions", create)
    monkeypatch.setattr(DeltaTable, "create_write_transaction", write)
    versions: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def writer(date: str) -> None:
        try:
            versions[date] = [sink.commit(one).version for one in staged[date]]
        except BaseException as e:  # noqa: BLE001 - re-raised by the test thread below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=writer, args=(d,), name=d) for d in staged]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.undo()
    if errors:
        raise errors[0]

    # they overlapped: both tried to create the table ...
    assert sorted(name for name, _ in reached["create"]) == [D1, D2]
    # ... and each writer's first write transaction was built on the same snapshot as the other's
    first_write = {}
    for name, snapshot in reached["write"]:
        first_write.setdefault(name, snapshot)
    assert first_write == {D1: 0, D2: 0}
    # yet exactly one CREATE TABLE is in the log, and every commit got its own version
    assert _log_operations(Path(wh) / "matches") == ["CREATE TABLE"] + ["WRITE"] * (2 * copies - 1)
    assert sorted(versions[D1] + versions[D2]) == list(range(2 * copies))
    assert table_version(wh, "matches") == 2 * copies - 1
    # each date holds exactly one copy of its rows (each overwrite replaced the previous one)
    assert _ids(read_table(wh, "matches", D1)) == ["1_0", "1_1"]
    assert _ids(read_table(wh, "matches", D2)) == ["2_0", "2_1", "2_2"]
    assert len(_active_files(str(Path(wh) / "matches"))) == 2


def test_lost_create_race_commits_into_the_existing_table(spark, tmp_path, monkeypatch):
    wh = str(tmp_path)
    sink = DeltaSink(wh)
    sink.write(_df(spark, "a", 2), "matches", D1)
    staged = sink.stage(_df(spark, "b", 3), "matches", D2)
    # the table appears between our existence check and our create: create fails, we commit
    real = DeltaTable.is_deltatable
    calls = []

    def stale_once(uri, storage_options=None):
        calls.append(uri)
        return False if len(calls) == 1 else real(uri, storage_options)

    monkeypatch.setattr(DeltaTable, "is_deltatable", staticmethod(stale_once))
    assert sink.commit(staged).version == 1
    assert len(calls) >= 2
    monkeypatch.undo()
    assert _ids(read_table(wh, "matches", D1)) == ["a0", "a1"]
    assert _ids(read_table(wh, "matches", D2)) == ["b0", "b1", "b2"]


def test_errors(spark, tmp_path):
    wh = str(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        read_table(wh, "matches", D1)
    with pytest.raises(InputError, match="does not exist"):
        vacuum(wh, "matches")
    sink = DeltaSink(wh)
    with pytest.raises(InputError, match="run_date"):
        sink.write(_df(spark, "a", 1), "matches", "2024-13-01")
    with pytest.raises(InputError, match="partition column"):
        sink.write(_df(spark, "a", 1).withColumn("run_date", F.col("posting_id")), "matches", D1)
    sink.write(_df(spark, "a", 2), "matches", D1)
    with pytest.raises(InputError, match="no column"):
        read_table(wh, "matches", D1, columns=["nope"])
    # a different schema is refused instead of silently changing the table
    with pytest.raises(SinkError, match="different schema"):
        sink.write(_df(spark, "a", 2).drop("meta"), "matches", D2)
    assert table_version(wh, "matches") == 0


def test_check_refuses_every_incompatible_table_before_anything_commits(spark, tmp_path):
    from deltalake import write_deltalake

    wh = str(tmp_path)
    sink = DeltaSink(wh)
    sink.write(_df(spark, "a", 2), "matches", D1)
    sink.write(_df(spark, "a", 2).drop("meta").withColumn("n", F.col("n").cast("string")), "clusters", D1)
    write_deltalake(
        str(tmp_path / "rejects"), pa.table({"posting_id": ["x"], "run_date": [D1]}), partition_by=["posting_id"]
    )
    matches = sink.stage(_df(spark, "b", 3), "matches", D2)
    fresh = sink.stage(_df(spark, "b", 1), "fresh", D2)  # no table yet: the commit creates it
    sink.check([matches, fresh])  # compatible: nothing to say

    clusters = sink.stage(_df(spark, "b", 3), "clusters", D2)
    with pytest.raises(SinkError) as e:
        sink.check([matches, clusters, fresh])
    msg = str(e.value)
    assert msg.startswith("table 'clusters' has a different schema than this write")
    assert "not in the table: meta" in msg and "column 'n' is string in the table, long in this write" in msg
    assert "\n" not in msg
    rejects = sink.stage(spark.createDataFrame([("y",)], "posting_id string"), "rejects", D2)
    with pytest.raises(SinkError, match=r"table 'rejects' is partitioned by \['posting_id'\], expected \['run_date'\]"):
        sink.check([matches, rejects])
    # checking commits nothing
    assert (table_version(wh, "matches"), table_version(wh, "clusters")) == (0, 0)
    assert not DeltaTable.is_deltatable(str(tmp_path / "fresh"))


def test_injected_write_failure_is_retried_and_commits_once(spark, tmp_path):
    """testing.fail_once_stage=write: partition 0's first attempt writes its file and dies; the
    retry writes another file; only the reported files are committed, the orphan is vacuumed."""
    df = spark.createDataFrame(pd.DataFrame({"posting_id": [f"p{i}" for i in range(20)], "n": list(range(20))}))
    df = df.repartition(2)
    sink = DeltaSink(str(tmp_path))
    staged = sink.stage(df, "t", "2026-01-01", fail_stage="write")
    assert staged.rows == 20
    sink.commit(staged)
    got = read_table(str(tmp_path), "t", "2026-01-01").sort_values("n")
    assert got["n"].tolist() == list(range(20))
    on_disk = list((tmp_path / "t" / "run_date=2026-01-01").glob("*.parquet"))
    assert len(on_disk) == len(staged.files) + 1  # the failed attempt's file is an orphan ...
    vacuum(str(tmp_path), "t", retention_hours=0, allow_in_flight_deletion=True)
    assert len(list((tmp_path / "t" / "run_date=2026-01-01").glob("*.parquet"))) == len(staged.files)  # ... until now


def test_a_table_of_an_earlier_version_gains_the_added_column_at_its_next_commit(spark, tmp_path):
    """A write that names ``run_id`` as an added column: the table an earlier version created
    without it passes the check, gains it (nullable, metadata only) and then takes the write;
    the other partition's files are not rewritten and read null there. An undeclared new column
    is still refused."""
    wh = str(tmp_path)
    sink = DeltaSink(wh)
    sink.write(_df(spark, "a", 2), "matches", D1)
    sink.write(_df(spark, "o", 3), "matches", D2)
    old_files = set(DeltaTable(sink.table_uri("matches")).file_uris())
    new = _df(spark, "b", 3).withColumn("run_id", F.lit("r2"))
    with pytest.raises(SinkError, match="not in the table: run_id"):
        sink.check([sink.stage(new, "matches", D1)])  # undeclared: refused as before
    staged = sink.stage(new, "matches", D1, added_columns=("run_id",))
    sink.check([staged])  # declared: accepted, nothing committed by the check
    assert table_version(wh, "matches") == 1
    res = sink.commit(staged)
    assert res.version == 3  # 2: the column added, 3: the partition overwritten
    assert [f.name for f in DeltaTable(sink.table_uri("matches")).schema().fields] == [*COLUMNS, "run_date", "run_id"]
    got = read_table(wh, "matches").sort_values("posting_id")
    assert got["posting_id"].tolist() == ["b0", "b1", "b2", "o0", "o1", "o2"]
    assert got["run_id"].tolist()[:3] == ["r2"] * 3 and got["run_id"].iloc[3:].isna().all()
    assert old_files - set(DeltaTable(sink.table_uri("matches")).file_uris()) == {
        u for u in old_files if f"run_date={D1}" in u
    }  # D2's files are the same files
    # the next write (the column is there now) commits once; a write without the column is refused
    assert sink.commit(sink.stage(new, "matches", D2, added_columns=("run_id",))).version == 4
    with pytest.raises(SinkError, match="not in this write: run_id"):
        sink.check([sink.stage(_df(spark, "c", 1), "matches", D1)])


def test_an_empty_staged_write_empties_the_partition(spark, tmp_path):
    wh = str(tmp_path)
    sink = DeltaSink(wh)
    sink.write(_df(spark, "a", 2), "clusters", D1)
    sink.write(_df(spark, "b", 3), "clusters", D2)
    schema = spark_to_arrow_schema(SCHEMA)
    empty = sink.stage_empty("clusters", D1, schema)
    assert (empty.files, empty.rows, empty.schema) == ((), 0, schema)
    sink.check([empty])
    assert sink.commit(empty).version == 2
    assert read_table(wh, "clusters", D1).empty
    assert read_table(wh, "clusters", D2)["posting_id"].tolist() == ["b0", "b1", "b2"]
    assert sink.table_exists("clusters") and not sink.table_exists("nothing")
