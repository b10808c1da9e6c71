"""The ``runs`` table: one row per attempt of the job (an append-only audit log), and the
:class:`RunSummary` it records (also what the job prints).

The job reads it too: :func:`last_succeeded_run` is the baseline of the input-size guard
(``input.allow_empty``, ``input.max_shrink``), and :func:`check_runs_table` checks, before the
data tables are committed, that the row this version writes fits the existing table.

A ``runs`` table written by an earlier version lacks this version's newer columns (the health
check's ``health_json`` and ``health_warnings``, the embeddings cache's ``vectors_reused`` and
``vectors_computed``, counters). A succeeded run adds them to it
(nullable, a metadata-only commit: the earlier rows read null there), so an alert on
``health_warnings`` works on an old warehouse from the first run of this version on; a failed
attempt leaves the table's schema as it is and records the columns it has."""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from listing_dedup import __version__
from listing_dedup.errors import SinkError, first_line
from listing_dedup.redact import redact_json, redact_text
from listing_dedup.sink.delta import DeltaSink
from listing_dedup.sink.schemas import spark_to_arrow_schema

log = logging.getLogger(__name__)

TABLES = ("matches", "clusters", "rejects", "group_changes", "runs")  # plus "candidates" when output.candidates is on


@dataclass
class RunSummary:
    run_id: str
    run_date: str
    warehouse: str
    rows_in: int = 0
    rows_kept: int = 0
    rows_rejected: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    images_unreadable: int = 0  # kept listings whose image is missing or does not decode
    signal_counts: dict[str, int] = field(default_factory=dict)  # pHash pairs/skipped, guard levels, margin-cut edges
    rows_embedded: int = 0
    n_edges: int = 0
    n_groups: int = 0  # groups with 2 or more listings
    n_grouped: int = 0  # listings in such groups
    n_singletons: int = 0
    largest_group: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    table_versions: dict[str, int] = field(default_factory=dict)
    health: Any = None  # listing_dedup.quality.health.Health of a run that got that far
    # embeddings cache: signal -> {"reused": distinct contents whose vector was cached, "computed": embedded}
    cache: dict[str, dict[str, int]] = field(default_factory=dict)
    plan: str = ""  # full | incremental, and why (incremental.enabled; docs/incremental.md)
    cache_error: str = ""  # the cache's commit failed after the data tables committed (the data is fine)
    cache_warning: str = ""  # the cache could not be read: those vectors were recomputed (the run is fine)

    @property
    def vectors_reused(self) -> int:
        return sum(c["reused"] for c in self.cache.values())

    @property
    def vectors_computed(self) -> int:
        return sum(c["computed"] for c in self.cache.values())

    @property
    def health_warnings(self) -> str:
        """The health warnings' codes, comma-joined ("" when none or no health was computed)."""
        return ",".join(self.health.warning_codes) if self.health is not None else ""

    def as_text(self) -> str:
        lines = [
            f"listing-dedup run {self.run_id} for {self.run_date}",
            f"  rows in        {self.rows_in}",
            f"  rows kept      {self.rows_kept}",
            f"  rows rejected  {self.rows_rejected}"
            + (
                f"  ({', '.join(f'{k}: {v}' for k, v in sorted(self.rejects_by_reason.items()))})"
                if self.rejects_by_reason
                else ""
            ),
            f"  bad images     {self.images_unreadable} (kept listings whose image is missing or does not decode)",
            f"  embedded       {self.rows_embedded}",
            *([f"  plan           {self.plan}"] if self.plan else []),
            "  vectors        "
            + (
                f"{self.vectors_reused} reused from the embeddings cache, {self.vectors_computed} computed ("
                + ", ".join(f"{s} {c['reused']}/{c['computed']}" for s, c in sorted(self.cache.items()))
                + " reused/computed)"
                + (f"; NOT cached: {self.cache_error}" if self.cache_error else "")
                + (f"; WARNING: {self.cache_warning}" if self.cache_warning else "")
                if self.cache
                else "embeddings cache off (or no cached signal)"
            ),
            f"  match edges    {self.n_edges}"
            + (
                f"  ({', '.join(f'{k} {v}' for k, v in sorted(self.signal_counts.items()))})"
                if self.signal_counts
                else ""
            ),
            f"  groups found   {self.n_groups} groups of 2+ listings ({self.n_grouped} listings; largest "
            f"{self.largest_group}), {self.n_singletons} singletons",
            *(["  health"] + [f"    {line}" for line in self.health.as_lines()] if self.health is not None else []),
            "  seconds per stage: "
            + ", ".join(f"{k} {v:.1f}" for k, v in self.stage_seconds.items())
            + f" (total {sum(self.stage_seconds.values()):.1f})",
            f"  tables under {self.warehouse}:",
        ]
        for t in TABLES:
            v = self.table_versions.get(t)
            lines.append(
                f"    {t:<8} {self.warehouse.rstrip('/')}/{t}" + (f"  (Delta version {v})" if v is not None else "")
            )
        return redact_text("\n".join(lines))  # a warehouse URI's credentials are never printed


RUNS_SCHEMA = (
    "run_id string, status string, error string, started_at timestamp, finished_at timestamp, "
    "input_path string, config_json string, version string, rows_in long, rows_kept long, rows_rejected long, "
    "rejects_by_reason string, rows_embedded long, n_edges long, n_groups long, n_grouped long, "
    "n_singletons long, largest_group long, stage_seconds string, images_unreadable long, signal_counts string, "
    "health_json string, health_warnings string, vectors_reused long, vectors_computed long"
)


