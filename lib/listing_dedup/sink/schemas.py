"""Arrow schemas of the Delta tables, table paths, and the per-file Delta statistics.

Spark schemas are converted with :func:`spark_to_arrow_schema` (timestamps become UTC
microsecond timestamps, every field nullable, no field metadata), so strings, integers,
doubles, arrays, maps, structs and timestamps survive a write and a read. The statistics
(:class:`FileStats`) are computed on the executors while they write each file."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from listing_dedup.errors import InputError

PARTITION_COLUMN = "run_date"

_TABLE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_STAT_STRING_CHARS = 32  # like Delta Spark: string min/max stats are prefixes of this length


# --------------------------------------------------------------------------------------
# schemas


# The data columns (no ``run_date``) that the job writes to each output table, as the files
# hold them: what the job checks the existing tables against before any work, so that a table
# another writer changed fails the run in its first seconds instead of after the embedding and
# the search (the check is repeated on the staged writes before the first commit, for a table
# changed meanwhile). tests/reliability/test_data_safety.py and tests/test_job.py check them
# against what a run commits.
#
# Every data table carries the ``run_id`` of the run that wrote the row (the ``runs`` table's
# key): the job commits one table after the other, so a run stopped between two commits leaves
# the date's tables from two runs, which sink/verify.py tells from the ids.
_F32 = pa.float32()
RUN_ID_COLUMN = "run_id"
_RUN_ID = (RUN_ID_COLUMN, pa.string())
OUTPUT_DATA_SCHEMAS: dict[str, pa.Schema] = {
    # kept_by / signal_scores / phash_distance: why each match was kept, aligned with match_ids
    # (graph/explain.py: the rule or model, the per-signal scores at edge time, the pHash distance)
    "matches": pa.schema(
        [
            ("posting_id", pa.string()),
            ("match_ids", pa.list_(pa.string())),
            ("scores", pa.list_(_F32)),
            ("kept_by", pa.list_(pa.string())),
            ("signal_scores", pa.list_(pa.map_(pa.string(), _F32))),
            ("phash_distance", pa.list_(pa.int32())),
            _RUN_ID,
        ]
    ),
    "clusters": pa.schema(
        [("posting_id", pa.string()), ("group_id", pa.string()), ("group_size", pa.int32()), _RUN_ID]
    ),
    "rejects": pa.schema([("posting_id", pa.string()), ("reason", pa.string()), ("raw", pa.string()), _RUN_ID]),
    "candidates": pa.schema(
        [
            ("posting_id", pa.string()),
            ("candidate_id", pa.string()),
            ("score", _F32),
            ("signal_scores", pa.map_(pa.string(), _F32)),
            _RUN_ID,
        ]
    ),
    # the night's changes to the groups (graph/lineage.py): one row per new, merged, split,
    # dissolved or continued-with-changes group
    "group_changes": pa.schema(
        [
            ("kind", pa.string()),
            ("old_id", pa.string()),
            ("new_id", pa.string()),
            ("old_size", pa.int32()),
            ("new_size", pa.int32()),
            ("shared", pa.int32()),
            ("previous_date", pa.string()),
            _RUN_ID,
        ]
    ),
}
# The columns of OUTPUT_DATA_SCHEMAS added after the first release: a table an earlier version
# created lacks them; the job accepts it and adds them (nullable, a metadata-only commit) at its
# next commit, where the earlier rows read null (DeltaSink.check / commit, ``added_columns``).
ADDED_COLUMNS: dict[str, tuple[str, ...]] = {t: (RUN_ID_COLUMN,) for t in OUTPUT_DATA_SCHEMAS}
ADDED_COLUMNS["matches"] = ("kept_by", "signal_scores", "phash_distance", RUN_ID_COLUMN)  # issue 32's explanations

# The reviewers' tables (sink/decisions.py, ``listing-dedup decide``), appended, partitioned by the
# UTC date the command ran (``run_date``): ``decisions`` holds the accepted verdicts (the latest per
# pair wins), ``decision_rejects`` the refused input rows with their reason. ``digest_a``/``digest_b``:
# each listing's content digest when the command was given the catalog (null otherwise);
# ``batch_id`` names one command run in both tables.
_TS = pa.timestamp("us", tz="UTC")
DECISION_SCHEMAS: dict[str, pa.Schema] = {
    "decisions": pa.schema(
        [
            ("posting_id_a", pa.string()),
            ("posting_id_b", pa.string()),
            ("verdict", pa.string()),
            ("source", pa.string()),
            ("decided_at", _TS),
            ("note", pa.string()),
            ("digest_a", pa.string()),
            ("digest_b", pa.string()),
            ("batch_id", pa.string()),
            ("recorded_at", _TS),
        ]
    ),
    "decision_rejects": pa.schema(
        [
            ("posting_id_a", pa.string()),
            ("posting_id_b", pa.string()),
            ("verdict", pa.string()),
            ("reason", pa.string()),
            ("raw", pa.string()),
            ("batch_id", pa.string()),
        ]
    ),
    # the night's review queue (``listing-dedup review-queue``, quality/review.py): one row per
    # ranked pair; a rerun replaces the date's partition
    "review_queue": pa.schema(
        [
            ("rank", pa.int64()),
            ("posting_id_a", pa.string()),
            ("posting_id_b", pa.string()),
            ("probability", pa.float64()),
            ("priority", pa.float64()),
            ("reason", pa.string()),
            ("group_a", pa.string()),
            ("group_b", pa.string()),
            ("group_size_a", pa.int64()),
            ("group_size_b", pa.int64()),
            ("title_a", pa.string()),
            ("title_b", pa.string()),
            ("image_a", pa.string()),
            ("image_b", pa.string()),
            ("signal_scores", pa.map_(pa.string(), _F32)),
            _RUN_ID,
        ]
    ),
}


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


def delta_schema(data_schema: pa.Schema) -> Any:
    from deltalake import Schema as DeltaSchema

    return DeltaSchema.from_arrow(table_arrow_schema(data_schema))


# --------------------------------------------------------------------------------------
# paths and checks


def _has_scheme(uri: str) -> bool:
    return "://" in uri


def table_uri(warehouse: str, table: str) -> str:
    """``<warehouse>/<table>``; a local warehouse path is made absolute."""
    check_table(table)
    warehouse = str(warehouse)
    if _has_scheme(warehouse):
        return warehouse.rstrip("/") + "/" + table
    return os.path.join(os.path.abspath(warehouse), table)


def check_table(table: str) -> None:
    if not isinstance(table, str) or not _TABLE_RE.match(table):
        raise InputError(f"invalid table name {table!r}: use letters, digits and _ . -")


# --------------------------------------------------------------------------------------
# Delta file statistics (computed on the executors)


def _ms_iso(ms: int) -> str:
    t = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(milliseconds=ms)  # noqa: UP017 (3.10)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FileStats:
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
