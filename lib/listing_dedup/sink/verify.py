"""Check what a run committed for one ``run_date``: the validation step of the nightly DAG
(``jobs/dedup_listings.py --verify-only``) and of the reliability tests.

Checks, against the latest ``runs`` row of that date:

* the latest attempt succeeded, and ``rows_in == rows_kept + rows_rejected``;
* ``clusters`` and ``matches`` hold exactly ``rows_kept`` rows with unique ``posting_id``s,
  the same ids in both;
* ``rejects`` holds ``rows_rejected`` rows, with the per-reason counts the run recorded;
* every listing has a ``group_id`` and every group's ``group_size`` is its row count (a
  ``group_id`` is a stable id that continues across nights, graph/lineage.py: not necessarily a
  member's posting_id);
* match lists are symmetric (b in matches(a) <=> a in matches(b)) and hold only kept ids;
* every row of the data tables (``candidates`` too, where that table exists) carries the
  ``run_id`` of that runs row: the job commits one table after the other, so a run stopped
  between two commits (or before its runs row) leaves the date's tables from different runs,
  whose counts may well agree. Rows without a ``run_id`` were written by a version before the
  column (a null there, also in the files of a table that gained the column later): a date
  whose tables all hold such rows (or none) was written whole by that version and is not
  checked for its run; one where they sit beside rows with a ``run_id`` is a mix of runs.

How it scales. The ``runs`` table (one row per attempt) is read with delta-rs into pandas on
the driver. The three data tables are read by Spark, and only as the current Delta snapshot:
delta-rs lists the Parquet files the log references for the ``run_date`` partition
(``DeltaTable.file_uris``) and exactly those files go to ``spark.read.parquet`` (never the
folder, which also holds uncommitted and overwritten files), with the columns the checks need
typed from the table's Delta schema (an empty partition is an empty DataFrame of that schema).
Every check is a Spark aggregate; ONE action brings back one row of a few numbers:

* ids: the clusters ids, the matches ids and every id a match list references, grouped by
  posting_id (one shuffle of ``2 n + n k`` short rows): row counts, duplicates, ids in one table
  only (the set difference of two anti joins, counted in the same aggregate), references to ids
  that are not kept listings;
* groups: clusters grouped by group_id (min posting_id, rows, min/max/non-null group_size);
* pairs: the exploded match lists grouped by the unordered pair {a, b} (one shuffle of
  ``n k`` rows), a pair being symmetric when it is listed both ways (the anti join of the pairs
  with the reversed pairs, counted without the second shuffle);
* rejects: grouped by reason, each count compared with the one the run recorded (a map literal
  in the plan): total rows and the number of reasons whose counts differ;
* runs: the ``run_id`` column of every data table (a union, no shuffle): rows of the runs row's
  run, of another run, without a run.

Only when a count shows a problem do a few more actions run, each bringing back at most
:data:`EXAMPLES` example ids (sorted, ``orderBy(...).limit``) or :data:`MAX_REASONS` reasons.
So the driver receives a few hundred bytes whatever the tables hold, and executors' memory is
that of a Spark aggregation (it spills), not the table's.

Spark is required (one implementation, no driver-memory fallback): :func:`check_run` uses the
session it is given, else the active one, else ``SparkSession.builder.getOrCreate()`` (plain
``python``: a local session with Spark's defaults; the CLI builds its session from the conf
profile first). Not a pandas fallback: that would be a second implementation of every check,
the one that breaks at scale; and a caller without a session (a notebook, a script) still gets
an answer. Paths: delta-rs gives percent-encoded file URIs (local files as absolute
paths); they are decoded (a Hadoop path string is the plain name), and local ones passed as
``file://`` paths so that a cluster's default file system never reinterprets them. Other
schemes (``hdfs://``, ``s3://``, ``abfss://``) are kept, so Spark needs that file system
configured (``s3://`` is not rewritten to ``s3a://``). Tables that need
deletion vectors or column mapping to be read are refused (:class:`VerifyError`): their
Parquet files alone are not the snapshot, and this project never writes such tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from listing_dedup.dates import check_run_date
from listing_dedup.errors import DedupError, InputError, first_line
from listing_dedup.sink.delta import _open, read_table
from listing_dedup.sink.schemas import PARTITION_COLUMN, RUN_ID_COLUMN, table_uri

EXAMPLES = 3  # example ids a problem names
MAX_REASONS = 50  # reject reasons a "rejects by reason" problem lists (the job has 4)

# the columns each data table's checks read
_COLUMNS = {
    "clusters": ("posting_id", "group_id", "group_size"),
    "matches": ("posting_id", "match_ids"),
    "rejects": ("reason",),
    "candidates": ("posting_id",),
}
# checked for their run only (and only where the table exists: the job writes it on request)
_OPTIONAL_TABLES = ("candidates",)
# reader features whose tables are not just their Parquet files
_UNSUPPORTED_READER_FEATURES = ("deletionVectors", "columnMapping")


class VerifyError(DedupError):
    """The committed tables of a date are inconsistent (exit code 1)."""


@dataclass
class Verified:
    run_date: str
    rows_in: int = 0
    rows_kept: int = 0
    rows_rejected: int = 0
    n_groups: int = 0
    problems: list[str] = field(default_factory=list)
    # the runs row's health warnings (codes, comma-separated; "" = none or a table from before
    # the health check): not a problem of the tables, reported for --fail-on-health
    health_warnings: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def check_run(
    warehouse: str, run_date: str, spark: Any = None, *, storage_options: dict[str, str] | None = None
) -> Verified:
    """Collect every problem of ``run_date``'s committed tables (none: ``.ok``).

    ``spark``: the SparkSession that aggregates the data tables; default the active session,
    else ``SparkSession.builder.getOrCreate()`` (see the module docstring: no whole table is
    ever brought to the driver). Raises :class:`~listing_dedup.errors.InputError` when a table
    does not exist, :class:`VerifyError` when one cannot be read."""
    check_run_date(run_date, "run_date")
    out = Verified(run_date)
    runs = read_table(warehouse, "runs", run_date, storage_options=storage_options)
    if runs.empty:
        out.problems.append(f"no run recorded for {run_date}")
        return out
    last = runs.sort_values("finished_at", kind="stable").iloc[-1]
    if last["status"] != "succeeded":
        out.problems.append(f"the latest attempt for {run_date} has status {last['status']}: {last['error']}")
        return out
    hw = last.get("health_warnings")
    out.health_warnings = hw if isinstance(hw, str) else ""
    out.rows_in, out.rows_kept, out.rows_rejected = (
        int(last["rows_in"]),
        int(last["rows_kept"]),
        int(last["rows_rejected"]),
    )
    p = out.problems
    if out.rows_in != out.rows_kept + out.rows_rejected:
        p.append(f"rows_in {out.rows_in} != kept {out.rows_kept} + rejected {out.rows_rejected}")

    spark = _session(spark)
    frames = {
        t: snapshot_frame(spark, warehouse, t, run_date, optional=(RUN_ID_COLUMN,), storage_options=storage_options)
        for t in ("matches", "clusters", "rejects", *_OPTIONAL_TABLES)
        if t not in _OPTIONAL_TABLES or _exists(warehouse, t, storage_options)
    }
    recorded = {str(k): int(v) for k, v in json.loads(last["rejects_by_reason"] or "{}").items()}
    q = _Queries(frames["clusters"], frames["matches"], frames["rejects"], recorded, frames, str(last["run_id"]))
    try:
        s = q.summary().collect()[0].asDict()
    except Exception as e:  # Py4JJavaError: a file the log references is missing or unreadable
        raise VerifyError(f"reading the tables of {run_date} under {warehouse} failed: {first_line(e)}") from e

    for name in ("clusters", "matches"):
        rows, dup = int(s[f"{name}_rows"]), int(s[f"{name}_dup"])
        if rows != out.rows_kept:
            p.append(f"{name} holds {rows} rows, the run kept {out.rows_kept}")
        if dup:
            p.append(f"{name} holds {dup} duplicate posting_id rows, e.g. {q.duplicate_ids(name)}")
    only_c, only_m = int(s["only_clusters"]), int(s["only_matches"])
    if only_c or only_m:
        p.append(
            f"clusters and matches hold different posting_ids: {only_c} only in clusters "
            f"(e.g. {q.one_side_ids('clusters')}), {only_m} only in matches (e.g. {q.one_side_ids('matches')})"
        )

    rejected = int(s["rejects_rows"])
    if rejected != out.rows_rejected:
        p.append(f"rejects holds {rejected} rows, the run rejected {out.rows_rejected}")
    if int(s["reasons_differing"]):
        found, n_reasons = q.rejects_by_reason(), int(s["rejects_reasons"])
        more = f" (and {n_reasons - len(found)} more reasons)" if n_reasons > len(found) else ""
        p.append(f"rejects by reason {found}{more} != recorded {recorded}")

    out.n_groups = int(s["n_groups"])
    if int(s["bad_group_id"]):
        p.append(f"listings without a group_id, e.g. {q.bad_group_ids()}")
    if int(s["bad_group_size"]):
        p.append(
            f"group_size differs from the number of rows of the group ({int(s['bad_group_size'])} group(s), "
            f"e.g. {q.bad_size_groups()})"
        )
    if int(s["refs_not_kept"]):
        p.append(
            f"match_ids hold posting_ids that are not kept listings ({int(s['refs_not_kept'])} reference(s), "
            f"e.g. {q.unknown_refs()})"
        )
    if int(s["one_way_pairs"]):
        p.append(
            f"match lists are not symmetric ({int(s['one_way_pairs'])} pair(s) listed one way only, "
            f"e.g. {q.one_way_pairs()})"
        )
    other, no_run, this_run = int(s["other_run"]), int(s["no_run"]), int(s["this_run"])
    if other or (no_run and this_run):
        p.append(
            f"the tables of {run_date} do not all come from its latest run {last['run_id']} (the runs row "
            f"checked above): {q.runs_per_table()}; a run stopped between its commits? rerun {run_date}"
        )
    return out


def verify_run(
    warehouse: str, run_date: str, spark: Any = None, *, storage_options: dict[str, str] | None = None
) -> Verified:
    """:func:`check_run`, raising :class:`VerifyError` listing the problems if any."""
    res = check_run(warehouse, run_date, spark, storage_options=storage_options)
    if not res.ok:
        raise VerifyError(f"run {run_date} under {warehouse} failed verification: " + "; ".join(res.problems))
    return res


# --------------------------------------------------------------------------------------
# reading a table's snapshot with Spark


def _session(spark: Any) -> Any:
    if spark is not None:
        return spark
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()


def _spark_path(uri: str) -> str:
    """A file URI from delta-rs as Spark should read it. delta-rs percent-encodes (a space in a
    local warehouse path comes back as ``%20``) while a Hadoop path string is the plain name, so
    it is decoded; a local absolute path becomes ``file://`` (never the cluster's default FS)."""
    from urllib.parse import unquote

    plain = unquote(uri)
    return plain if "://" in plain else "file://" + plain


