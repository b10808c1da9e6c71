"""What a night reads of the nights before it: the date it continues and that date's groups.

The previous night of ``run_date`` is the latest ``run_date`` *before* it with a succeeded row in
the ``runs`` table. Never the date itself: a rerun of a date continues the same previous night
as its first run, so it gives the same ids and the same ``group_changes`` (idempotent), and a
failed attempt, whose ``runs`` row says ``failed``, is never continued."""

from __future__ import annotations

import logging
from typing import Any

from listing_dedup.dates import check_run_date
from listing_dedup.errors import SinkError, first_line
from listing_dedup.sink.delta import DeltaSink

log = logging.getLogger(__name__)


def succeeded_dates(sink: DeltaSink) -> list[str]:
    """The distinct ``run_date``s with a succeeded ``runs`` row, sorted ([] without a table)."""
    from deltalake import DeltaTable

    uri = sink.table_uri("runs")
    try:
        if not DeltaTable.is_deltatable(uri, sink.storage_options):
            return []
        table = DeltaTable(uri, storage_options=sink.storage_options)
        df = table.to_pandas(columns=["run_date", "status"], filters=[("status", "=", "succeeded")])
    except Exception as e:  # storage or credentials: the runs row could not be written either
        raise SinkError(f"cannot read the runs table at {uri}: {first_line(e)}") from e
    return sorted(set(df["run_date"].dropna().astype(str)))


def previous_date(sink: DeltaSink, run_date: str) -> str | None:
    """The latest date before ``run_date`` whose run succeeded (None: a first night)."""
    run_date = check_run_date(run_date)
    before = [d for d in succeeded_dates(sink) if d < run_date]
    return before[-1] if before else None


def previous_clusters(spark: Any, sink: DeltaSink, run_date: str) -> tuple[str | None, Any]:
    """``(previous date, its clusters as a Spark DataFrame posting_id, group_id)``, or
    ``(None, None)`` on a first night (no earlier succeeded date, or no ``clusters`` table)."""
    from deltalake import DeltaTable

    from listing_dedup.sink.verify import snapshot_frame

    prev = previous_date(sink, run_date)
    if prev is None or not DeltaTable.is_deltatable(sink.table_uri("clusters"), sink.storage_options):
        return None, None
    df = snapshot_frame(
        spark, sink.warehouse, "clusters", prev, ("posting_id", "group_id"), storage_options=sink.storage_options
    )
    log.info("group ids continue those of %s", prev)
    return prev, df
