"""The ``runs`` table: one row per attempt of the job (an append-only audit log), and the
:class:`RunSummary` it records (also what the job prints)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field

from listing_dedup import __version__
from listing_dedup.sink.delta import DeltaSink

log = logging.getLogger(__name__)

TABLES = ("matches", "clusters", "rejects", "runs")  # plus "candidates" when output.candidates is on


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
    signal_counts: dict[str, int] = field(default_factory=dict)  # pHash pairs/skipped, guard levels
    rows_embedded: int = 0
    n_edges: int = 0
    n_groups: int = 0  # groups with 2 or more listings
    n_grouped: int = 0  # listings in such groups
    n_singletons: int = 0
    largest_group: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    table_versions: dict[str, int] = field(default_factory=dict)

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
            f"  match edges    {self.n_edges}"
            + (
                f"  ({', '.join(f'{k} {v}' for k, v in sorted(self.signal_counts.items()))})"
                if self.signal_counts
                else ""
            ),
            f"  groups found   {self.n_groups} groups of 2+ listings ({self.n_grouped} listings; largest "
            f"{self.largest_group}), {self.n_singletons} singletons",
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
        return "\n".join(lines)


RUNS_SCHEMA = (
    "run_id string, status string, error string, started_at timestamp, finished_at timestamp, "
    "input_path string, config_json string, version string, rows_in long, rows_kept long, rows_rejected long, "
    "rejects_by_reason string, rows_embedded long, n_edges long, n_groups long, n_grouped long, "
    "n_singletons long, largest_group long, stage_seconds string, images_unreadable long, signal_counts string"
)


def write_run_row(spark, sink, summary: RunSummary, cfg, input_path, started, *, status: str, error: str = "") -> int:
    finished = dt.datetime.now(dt.timezone.utc)
    row = (
        summary.run_id,
        status,
        error[:4000],
        started,
        finished,
        input_path,
        cfg.to_json(),
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
    )
    df = spark.createDataFrame([row], RUNS_SCHEMA).coalesce(1)
    older = _columns_missing_from(sink, "runs", df.columns)
    if older:  # a runs table created by an earlier version: keep its schema, leave the new counters out
        log.warning("the runs table predates column(s) %s: not recorded there (move it aside to get them)", older)
        df = df.drop(*older)
    return sink.write(df, "runs", summary.run_date, mode="append").version


def _columns_missing_from(sink: DeltaSink, table: str, columns: list[str]) -> list[str]:
    """``columns`` the existing ``table`` does not have (none when the table does not exist yet)."""
    from deltalake import DeltaTable

    uri = sink.table_uri(table)
    if not DeltaTable.is_deltatable(uri, sink.storage_options):
        return []
    have = {f.name for f in DeltaTable(uri, storage_options=sink.storage_options).schema().fields}
    return [c for c in columns if c not in have]