def snapshot_files(
    warehouse: str, table: str, run_date: str, *, storage_options: dict[str, str] | None = None
) -> tuple[list[str], Any]:
    """The Parquet files of ``table``'s current Delta snapshot for partition ``run_date`` (as
    Spark paths; empty when the partition is) and the table's Arrow schema (``run_date``
    included). :class:`~listing_dedup.errors.InputError` when the table does not exist,
    :class:`VerifyError` when its files alone do not hold the snapshot."""
    import pyarrow as pa

    check_run_date(run_date, "run_date")
    dt = _open(warehouse, table, storage_options)
    features = set(dt.protocol().reader_features or ())
    unsupported = sorted(features & set(_UNSUPPORTED_READER_FEATURES))
    if unsupported:
        raise VerifyError(
            f"table '{table}' uses the Delta reader feature(s) {unsupported}: its Parquet files alone are not "
            "its snapshot, and this verification reads them with plain Spark (no Delta jars)"
        )
    uris = dt.file_uris(file_pruning_predicate=[(PARTITION_COLUMN, "=", run_date)])
    return [_spark_path(u) for u in uris], pa.schema(dt.schema().to_arrow())


def _exists(warehouse: str, table: str, storage_options: dict[str, str] | None) -> bool:
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(table_uri(warehouse, table), storage_options)


