"""The executor side of a Delta write: each Spark partition becomes one Parquet file.

``<table>/run_date=<date>/part-<partition>-<uuid>.parquet`` (Hive-style path; the file itself
does not hold ``run_date``, as Delta expects). Each task yields one small row per file
(relative path, size, row count, Delta stats JSON) for the driver to commit
(:mod:`listing_dedup.sink.delta`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from listing_dedup.faults import maybe_fail_once
from listing_dedup.sink.schemas import PARTITION_COLUMN, FileStats

FILE_ROW_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("rows", pa.int64()),
        pa.field("stats", pa.string()),
        pa.field("mtime_ms", pa.int64()),
    ]
)


@dataclass(frozen=True)
class StagedFile:
    """One Parquet file written by an executor, not yet committed."""

    path: str  # relative to the table root, e.g. "run_date=2024-05-01/part-00003-<uuid>.parquet"
    size: int  # bytes
    rows: int
    stats: str  # Delta stats JSON (numRecords, minValues, maxValues, nullCount)
    mtime_ms: int  # when the executor finished the file (ms since the epoch)


# --------------------------------------------------------------------------------------
# executor side


def file_writer(
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
        stats = FileStats(schema)
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
        maybe_fail_once("write", fail_stage)  # the file is written, the task dies before reporting it
        size = filesystem.get_file_info(full).size
        row = {
            "path": [rel],
            "size": [int(size)],
            "rows": [stats.rows],
            "stats": [stats.to_json()],
            "mtime_ms": [int(time.time() * 1000)],
        }
        yield pa.RecordBatch.from_pydict(row, schema=FILE_ROW_SCHEMA)

    return write_partition


def spark_file_row_schema() -> Any:
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