def write_run_row(spark, sink, summary: RunSummary, cfg, input_path, started, *, status: str, error: str = "") -> int:
    finished = dt.datetime.now(dt.timezone.utc)
    row = (
        summary.run_id,
        status,
        redact_text(error)[:4000],
        started,
        finished,
        redact_text(input_path),
        redact_json(cfg.to_json()),  # secrets (spark.hadoop.*.secret.key, URI credentials) never stored
        __version__,
        summary.rows_in,
        summary.rows_kept,
        summary.rows_rejected,
        json.dumps(summary.rejects_by_reason, sort_keys=True),
        summary.rows_embedded,
        summary.n_edges,
        summary.n_groups,
        summary.n_grouped,
        summary.n_singletons,
        summary.largest_group,
        json.dumps(summary.stage_seconds),
        summary.images_unreadable,
        json.dumps(summary.signal_counts, sort_keys=True),
        json.dumps(summary.health.to_dict(), sort_keys=True) if summary.health is not None else None,
        summary.health_warnings if summary.health is not None else None,
        summary.vectors_reused if summary.cache else None,
        summary.vectors_computed if summary.cache else None,
    )
    df = spark.createDataFrame([row], RUNS_SCHEMA).coalesce(1)
    older = _columns_missing_from(sink, "runs", df.columns)
    if older and status == "succeeded":  # a runs table created by an earlier version gains the columns
        sink.add_columns("runs", spark_to_arrow_schema(df.schema), older)
        older = _columns_missing_from(sink, "runs", df.columns)
    if older:  # a failed attempt records what the earlier table has room for
        log.warning("the runs table predates column(s) %s: not recorded in this failed attempt's row", older)
        df = df.drop(*older)
    have = _table_columns(sink, "runs")
    if have:  # the table's column order (columns added later come last)
        df = df.select(*[c for c in have if c in df.columns])
    return sink.write(df, "runs", summary.run_date, mode="append").version


def check_runs_table(spark, sink: DeltaSink) -> None:
    """Raise :class:`SinkError` when the row :func:`write_run_row` would append does not fit the
    existing ``runs`` table (other types, columns this version does not know, other
    partitioning). Called before the data tables are committed, so such a table fails the run
    while every table is still at its previous version. Columns the table lacks are not
    checked: the row adds them (succeeded) or leaves them out (failed)."""
    from pyspark.sql import types as T

    schema = spark.createDataFrame([], RUNS_SCHEMA).schema
    have = _table_columns(sink, "runs")
    if have:  # the columns the table has, in its order
        by_name = {f.name: f for f in schema.fields}
        schema = T.StructType([by_name[c] for c in have if c in by_name])
    sink.check_schema("runs", spark_to_arrow_schema(schema))


@dataclass(frozen=True)
class PreviousRun:
    """A succeeded attempt recorded in the ``runs`` table."""

    run_id: str
    run_date: str
    rows_in: int
    finished_at: dt.datetime
    rows_kept: int | None = None  # None: not recorded

    def describe(self) -> str:
        return f"run {self.run_id} for {self.run_date}, finished {self.finished_at:%Y-%m-%d %H:%M} UTC"


def last_succeeded_run(sink: DeltaSink) -> PreviousRun | None:
    """The most recent ``succeeded`` row of the ``runs`` table by ``finished_at``, whatever its
    ``run_date`` (a nightly input is a snapshot of the whole catalog, so the last good run is
    the best guess of its size; a backfill of old dates compares with it too). Failed and
    refused attempts never count. None when the table or such a row does not exist."""
    import pandas as pd
    from deltalake import DeltaTable

    uri = sink.table_uri("runs")
    need = ["run_id", "run_date", "status", "rows_in", "finished_at"]
    try:
        if not DeltaTable.is_deltatable(uri, sink.storage_options):
            return None
        table = DeltaTable(uri, storage_options=sink.storage_options)
        have = {f.name for f in table.schema().fields}
        if not set(need) <= have:
            gone = sorted(set(need) - have)
            log.warning("the runs table has no column(s) %s: no previous run to compare the input with", gone)
            return None
        df = table.to_pandas(
            columns=need + ["rows_kept"] * ("rows_kept" in have), filters=[("status", "=", "succeeded")]
        )
    except Exception as e:  # storage or credentials: the runs row could not be written either
        raise SinkError(f"cannot read the runs table at {uri}: {first_line(e)}") from e
    df = df.dropna(subset=["finished_at", "rows_in"])
    if df.empty:
        return None
    last = df.sort_values("finished_at", kind="stable").iloc[-1]
    kept = last.get("rows_kept")  # None: the table has no such column
    return PreviousRun(
        run_id=str(last["run_id"]),
        run_date=str(last["run_date"]),
        rows_in=int(last["rows_in"]),
        finished_at=last["finished_at"].to_pydatetime(),
        rows_kept=int(kept) if kept is not None and pd.notna(kept) else None,
    )


def _table_columns(sink: DeltaSink, table: str) -> list[str]:
    """The existing ``table``'s columns in order ([] when it does not exist yet)."""
    from deltalake import DeltaTable

    uri = sink.table_uri(table)
    if not DeltaTable.is_deltatable(uri, sink.storage_options):
        return []
    return [f.name for f in DeltaTable(uri, storage_options=sink.storage_options).schema().fields]


def _columns_missing_from(sink: DeltaSink, table: str, columns: list[str]) -> list[str]:
    """``columns`` the existing ``table`` does not have (none when the table does not exist yet)."""
    have = _table_columns(sink, table)
    return [c for c in columns if c not in have] if have else []