def snapshot_frame(
    spark: Any,
    warehouse: str,
    table: str,
    run_date: str,
    columns: tuple[str, ...] | None = None,
    *,
    optional: tuple[str, ...] = (),
    storage_options: dict[str, str] | None = None,
) -> Any:
    """A Spark DataFrame of ``table``'s ``run_date`` partition as its current Delta snapshot
    holds it (``columns``, default the ones the checks read; never ``run_date``), typed from
    the Delta schema. Files written before a column was added read null there; so do the
    ``optional`` string columns where the table does not have them (yet)."""
    import pyarrow as pa
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    paths, arrow = snapshot_files(warehouse, table, run_date, storage_options=storage_options)
    columns = columns if columns is not None else _COLUMNS[table]
    missing = [c for c in columns if c not in arrow.names]
    if missing:
        raise InputError(f"table '{table}' has no column(s) {missing}; it has {arrow.names}")
    read = [*columns, *(c for c in optional if c in arrow.names and c not in columns)]
    schema = from_arrow_schema(pa.schema([arrow.field(c) for c in read]))
    df = spark.read.schema(schema).parquet(*paths) if paths else spark.createDataFrame([], schema)
    for c in optional:
        if c not in read:
            df = df.withColumn(c, F.lit(None).cast("string"))
    return df


