"""What a night reads of the nights before it: the date it continues, that date's groups and,
for an incremental night, its match state (the tables and epoch files of docs/incremental.md).

The previous night of ``run_date`` is the latest ``run_date`` *before* it with a succeeded row in
the ``runs`` table. Never the date itself: a rerun of a date continues the same previous night
as its first run, so it gives the same ids and the same ``group_changes`` (idempotent), and a
failed attempt, whose ``runs`` row says ``failed``, is never continued."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from listing_dedup.dates import check_run_date
from listing_dedup.errors import SinkError, first_line
from listing_dedup.sink.delta import DeltaSink

log = logging.getLogger(__name__)


class StateConflictError(SinkError):
    """Another run committed the match state while this one ran (exit 1; nothing committed)."""


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


# --------------------------------------------------------------------------------------
# the match state of an incremental night (docs/incremental.md)

# the state's Delta tables (partitioned by run_date, committed after the data tables): their data columns
_RID = ("run_id", pa.string())
STATE_SCHEMAS: dict[str, pa.Schema] = {
    "listing_state": pa.schema([("posting_id", pa.string()), ("digest", pa.string()), ("phash", pa.string()), _RID]),
    "neighbours": pa.schema(
        [
            ("round", pa.int32()),
            ("src", pa.string()),
            ("dst", pa.string()),
            ("score", pa.float32()),
            ("rank", pa.int32()),  # 1 = nearest (score desc, then dst): a night's top k is a filter
            _RID,
        ]
    ),
    "vectors": pa.schema([("round", pa.int32()), ("posting_id", pa.string()), ("emb", pa.list_(pa.float32())), _RID]),
    # the night's pHash pairs, each once (src < dst): the next night searches only the blocks its delta touches
    "phash_pairs": pa.schema([("src", pa.string()), ("dst", pa.string()), ("bits", pa.int32()), _RID]),
}
# columns a state table gained after its first version: a table without them is still read (the
# reader makes them: rounds.ranked) and gains them at its next commit
STATE_ADDED_COLUMNS: dict[str, tuple[str, ...]] = {"neighbours": ("rank",), "listing_state": ("phash",)}
STATE_LOG = "state_log"  # one row a committed night's state (appended)
STATE_LOG_DDL = (
    "run_id string, base_date string, epoch string, plan string, reason string, "
    "added long, changed long, deleted long, unchanged long, searched long, stale long, committed_at timestamp"
)
# the Arrow schema the Delta files of STATE_LOG_DDL are written with (sink/schemas.spark_to_arrow_schema's)
STATE_LOG_SCHEMA = pa.schema(
    [(c, pa.string()) for c in ("run_id", "base_date", "epoch", "plan", "reason")]
    + [(c, pa.int64()) for c in ("added", "changed", "deleted", "unchanged", "searched", "stale")]
    + [("committed_at", pa.timestamp("us", tz="UTC"))]
)
EPOCHS_DIR = "_state/epochs"


def append_state_log(sink: DeltaSink, run_date: str, row: tuple) -> int:
    """Append one ``state_log`` row (``row``: the values of :data:`STATE_LOG_DDL` in order)
    from the driver (``DeltaSink.stage_arrow``: no Spark job for one row); the table's version."""
    table = pa.Table.from_pylist([dict(zip(STATE_LOG_SCHEMA.names, row, strict=True))], schema=STATE_LOG_SCHEMA)
    return sink.commit(sink.stage_arrow(table, STATE_LOG, run_date), mode="append").version


@dataclass(frozen=True)
class Epoch:
    """What a full night fitted and the incremental nights after it apply unchanged: the
    lexical idf (None without the lexical signal) and the coarse quantizer of the fused vector
    space; ``fingerprint``: the settings that shape vectors and lists (a night whose settings
    differ cannot continue this epoch); ``listings``: the catalog size it was fitted on."""

    epoch_id: str
    started: str  # the run_date of the full night
    reason: str
    fingerprint: str
    listings: int
    centroids: np.ndarray
    idf: np.ndarray | None = None

    def folder(self, warehouse: str) -> str:
        return epoch_folder(warehouse, self.epoch_id)


def epoch_folder(warehouse: str, epoch_id: str) -> str:
    return f"{str(warehouse).rstrip('/')}/{EPOCHS_DIR}/{epoch_id}"


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def save_epoch(warehouse: str, epoch: Epoch) -> str:
    """Write the epoch's files (``epoch.json``, ``centroids.npy``, ``idf.npy``) under
    ``<warehouse>/_state/epochs/<epoch_id>/``: written once by the full night, before its tables
    are committed (a crashed night leaves an unreferenced folder, never a changed epoch)."""
    from listing_dedup.search.indexer import _write_bytes

    folder = epoch.folder(warehouse)
    try:
        _write_bytes(f"{folder}/centroids.npy", _npy(np.asarray(epoch.centroids, dtype=np.float32)))
        if epoch.idf is not None:
            _write_bytes(f"{folder}/idf.npy", _npy(np.asarray(epoch.idf)))
        meta = {
            "epoch": epoch.epoch_id,
            "started": epoch.started,
            "reason": epoch.reason,
            "fingerprint": epoch.fingerprint,
            "listings": epoch.listings,
            "has_idf": epoch.idf is not None,
        }
        _write_bytes(f"{folder}/epoch.json", json.dumps(meta, sort_keys=True).encode())
    except OSError as e:
        raise SinkError(f"cannot write the epoch files at {folder}: {first_line(e)}") from e
    return folder


