"""Delta Lake output: executors write Parquet files, the driver commits them.

The job's output tables (``matches``, ``clusters``, ``rejects``, ``runs``) live under one
warehouse folder (or URI), each partitioned by a string column ``run_date`` (``YYYY-MM-DD``).
The Delta Spark jars are not used; tables are real Delta tables committed with the
``deltalake`` (delta-rs) package. A write has two steps:

1. :meth:`DeltaSink.stage` runs a ``mapInArrow`` function on the executors. Every non-empty
   Spark partition becomes one Parquet file
   ``<warehouse>/<table>/run_date=<date>/part-<partition>-<uuid>.parquet`` (Hive-style path;
   the file itself does not hold ``run_date``, as Delta expects). Each task yields one small
   row per file (relative path, size, row count, Delta stats JSON) and the driver collects
   them into a :class:`StagedWrite`. Nothing is visible in the table yet: staged files that
   are never committed are orphans that :func:`vacuum` removes.
2. :meth:`DeltaSink.commit` adds those files in ONE Delta transaction. The default mode,
   ``overwrite_partition``, replaces only the ``run_date`` partition (a rerun of a date is
   idempotent, other dates are untouched); ``append`` adds to it (the ``runs`` audit table).
   The first commit creates the table (schema from the staged Arrow schema plus ``run_date``).
   Commit conflicts with concurrent writers (delta-rs reports an overwrite of another
   partition as a conflict) and the race of two creators are retried with a fresh snapshot.

Only the driver talks to the Delta log, so :meth:`DeltaSink.commit` needs no Spark and a
:class:`StagedWrite` can be pickled to another process and committed there.

Types: Spark schemas are converted with :func:`spark_to_arrow_schema` (timestamps become
UTC microsecond timestamps, every field nullable, no field metadata), so strings, integers,
doubles, arrays, maps, structs and timestamps survive a write and :func:`read_table`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from listing_dedup.errors import InputError, SinkError

log = logging.getLogger(__name__)

PARTITION_COLUMN = "run_date"
MODES = ("overwrite_partition", "append")

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TABLE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_STAT_STRING_CHARS = 32  # like Delta Spark: string min/max stats are prefixes of this length
_COMMIT_ID_KEY = "listing_dedup.commitId"
_FILE_ROW_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("rows", pa.int64()),
        pa.field("stats", pa.string()),
        pa.field("mtime_ms", pa.int64()),
    ]
)


# --------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class StagedFile:
    """One Parquet file written by an executor, not yet committed."""

    path: str  # relative to the table root, e.g. "run_date=2024-05-01/part-00003-<uuid>.parquet"
    size: int  # bytes
    rows: int
    stats: str  # Delta stats JSON (numRecords, minValues, maxValues, nullCount)
    mtime_ms: int  # when the executor finished the file (ms since the epoch)


@dataclass(frozen=True)
class StagedWrite:
    """What :meth:`DeltaSink.stage` wrote and :meth:`DeltaSink.commit` will commit.

    Picklable and Spark-free, so it can be committed from any process."""

    table: str
    table_uri: str
    run_date: str
    schema: pa.Schema  # data columns only (no run_date), as written to the files
    files: tuple[StagedFile, ...]
    storage_options: dict[str, str] | None = None

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


@dataclass(frozen=True)
class CommitResult:
    table: str
    version: int  # the Delta table version this commit created
    files: int  # data files added
    rows: int  # rows added


# --------------------------------------------------------------------------------------
# schemas


def _relax_type(t: pa.DataType) -> pa.DataType:
    """``t`` with every nested field nullable (map keys excepted) and no field metadata."""
    if pa.types.is_map(t):
        return pa.map_(_relax_type(t.key_type), pa.field("value", _relax_type(t.item_type), nullable=True))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return pa.list_(pa.field("element", _relax_type(t.value_type), nullable=True))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _relax_type(f.type), nullable=True) for f in t])
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_timestamp(t):
        # Delta stores microseconds; tz-aware -> Delta ``timestamp`` (UTC), naive -> ``timestamp_ntz``
        return pa.timestamp("us", tz="UTC" if t.tz is not None else None)
    return t


def normalize_arrow_schema(schema: pa.Schema) -> pa.Schema:
    """The schema the files are written with: all fields nullable, no metadata, UTC µs
    timestamps, plain (not large) strings and lists."""
    return pa.schema([pa.field(f.name, _relax_type(f.type), nullable=True) for f in schema])


def spark_to_arrow_schema(spark_schema: Any) -> pa.Schema:
    """Convert a Spark ``StructType`` to the Arrow schema the Delta files are written with.

    ``TimestampType`` becomes ``timestamp[us, tz=UTC]`` (Delta ``timestamp``);
    ``TimestampNTZType`` becomes a naive timestamp (Delta ``timestamp_ntz``, which needs the
    table feature of that name). All fields are nullable."""
    from pyspark.sql.pandas.types import to_arrow_schema

    try:
        arrow = to_arrow_schema(spark_schema, timezone="UTC")
    except TypeError as e:  # unsupported Spark type
        raise InputError(f"cannot convert Spark schema to Arrow: {e}") from e
    return normalize_arrow_schema(arrow)


def table_arrow_schema(data_schema: pa.Schema) -> pa.Schema:
    """The full table schema: the data columns plus the ``run_date`` partition column."""
    return normalize_arrow_schema(data_schema).append(pa.field(PARTITION_COLUMN, pa.string(), nullable=True))


def _delta_schema(data_schema: pa.Schema) -> Any:
    from deltalake import Schema as DeltaSchema

    return DeltaSchema.from_arrow(table_arrow_schema(data_schema))


# --------------------------------------------------------------------------------------
# paths and checks


def _has_scheme(uri: str) -> bool:
    return "://" in uri


def table_uri(warehouse: str, table: str) -> str:
    """``<warehouse>/<table>``; a local warehouse path is made absolute."""
    _check_table(table)
    warehouse = str(warehouse)
    if _has_scheme(warehouse):
        return warehouse.rstrip("/") + "/" + table
    return os.path.join(os.path.abspath(warehouse), table)


def _check_table(table: str) -> None:
    if not isinstance(table, str) or not _TABLE_RE.match(table):
        raise InputError(f"invalid table name {table!r}: use letters, digits and _ . -")


def _check_run_date(run_date: str) -> None:
    ok = isinstance(run_date, str) and bool(_DATE_RE.match(run_date))
    if ok:
        try:
            _dt.date.fromisoformat(run_date)
        except ValueError:
            ok = False
    if not ok:
        raise InputError(f"run_date must be a date 'YYYY-MM-DD', got {run_date!r}")


# --------------------------------------------------------------------------------------
# Delta file statistics (computed on the executors)


def _ms_iso(ms: int) -> str:
    t = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(milliseconds=ms)  # noqa: UP017 (3.10)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _StatsAccumulator:
    """Delta per-file stats over the batches of one file.

    ``nullCount`` for every top-level non-struct column; ``minValues``/``maxValues`` for
    integers, finite floats, strings (min cut to 32 characters, max left out when longer),
    dates and timestamps (milliseconds; min rounded down, max rounded up, so the bounds
    stay true for data skipping)."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.rows = 0
        self.nulls: dict[str, int] = {}
        self.mins: dict[str, Any] = {}
        self.maxs: dict[str, Any] = {}
        self.no_minmax: set[str] = set()

    @staticmethod
    def _kind(t: pa.DataType) -> str | None:
        if pa.types.is_integer(t):
            return "int"
        if pa.types.is_floating(t):
            return "float"
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return "str"
        if pa.types.is_date32(t):
            return "date"
        if pa.types.is_timestamp(t):
            return "ts"
        return None

    def update(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        for field, col in zip(table.schema, table.columns):
            t = field.type
            if pa.types.is_struct(t):
                continue
            self.nulls[field.name] = self.nulls.get(field.name, 0) + col.null_count
            kind = self._kind(t)
            if kind is None or field.name in self.no_minmax or col.null_count == len(col):
                continue
            if kind == "float" and pc.any(pc.is_nan(col)).as_py():
                self.no_minmax.add(field.name)  # NaN has no place in min/max stats
                continue
            if kind == "ts":
                col = col.cast(pa.int64())  # microseconds (the schema is normalized to µs)
            mm = pc.min_max(col)
            lo, hi = mm["min"].as_py(), mm["max"].as_py()
            if lo is None:
                continue
            if kind == "float" and not (math.isfinite(lo) and math.isfinite(hi)):
                self.no_minmax.add(field.name)
                continue
            self.mins[field.name] = lo if field.name not in self.mins else min(self.mins[field.name], lo)
            self.maxs[field.name] = hi if field.name not in self.maxs else max(self.maxs[field.name], hi)

    def to_json(self) -> str:
        mins: dict[str, Any] = {}
        maxs: dict[str, Any] = {}
        for field in self.schema:
            name = field.name
            if name in self.no_minmax or name not in self.mins:
                continue
            kind = self._kind(field.type)
            lo, hi = self.mins[name], self.maxs[name]
            if kind == "ts":
                mins[name] = _ms_iso(math.floor(lo / 1000))
                maxs[name] = _ms_iso(-math.floor(-hi / 1000))
            elif kind == "date":
                mins[name], maxs[name] = lo.isoformat(), hi.isoformat()
            elif kind == "str":
                mins[name] = lo[:_STAT_STRING_CHARS]
                if len(hi) <= _STAT_STRING_CHARS:
                    maxs[name] = hi
            else:
                mins[name], maxs[name] = lo, hi
        stats = {"numRecords": self.rows, "minValues": mins, "maxValues": maxs, "nullCount": self.nulls}
        return json.dumps(stats, allow_nan=False, separators=(",", ":"))


# --------------------------------------------------------------------------------------
# executor side


def _file_writer(
    uri: str, run_date: str, schema: pa.Schema, fail_stage: str = ""
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function: write this partition's rows to one Parquet file under
    ``<uri>/run_date=<run_date>/`` and yield one row describing it (nothing when empty)."""

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq
        from pyarrow import fs as pafs
        from pyspark import TaskContext

        ctx = TaskContext.get()
        part = ctx.partitionId() if ctx is not None else 0
        rel = f"{PARTITION_COLUMN}={run_date}/part-{part:05d}-{uuid.uuid4()}.parquet"
        filesystem, base = pafs.FileSystem.from_uri(uri)
        full = base.rstrip("/") + "/" + rel
        writer = None
        stats = _StatsAccumulator(schema)
        try:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                data = pa.Table.from_batches([batch]).cast(schema)
                if writer is None:
                    filesystem.create_dir(full.rsplit("/", 1)[0], recursive=True)
                    writer = pq.ParquetWriter(full, schema, filesystem=filesystem, compression="snappy")
                writer.write_table(data)
                stats.update(data)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            return
        if fail_stage == "write" and ctx is not None and ctx.partitionId() == 0 and ctx.attemptNumber() == 0:
            # testing.fail_once_stage=write: the file is written, the task dies before reporting it
            raise RuntimeError("injected failure in stage 'write' (testing.fail_once_stage)")
        size = filesystem.get_file_info(full).size
        row = {
            "path": [rel],
            "size": [int(size)],
            "rows": [stats.rows],
            "stats": [stats.to_json()],
            "mtime_ms": [int(time.time() * 1000)],
        }
        yield pa.RecordBatch.from_pydict(row, schema=_FILE_ROW_SCHEMA)

    return write_partition


# --------------------------------------------------------------------------------------
# the sink


def _is_retryable(e: Exception) -> bool:
    from deltalake.exceptions import CommitFailedError

    if isinstance(e, CommitFailedError):
        return True
    msg = str(e).lower()
    return any(s in msg for s in ("already exists", "conflict", "concurrent", "version mismatch"))


class DeltaSink:
    """Writes Spark DataFrames to ``run_date``-partitioned Delta tables under ``warehouse``.

    ``max_attempts`` bounds the commit retries on conflicts (each with a fresh snapshot and
    a short jittered backoff starting at ``backoff_s``)."""

    def __init__(
        self,
        warehouse: str,
        *,
        storage_options: dict[str, str] | None = None,
        max_attempts: int = 10,
        backoff_s: float = 0.05,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.warehouse = str(warehouse)
        self.storage_options = dict(storage_options) if storage_options else None
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s

    def table_uri(self, table: str) -> str:
        return table_uri(self.warehouse, table)

    # -- staging (executors) ---------------------------------------------------------

    def stage(self, df: Any, table: str, run_date: str, *, fail_stage: str = "") -> StagedWrite:
        """Write ``df`` (without ``run_date``) as Parquet files of partition ``run_date`` on
        the executors. Returns the files to commit; nothing is visible in the table yet."""
        _check_run_date(run_date)
        uri = self.table_uri(table)
        if PARTITION_COLUMN in df.columns:
            raise InputError(
                f"DataFrame for table '{table}' must not contain the partition column '{PARTITION_COLUMN}'"
            )
        schema = spark_to_arrow_schema(df.schema)
        fn = _file_writer(uri, run_date, schema, fail_stage)
        t0 = time.monotonic()
        try:
            rows = df.mapInArrow(fn, _spark_file_row_schema()).collect()
        except Exception as e:  # Py4JJavaError / PythonException from the tasks
            raise SinkError(f"writing files for table '{table}' ({run_date}) failed: {_first_line(e)}") from e
        files = tuple(
            sorted(
                (StagedFile(r["path"], int(r["size"]), int(r["rows"]), r["stats"], int(r["mtime_ms"])) for r in rows),
                key=lambda f: f.path,
            )
        )
        staged = StagedWrite(table, uri, run_date, schema, files, self.storage_options)
        log.info(
            "staged %s run_date=%s: %d files, %d rows in %.1fs",
            table,
            run_date,
            len(files),
            staged.rows,
            time.monotonic() - t0,
        )
        return staged

    # -- commit (driver) -------------------------------------------------------------

    def commit(
        self, staged: StagedWrite, *, mode: str = "overwrite_partition", crash_before_commit: bool = False
    ) -> CommitResult:
        """Commit ``staged`` in one Delta transaction (creating the table if needed).

        ``mode='overwrite_partition'`` replaces the ``run_date`` partition, ``'append'`` adds
        to it. ``crash_before_commit`` (tests only) raises :class:`SinkError` instead of
        committing, leaving the staged files as orphans. Raises :class:`SinkError` when the
        table's schema differs or the commit still fails after ``max_attempts``."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if crash_before_commit:
            raise SinkError(
                f"crash_before_commit: aborting before the Delta commit of '{staged.table}' "
                f"({len(staged.files)} staged files left uncommitted)"
            )
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError
        from deltalake.transaction import (
            AddAction,
            CommitProperties,
            create_table_with_add_actions,
        )

        uri, opts = staged.table_uri, staged.storage_options
        schema = _delta_schema(staged.schema)
        adds = [
            AddAction(
                path=f.path,
                size=f.size,
                partition_values={PARTITION_COLUMN: staged.run_date},
                modification_time=f.mtime_ms,
                data_change=True,
                stats=f.stats,
            )
            for f in staged.files
        ]
        commit_id = uuid.uuid4().hex
        props = CommitProperties(
            custom_metadata={
                _COMMIT_ID_KEY: commit_id,
                "listing_dedup.table": staged.table,
                "listing_dedup.runDate": staged.run_date,
                "listing_dedup.mode": mode,
            }
        )

        def attempt() -> None:
            if not DeltaTable.is_deltatable(uri, opts):
                try:
                    create_table_with_add_actions(
                        uri,
                        schema,
                        adds,
                        mode="error",
                        partition_by=[PARTITION_COLUMN],
                        storage_options=opts,
                        commit_properties=props,
                    )
                    return
                except DeltaError:
                    if not DeltaTable.is_deltatable(uri, opts):
                        raise
                    log.info("table %s was created concurrently; committing into it", staged.table)
            dt = DeltaTable(uri, storage_options=opts)
            _check_compatible(staged.table, dt, schema)
            if mode == "append":
                dt.create_write_transaction(
                    adds,
                    mode="append",
                    schema=dt.schema(),
                    partition_by=[PARTITION_COLUMN],
                    commit_properties=props,
                )
            else:
                dt.create_write_transaction(
                    adds,
                    mode="overwrite",
                    schema=dt.schema(),
                    partition_by=[PARTITION_COLUMN],
                    partition_filters=[(PARTITION_COLUMN, "=", staged.run_date)],
                    commit_properties=props,
                )

        for n in range(1, self.max_attempts + 1):
            try:
                attempt()
                break
            except DeltaError as e:
                if not _is_retryable(e):
                    raise SinkError(
                        f"committing table '{staged.table}' ({staged.run_date}) failed: {_first_line(e)}"
                    ) from e
                if n == self.max_attempts:
                    raise SinkError(
                        f"committing table '{staged.table}' ({staged.run_date}) failed after "
                        f"{n} attempts: {_first_line(e)}"
                    ) from e
                delay = min(2.0, self.backoff_s * 2 ** (n - 1)) * (0.5 + random.random())
                log.info(
                    "commit conflict on %s (attempt %d/%d), retrying in %.2fs: %s",
                    staged.table,
                    n,
                    self.max_attempts,
                    delay,
                    _first_line(e),
                )
                time.sleep(delay)
        version = _find_version(uri, opts, commit_id)
        result = CommitResult(staged.table, version, len(staged.files), staged.rows)
        log.info(
            "committed %s run_date=%s mode=%s: version %d, %d files, %d rows",
            staged.table,
            staged.run_date,
            mode,
            version,
            result.files,
            result.rows,
        )
        return result

    def write(
        self,
        df: Any,
        table: str,
        run_date: str,
        *,
        mode: str = "overwrite_partition",
        crash_before_commit: bool = False,
    ) -> CommitResult:
        """:meth:`stage` then :meth:`commit`."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        staged = self.stage(df, table, run_date)
        return self.commit(staged, mode=mode, crash_before_commit=crash_before_commit)


def _spark_file_row_schema() -> Any:
    from pyspark.sql import types as T

    return T.StructType(
        [
            T.StructField("path", T.StringType()),
            T.StructField("size", T.LongType()),
            T.StructField("rows", T.LongType()),
            T.StructField("stats", T.StringType()),
            T.StructField("mtime_ms", T.LongType()),
        ]
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_compatible(table: str, dt: Any, schema: Any) -> None:
    parts = list(dt.metadata().partition_columns)
    if parts != [PARTITION_COLUMN]:
        raise SinkError(f"table '{table}' is partitioned by {parts}, expected ['{PARTITION_COLUMN}']")
    if dt.schema() != schema:
        raise SinkError(
            f"table '{table}' has a different schema; table: {dt.schema().to_json()} ; this write: {schema.to_json()}"
        )


def _find_version(uri: str, opts: dict[str, str] | None, commit_id: str) -> int:
    """The version of the commit tagged with ``commit_id`` (delta-rs does not return it).

    delta-rs quirk (1.6): ``history()`` lists every commit on storage but numbers them down
    from the *loaded* snapshot's version, so a commit landing between loading and listing
    shifts all numbers. The listing is trusted only when the table did not move across it."""
    from deltalake import DeltaTable

    dt = DeltaTable(uri, storage_options=opts)
    for _ in range(50):
        version = dt.version()
        history = dt.history(limit=100)
        dt.update_incremental()
        if dt.version() != version:
            continue  # a concurrent commit landed meanwhile: numbering may be off, list again
        for entry in history:
            if entry.get(_COMMIT_ID_KEY) == commit_id:
                return int(entry["version"])
        break
    log.warning("commit %s not found in the recent history of %s; reporting the latest version", commit_id, uri)
    return dt.version()


# --------------------------------------------------------------------------------------
# reading and maintenance


def _open(warehouse: str, table: str, storage_options: dict[str, str] | None) -> Any:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    uri = table_uri(warehouse, table)
    try:
        return DeltaTable(uri, storage_options=storage_options)
    except TableNotFoundError as e:
        raise InputError(f"Delta table '{table}' does not exist at {uri}") from e


def read_table(
    warehouse: str,
    table: str,
    run_date: str | None = None,
    columns: Sequence[str] | None = None,
    *,
    storage_options: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Read a table (one ``run_date`` partition, or all) through the Delta log.

    Includes the ``run_date`` column unless ``columns`` leaves it out. An empty partition
    gives an empty DataFrame with the table's columns. Raises :class:`InputError` when the
    table does not exist or a column is unknown."""
    if run_date is not None:
        _check_run_date(run_date)
    dt = _open(warehouse, table, storage_options)
    names = [f.name for f in dt.schema().fields]
    if columns is not None:
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise InputError(f"table '{table}' has no column(s) {unknown}; it has {names}")
    filters = [(PARTITION_COLUMN, "=", run_date)] if run_date is not None else None
    return dt.to_pandas(filters=filters, columns=list(columns) if columns is not None else None)


def table_version(warehouse: str, table: str, *, storage_options: dict[str, str] | None = None) -> int:
    """The current version of a table (:class:`InputError` when it does not exist)."""
    return _open(warehouse, table, storage_options).version()


def vacuum(
    warehouse: str,
    table: str,
    retention_hours: int = 0,
    dry_run: bool = False,
    *,
    storage_options: dict[str, str] | None = None,
) -> list[str]:
    """Delete files the table does not reference (orphans of crashed or failed writes and
    files removed by overwrites) older than ``retention_hours``; returns their paths
    relative to the table root. Runs delta-rs' *full* vacuum (lists the storage, not only
    the log's tombstones). With ``retention_hours=0`` the retention-duration check is off:
    run it only when no write to this table is in flight, or its staged files go too."""
    if retention_hours < 0:
        raise ValueError("retention_hours must be >= 0")
    dt = _open(warehouse, table, storage_options)
    try:
        removed = dt.vacuum(
            retention_hours=retention_hours,
            dry_run=dry_run,
            enforce_retention_duration=retention_hours > 0,
            full=True,
        )
    except Exception as e:
        raise SinkError(f"vacuum of table '{table}' failed: {_first_line(e)}") from e
    log.info("vacuum %s%s: %d files", table, " (dry run)" if dry_run else "", len(removed))
    return sorted(removed)