# --------------------------------------------------------------------------------------
# the aggregates


class _Queries:
    """The checks as Spark aggregates over the three data tables; :meth:`summary` is the one
    action of a healthy run, the other methods fetch a few examples of a problem found."""

    def __init__(
        self,
        clusters: Any,
        matches: Any,
        rejects: Any,
        recorded: dict[str, int],
        tables: dict[str, Any] | None = None,
        run_id: str = "",
    ) -> None:
        from pyspark.sql import functions as F

        self.F = F
        # (table, run_id) of every row of the data tables that carry a run_id column
        parts = [df.select(F.lit(t).alias("table"), F.col(RUN_ID_COLUMN)) for t, df in (tables or {}).items()]
        self.run_rows = parts[0] if parts else None
        for part in parts[1:]:
            self.run_rows = self.run_rows.unionByName(part)
        self.run_id = run_id
        self.tables = list(tables or {})
        self.clusters, self.matches, self.rejects = clusters, matches, rejects
        lit = F.lit
        ids = (
            clusters.select("posting_id", lit(1).alias("c"), lit(0).alias("m"), lit(0).alias("r"))
            .unionByName(matches.select("posting_id", lit(0).alias("c"), lit(1).alias("m"), lit(0).alias("r")))
            .unionByName(
                matches.select(
                    F.explode("match_ids").alias("posting_id"), lit(0).alias("c"), lit(0).alias("m"), lit(1).alias("r")
                )
            )
        )
        # one row per posting_id seen anywhere: rows in clusters, rows in matches, references
        self.per_id = ids.groupBy("posting_id").agg(F.sum("c").alias("c"), F.sum("m").alias("m"), F.sum("r").alias("r"))
        self.per_group = clusters.groupBy("group_id").agg(
            F.min("posting_id").alias("min_id"),
            F.count(lit(1)).alias("rows"),
            F.min("group_size").alias("min_size"),
            F.max("group_size").alias("max_size"),
            F.count("group_size").alias("sizes"),
        )
        self.bad_id = F.col("group_id").isNull()
        rows = F.col("rows")
        self.bad_size = (F.col("sizes") != rows) | (F.col("min_size") != rows) | (F.col("max_size") != rows)
        # each listed pair (a, b) keyed by its unordered pair {lo, hi} (nulls first, so null ids
        # pair up like any other); fwd: listed as (lo, hi), bwd: as (hi, lo); a self pair is both
        pair = matches.select(F.col("posting_id").alias("a"), F.explode("match_ids").alias("b")).select(
            "a", "b", F.sort_array(F.array("a", "b")).alias("k")
        )
        self_pair = F.col("a").eqNullSafe(F.col("b"))
        is_fwd = F.col("a").eqNullSafe(F.col("k")[0])
        self.per_pair = pair.groupBy(F.col("k")[0].alias("lo"), F.col("k")[1].alias("hi")).agg(
            F.max(is_fwd | self_pair).alias("fwd"), F.max(~is_fwd | self_pair).alias("bwd")
        )
        self.per_reason = rejects.groupBy("reason").count()
        # the run's recorded count of each found reason (null where it recorded none), from a
        # map literal: the recorded counts never leave the plan as a table
        if recorded:
            pairs = [x for k, v in sorted(recorded.items()) for x in (F.lit(k), F.lit(int(v)).cast("long"))]
            self.expected = F.create_map(*pairs)[F.col("reason")]
        else:
            self.expected = F.lit(None).cast("long")
        self.n_recorded = len(recorded)

    def summary(self) -> Any:
        F = self.F
        c, m, r = F.col("c"), F.col("m"), F.col("r")

        def count_if(cond: Any) -> Any:
            return F.sum(F.when(cond, 1).otherwise(0))

        ids = self.per_id.agg(
            F.coalesce(F.sum(c), F.lit(0)).alias("clusters_rows"),
            F.coalesce(F.sum(F.greatest(c - 1, F.lit(0))), F.lit(0)).alias("clusters_dup"),
            F.coalesce(F.sum(m), F.lit(0)).alias("matches_rows"),
            F.coalesce(F.sum(F.greatest(m - 1, F.lit(0))), F.lit(0)).alias("matches_dup"),
            F.coalesce(count_if((c > 0) & (m == 0)), F.lit(0)).alias("only_clusters"),
            F.coalesce(count_if((m > 0) & (c == 0)), F.lit(0)).alias("only_matches"),
            F.coalesce(F.sum(F.when(m == 0, r).otherwise(0)), F.lit(0)).alias("refs_not_kept"),
        )
        groups = self.per_group.agg(
            F.coalesce(count_if(F.col("rows") > 1), F.lit(0)).alias("n_groups"),
            F.coalesce(count_if(self.bad_id), F.lit(0)).alias("bad_group_id"),
            F.coalesce(count_if(self.bad_size), F.lit(0)).alias("bad_group_size"),
        )
        pairs = self.per_pair.agg(F.coalesce(count_if(~(F.col("fwd") & F.col("bwd"))), F.lit(0)).alias("one_way_pairs"))
        reasons = self.per_reason.agg(
            F.coalesce(F.sum("count"), F.lit(0)).alias("rejects_rows"),
            F.count(F.lit(1)).alias("rejects_reasons"),
            # found reasons whose count is not the recorded one, plus recorded reasons not found
            (
                F.coalesce(count_if(~F.col("count").eqNullSafe(self.expected)), F.lit(0))
                + F.lit(self.n_recorded)
                - F.coalesce(count_if(self.expected.isNotNull()), F.lit(0))
            ).alias("reasons_differing"),
        )
        out = ids.crossJoin(groups).crossJoin(pairs).crossJoin(reasons)
        if self.run_rows is None:
            return out.select("*", *(F.lit(0).alias(c) for c in ("this_run", "other_run", "no_run")))
        rid = F.col(RUN_ID_COLUMN)
        runs = self.run_rows.agg(
            F.coalesce(count_if(rid == F.lit(self.run_id)), F.lit(0)).alias("this_run"),
            F.coalesce(count_if(rid != F.lit(self.run_id)), F.lit(0)).alias("other_run"),
            F.coalesce(count_if(rid.isNull()), F.lit(0)).alias("no_run"),
        )
        return out.crossJoin(runs)

    # -- examples, fetched only for a problem found (each at most EXAMPLES rows) ----------

    @staticmethod
    def _first(df: Any, *cols: str) -> list[Any]:
        rows = df.select(*cols).orderBy(*cols).limit(EXAMPLES).collect()
        return [r[0] if len(cols) == 1 else tuple(r) for r in rows]

    def duplicate_ids(self, table: str) -> list[Any]:
        col = self.F.col("c" if table == "clusters" else "m")
        return self._first(self.per_id.where(col > 1), "posting_id")

    def one_side_ids(self, table: str) -> list[Any]:
        F = self.F
        here, other = ("c", "m") if table == "clusters" else ("m", "c")
        return self._first(self.per_id.where((F.col(here) > 0) & (F.col(other) == 0)), "posting_id")

    def unknown_refs(self) -> list[Any]:
        F = self.F
        return self._first(self.per_id.where((F.col("m") == 0) & (F.col("r") > 0)), "posting_id")

    def bad_group_ids(self) -> list[Any]:
        """The smallest posting_id of the listings without a group_id."""
        return self._first(self.per_group.where(self.bad_id), "min_id")

    def bad_size_groups(self) -> list[Any]:
        return self._first(self.per_group.where(self.bad_size), "group_id")

    def one_way_pairs(self) -> list[tuple[Any, Any]]:
        """Pairs (a, b) listed in a's matches whose reverse is not listed."""
        F = self.F
        one_way = self.per_pair.where(~(F.col("fwd") & F.col("bwd"))).select(
            F.when(F.col("fwd"), F.col("lo")).otherwise(F.col("hi")).alias("a"),
            F.when(F.col("fwd"), F.col("hi")).otherwise(F.col("lo")).alias("b"),
        )
        return self._first(one_way, "a", "b")

    def runs_per_table(self) -> str:
        """Each table's runs and their row counts, e.g. ``matches: run b7 (6 rows), clusters: run
        a1 (6 rows), rejects: empty`` (at most EXAMPLES runs a table; rows without a run_id as
        ``no run_id (an earlier version)``)."""
        F = self.F
        rows = (
            self.run_rows.groupBy("table", RUN_ID_COLUMN)
            .count()
            .withColumn("rank", F.row_number().over(_by_table(F)))
            .where(F.col("rank") <= EXAMPLES)
            .collect()
        )
        found: dict[str, list[str]] = {}
        for r in sorted(rows, key=lambda r: (r["table"], r[RUN_ID_COLUMN] is not None, r[RUN_ID_COLUMN] or "")):
            rid = r[RUN_ID_COLUMN]
            who = "no run_id (an earlier version)" if rid is None else f"run {rid}"
            found.setdefault(r["table"], []).append(f"{who} ({r['count']} rows)")
        return ", ".join(f"{t}: {' + '.join(found.get(t, ['empty']))}" for t in self.tables)

    def rejects_by_reason(self) -> dict[str, int]:
        """Reject rows per reason (a null reason as ``"None"``), at most MAX_REASONS reasons."""
        rows = self.per_reason.orderBy("reason").limit(MAX_REASONS).collect()
        return {str(r["reason"]): int(r["count"]) for r in rows}


def _by_table(F: Any) -> Any:
    from pyspark.sql import Window

    return Window.partitionBy("table").orderBy(F.desc("count"), F.col(RUN_ID_COLUMN).asc_nulls_first())
