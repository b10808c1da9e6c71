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
   are never committed are orphans that :func:`vacuum` removes once they are older than its
   retention (a week by default, so that it never deletes what a run in progress staged).
2. :meth:`DeltaSink.commit` adds those files in ONE Delta transaction. The default mode,
   ``overwrite_partition``, replaces only the ``run_date`` partition (a rerun of a date is
   idempotent, other dates are untouched); ``append`` adds to it (the ``runs`` audit table).
   The first commit creates the table (schema from the staged Arrow schema plus ``run_date``).
   Commit conflicts with concurrent writers (delta-rs reports an overwrite of another
   partition as a conflict) and the race of two creators are retried with a fresh snapshot.

A job that commits several tables calls :meth:`DeltaSink.check` on all its staged writes
first: a table whose schema or partitioning the write does not match fails the run before
any table moved, instead of after the tables before it were committed.

Schema evolution: a write names the columns a later version added to its table
(``added_columns``, e.g. the job's ``run_id``: :data:`listing_dedup.sink.schemas.ADDED_COLUMNS`).
A table an earlier version created without them passes the check, and its next commit first
adds them (:meth:`DeltaSink.add_columns`: nullable, metadata only, no file rewritten; the earlier
rows read null there), then commits the data. Any other difference is still refused.

Only the driver talks to the Delta log, so :meth:`DeltaSink.commit` needs no Spark and a
:class:`StagedWrite` can be pickled to another process and committed there.

Schemas and file statistics: :mod:`listing_dedup.sink.schemas`; the executors' file writer:
:mod:`listing_dedup.sink.files`.
"""

from __future__ import annotations

import logging
import random
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa

from listing_dedup.dates import check_run_date
from listing_dedup.errors import InputError, SinkError, first_line
from listing_dedup.sink import files as file_writer
from listing_dedup.sink.files import StagedFile
from listing_dedup.sink.schemas import (
    PARTITION_COLUMN,
    delta_schema,
    normalize_arrow_schema,
    spark_to_arrow_schema,
    table_uri,
)

log = logging.getLogger(__name__)

MODES = ("overwrite_partition", "append")
_COMMIT_ID_KEY = "listing_dedup.commitId"


# --------------------------------------------------------------------------------------
# results


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
    # columns of ``schema`` a later version added to the table: an existing table without them is
    # accepted by :meth:`DeltaSink.check` and gains them (nullable) at the commit
    added_columns: tuple[str, ...] = ()

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

    def table_exists(self, table: str) -> bool:
        from deltalake import DeltaTable

        uri = self.table_uri(table)
        try:
            return DeltaTable.is_deltatable(uri, self.storage_options)
        except Exception as e:  # storage or credentials: the commit would fail the same way
            raise SinkError(f"cannot open table '{table}' at {uri}: {first_line(e)}") from e

    # -- staging (executors) ---------------------------------------------------------

    def stage(
        self, df: Any, table: str, run_date: str, *, fail_stage: str = "", added_columns: Sequence[str] = ()
    ) -> StagedWrite:
        """Write ``df`` (without ``run_date``) as Parquet files of partition ``run_date`` on
        the executors. Returns the files to commit; nothing is visible in the table yet.
        ``added_columns``: see :attr:`StagedWrite.added_columns`."""
        check_run_date(run_date, "run_date")
        uri = self.table_uri(table)
        if PARTITION_COLUMN in df.columns:
            raise InputError(
                f"DataFrame for table '{table}' must not contain the partition column '{PARTITION_COLUMN}'"
            )
        schema = spark_to_arrow_schema(df.schema)
        fn = file_writer.file_writer(uri, run_date, schema, fail_stage)
        t0 = time.monotonic()
        try:
            rows = df.mapInArrow(fn, file_writer.spark_file_row_schema()).collect()
        except Exception as e:  # Py4JJavaError / PythonException from the tasks
            raise SinkError(f"writing files for table '{table}' ({run_date}) failed: {first_line(e)}") from e
        return self._staged(table, uri, run_date, schema, rows, added_columns, t0, "")

    def stage_arrow(
        self, data: pa.Table, table: str, run_date: str, *, fail_stage: str = "", added_columns: Sequence[str] = ()
    ) -> StagedWrite:
        """:meth:`stage` for rows the driver holds (an Arrow table without ``run_date``, in the
        table's column order): the executors' file writer run on the driver, one Parquet file;
        nothing is visible in the table yet."""
        check_run_date(run_date, "run_date")
        uri = self.table_uri(table)
        if PARTITION_COLUMN in data.column_names:
            raise InputError(f"the rows for table '{table}' must not contain the partition column '{PARTITION_COLUMN}'")
        schema = normalize_arrow_schema(data.schema)
        t0 = time.monotonic()
        try:
            rows = list(file_writer.file_writer(uri, run_date, schema, fail_stage)(iter(data.to_batches())))
        except Exception as e:  # noqa: BLE001 - the filesystem's errors, as stage's tasks'
            raise SinkError(f"writing files for table '{table}' ({run_date}) failed: {first_line(e)}") from e
        written = [r for batch in rows for r in batch.to_pylist()]
        return self._staged(table, uri, run_date, schema, written, added_columns, t0, " from the driver")

    def _staged(
        self, table: str, uri: str, run_date: str, schema: pa.Schema, rows, added_columns, t0: float, where: str
    ) -> StagedWrite:
        """The :class:`StagedWrite` of the file writer's rows (one a file written), logged."""
        files = tuple(
            sorted(
                (StagedFile(r["path"], int(r["size"]), int(r["rows"]), r["stats"], int(r["mtime_ms"])) for r in rows),
                key=lambda f: f.path,
            )
        )
        staged = StagedWrite(table, uri, run_date, schema, files, self.storage_options, tuple(added_columns))
        log.info(
            "staged %s run_date=%s%s: %d files, %d rows in %.1fs",
            table,
            run_date,
            where,
            len(files),
            staged.rows,
            time.monotonic() - t0,
        )
        return staged

    def stage_empty(
        self, table: str, run_date: str, data_schema: pa.Schema, *, added_columns: Sequence[str] = ()
    ) -> StagedWrite:
        """A write of no rows (no file, no Spark): its commit empties the ``run_date`` partition
        (``overwrite_partition``), e.g. a table this run does not write but an earlier run of the
        date did."""
        check_run_date(run_date, "run_date")
        schema = normalize_arrow_schema(data_schema)
        return StagedWrite(
            table, self.table_uri(table), run_date, schema, (), self.storage_options, tuple(added_columns)
        )

    # -- commit (driver) -------------------------------------------------------------

    def check(self, staged: Iterable[StagedWrite]) -> None:
        """Raise :class:`SinkError` when any of ``staged`` could not be committed into its
        existing table (other partitioning or schema); tables that do not exist yet pass (the
        commit creates them). Commits nothing: a job calls it for all its writes before the
        first commit, so a schema error cannot leave one table new and the next old."""
        for s in staged:
            self.check_schema(s.table, s.schema, added_columns=s.added_columns)

    def check_schema(self, table: str, data_schema: pa.Schema, *, added_columns: Sequence[str] = ()) -> None:
        """:meth:`check` for one table and the data schema (no ``run_date``) a write would have.
        ``added_columns`` of ``data_schema`` that the table lacks are not compared (the commit
        adds them)."""
        from deltalake import DeltaTable

        uri = self.table_uri(table)
        try:
            if not DeltaTable.is_deltatable(uri, self.storage_options):
                return
            dt = DeltaTable(uri, storage_options=self.storage_options)
        except Exception as e:  # storage or credentials: the commit would fail the same way
            raise SinkError(f"cannot open table '{table}' at {uri} to check its schema: {first_line(e)}") from e
        have = {f.name for f in dt.schema().fields}
        later = [c for c in added_columns if c not in have]
        if later:  # compared as the table is now: the commit adds them
            data_schema = pa.schema([f for f in data_schema if f.name not in later])
        _check_compatible(table, dt, delta_schema(data_schema))

    def add_columns(self, table: str, data_schema: pa.Schema, columns: Sequence[str]) -> int | None:
        """Add ``columns`` (their types from ``data_schema``, nullable) to the existing ``table``
        where it lacks them: one metadata-only commit, no file is rewritten and every existing
        row reads null there. Returns the version that added them, None when the table does not
        exist or already has them all (a concurrent writer may have added them first: the
        attempt is retried on a fresh snapshot)."""
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError

        uri = self.table_uri(table)
        if not DeltaTable.is_deltatable(uri, self.storage_options):
            return None
        for n in range(1, self.max_attempts + 1):
            dt = DeltaTable(uri, storage_options=self.storage_options)
            have = {f.name for f in dt.schema().fields}
            missing = [c for c in columns if c not in have]
            if not missing:
                return None
            fields = [f for f in delta_schema(data_schema).fields if f.name in missing]
            try:
                dt.alter.add_columns(fields)
            except DeltaError as e:
                if not _is_retryable(e) or n == self.max_attempts:
                    have = {f.name for f in DeltaTable(uri, storage_options=self.storage_options).schema().fields}
                    if set(missing) <= have:  # a concurrent writer added them
                        return None
                    raise SinkError(f"adding column(s) {missing} to table '{table}' failed: {first_line(e)}") from e
                log.info("adding columns to %s conflicted (attempt %d), retrying: %s", table, n, first_line(e))
                time.sleep(min(2.0, self.backoff_s * 2 ** (n - 1)) * (0.5 + random.random()))
                continue
            dt.update_incremental()
            log.info("table %s gained column(s) %s (version %d)", table, ", ".join(missing), dt.version())
            return dt.version()
        return None

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
        schema = delta_schema(staged.schema)
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

        # No retry inside delta-rs for a create: when another writer created the table first,
        # delta-rs (1.6) would otherwise commit a second CREATE TABLE as version 1 (new table id,
        # and its schema wins silently); failing lets the loop below commit into the table.
        create_props = CommitProperties(custom_metadata=props.custom_metadata, max_commit_retries=0)

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
                        commit_properties=create_props,
                    )
                    return
                except DeltaError:
                    if not DeltaTable.is_deltatable(uri, opts):
                        raise
                    log.info("table %s was created concurrently; committing into it", staged.table)
            dt = DeltaTable(uri, storage_options=opts)
            have = {f.name for f in dt.schema().fields}
            if any(c not in have for c in staged.added_columns):  # a table of an earlier version
                self.add_columns(staged.table, staged.schema, staged.added_columns)
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
                        f"committing table '{staged.table}' ({staged.run_date}) failed: {first_line(e)}"
                    ) from e
                if n == self.max_attempts:
                    raise SinkError(
                        f"committing table '{staged.table}' ({staged.run_date}) failed after "
                        f"{n} attempts: {first_line(e)}"
                    ) from e
                delay = min(2.0, self.backoff_s * 2 ** (n - 1)) * (0.5 + random.random())
                log.info(
                    "commit conflict on %s (attempt %d/%d), retrying in %.2fs: %s",
                    staged.table,
                    n,
                    self.max_attempts,
                    delay,
                    first_line(e),
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
        added_columns: Sequence[str] = (),
    ) -> CommitResult:
        """:meth:`stage` then :meth:`commit`."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        staged = self.stage(df, table, run_date, added_columns=added_columns)
        return self.commit(staged, mode=mode, crash_before_commit=crash_before_commit)


def _check_compatible(table: str, dt: Any, schema: Any) -> None:
    parts = list(dt.metadata().partition_columns)
    if parts != [PARTITION_COLUMN]:
        raise SinkError(f"table '{table}' is partitioned by {parts}, expected ['{PARTITION_COLUMN}']")
    if dt.schema() != schema:
        raise SinkError(
            f"table '{table}' has a different schema than this write ({_schema_difference(dt.schema(), schema)}); "
            f"nothing was committed: migrate or move the table aside"
        )


def _schema_difference(have: Any, want: Any) -> str:
    """What differs between a table's Delta schema and a write's, in a few words."""
    h = {f.name: f for f in have.fields}
    w = {f.name: f for f in want.fields}
    out = []
    missing = [n for n in h if n not in w]
    extra = [n for n in w if n not in h]
    if missing:
        out.append(f"not in this write: {', '.join(missing)}")
    if extra:
        out.append(f"not in the table: {', '.join(extra)}")
    for n in (n for n in w if n in h):
        a, b = h[n], w[n]
        if str(a.type) != str(b.type):
            out.append(f"column '{n}' is {_type_name(a.type)} in the table, {_type_name(b.type)} in this write")
        elif a.nullable != b.nullable:
            out.append(f"column '{n}' is {'' if a.nullable else 'not '}nullable in the table")
    if not out and [f.name for f in have.fields] != [f.name for f in want.fields]:
        out.append(f"column order: table {[f.name for f in have.fields]}, this write {[f.name for f in want.fields]}")
    return "; ".join(out) or f"table {have.to_json()}, this write {want.to_json()}"


def _type_name(t: Any) -> str:
    """A Delta type in short: ``long``, ``ArrayType(string, contains_null=True)``."""
    return re.sub(r'PrimitiveType\("(\w+)"\)', r"\1", str(t))


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
        check_run_date(run_date, "run_date")
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


SAFE_RETENTION_HOURS = 168  # Delta's default deletedFileRetentionDuration (one week)


def vacuum(
    warehouse: str,
    table: str,
    retention_hours: int = SAFE_RETENTION_HOURS,
    dry_run: bool = False,
    *,
    allow_in_flight_deletion: bool = False,
    storage_options: dict[str, str] | None = None,
) -> list[str]:
    """Delete files the table does not reference (orphans of crashed or failed writes and
    files removed by overwrites) older than ``retention_hours``; returns their paths
    relative to the table root. Runs delta-rs' *full* vacuum (lists the storage, not only
    the log's tombstones).

    An uncommitted file is either an orphan or a file a run in progress has staged and will
    commit soon: the storage cannot tell them apart, only their age does. The default
    retention (168 hours, Delta's default) keeps every file younger than a week, so a
    concurrent run's staged files survive. A shorter retention (down to 0: every
    unreferenced file, however new) deletes the staged files of any run still in flight,
    whose commit then points at missing files; it is honoured only with
    ``allow_in_flight_deletion=True`` (run it when no write to the table is in flight),
    else :class:`ValueError`."""
    if retention_hours < 0:
        raise ValueError("retention_hours must be >= 0")
    if retention_hours < SAFE_RETENTION_HOURS and not allow_in_flight_deletion:
        raise ValueError(
            f"vacuum with retention_hours={retention_hours} (< {SAFE_RETENTION_HOURS}) deletes files that a "
            "run in progress has staged; pass allow_in_flight_deletion=True when no write is in flight"
        )
    dt = _open(warehouse, table, storage_options)
    try:
        removed = dt.vacuum(
            retention_hours=retention_hours,
            dry_run=dry_run,
            enforce_retention_duration=not allow_in_flight_deletion,
            full=True,
        )
    except Exception as e:
        raise SinkError(f"vacuum of table '{table}' failed: {first_line(e)}") from e
    log.info(
        "vacuum %s (retention %dh)%s: %d files", table, retention_hours, " (dry run)" if dry_run else "", len(removed)
    )
    return sorted(removed)