def load_epoch(warehouse: str, epoch_id: str) -> Epoch:
    """The epoch ``epoch_id`` as :func:`save_epoch` wrote it (:class:`SinkError` when a file is
    missing or unreadable: the state that references it cannot be continued)."""
    from listing_dedup.search.indexer import _read_bytes

    folder = epoch_folder(warehouse, epoch_id)
    try:
        meta = json.loads(_read_bytes(f"{folder}/epoch.json"))
        centroids = np.load(io.BytesIO(_read_bytes(f"{folder}/centroids.npy")), allow_pickle=False)
        idf = np.load(io.BytesIO(_read_bytes(f"{folder}/idf.npy")), allow_pickle=False) if meta["has_idf"] else None
    except (OSError, ValueError, KeyError) as e:
        raise SinkError(f"cannot read the epoch {epoch_id} at {folder}: {first_line(e)}") from e
    return Epoch(
        epoch_id=meta["epoch"],
        started=meta["started"],
        reason=meta["reason"],
        fingerprint=meta["fingerprint"],
        listings=int(meta["listings"]),
        centroids=centroids,
        idf=idf,
    )


@dataclass(frozen=True)
class StateRef:
    """A committed night's state: its date, the date it continued, its epoch and plan."""

    run_date: str
    base_date: str | None
    epoch: str
    plan: str  # full | incremental
    run_id: str


def state_log(sink: DeltaSink) -> pd.DataFrame:
    """The ``state_log`` rows (empty frame without a table)."""
    from deltalake import DeltaTable

    uri = sink.table_uri(STATE_LOG)
    cols = ["run_date", *(c.split()[0] for c in STATE_LOG_DDL.split(", "))]
    try:
        if not DeltaTable.is_deltatable(uri, sink.storage_options):
            return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
        table = DeltaTable(uri, storage_options=sink.storage_options)
        have = [f.name for f in table.schema().fields]
        return table.to_pandas(columns=[c for c in cols if c in have])
    except Exception as e:  # noqa: BLE001 - storage or credentials
        raise SinkError(f"cannot read the state log at {uri}: {first_line(e)}") from e


def base_state(sink: DeltaSink, run_date: str) -> StateRef | None:
    """The state tonight continues: that of the previous night (:func:`previous_date`), when its
    state was committed (its last ``state_log`` row); None otherwise (a full night)."""
    prev = previous_date(sink, run_date)
    if prev is None:
        return None
    log_ = state_log(sink)
    rows = log_[log_["run_date"] == prev].sort_values("committed_at", kind="stable")
    if rows.empty:
        return None
    r = rows.iloc[-1]
    base = None if pd.isna(r["base_date"]) else str(r["base_date"])
    return StateRef(prev, base, str(r["epoch"]), str(r["plan"]), str(r["run_id"]))


def state_dates(sink: DeltaSink) -> set[str]:
    """The dates with a committed state."""
    return set(state_log(sink)["run_date"].dropna().astype(str))


def newest_state_date(sink: DeltaSink) -> str | None:
    dates = state_dates(sink)
    return max(dates) if dates else None


def check_state_unmoved(sink: DeltaSink, run_date: str, seen: set[str]) -> None:
    """Raise :class:`~listing_dedup.errors.StateConflictError` when another run committed the
    state of another date since this run read ``seen`` (:func:`state_dates` at its start): two
    runs must not update one state at once. Called before this run's first commit, so it fails
    with every table at its previous version (its staged files stay orphans for ``vacuum``)."""
    new = sorted(state_dates(sink) - seen - {run_date})
    if new:
        raise StateConflictError(
            f"another run committed the match state of {', '.join(new)} while this run of {run_date} ran: "
            "nothing was committed; rerun it"
        )


def read_state(spark: Any, sink: DeltaSink, table: str, run_date: str) -> Any:
    """A state table's ``run_date`` partition as a Spark DataFrame (its data columns, no
    ``run_id``; a column of ``STATE_ADDED_COLUMNS`` the table does not have yet is left out)."""
    from listing_dedup.sink.verify import snapshot_files, snapshot_frame

    cols = tuple(n for n in STATE_SCHEMAS[table].names if n != "run_id")
    added = STATE_ADDED_COLUMNS.get(table, ())
    if added:
        _, arrow = snapshot_files(sink.warehouse, table, run_date, storage_options=sink.storage_options)
        cols = tuple(c for c in cols if c not in added or c in arrow.names)
    return snapshot_frame(spark, sink.warehouse, table, run_date, cols, storage_options=sink.storage_options)


def prune_state(sink: DeltaSink, keep_from: str) -> None:
    """Drop the state tables' partitions older than ``keep_from`` (the date tonight continued:
    kept, so that a rerun of tonight finds it) in one delete commit a table. Their files stay
    until ``vacuum``, so a run still reading them is unaffected. A failure is logged only: the
    state is committed, the next night prunes again."""
    from deltalake import DeltaTable

    check_run_date(keep_from)
    for table in STATE_SCHEMAS:
        uri = sink.table_uri(table)
        try:
            if DeltaTable.is_deltatable(uri, sink.storage_options):
                DeltaTable(uri, storage_options=sink.storage_options).delete(f"run_date < '{keep_from}'")
        except Exception as e:  # noqa: BLE001 - the night's state is committed; only old partitions stay
            log.warning("could not prune the %s partitions before %s: %s", table, keep_from, first_line(e))
