"""The ``state_log`` row appended from the driver (sink/state.append_state_log, Arrow) is the
row the Spark write of STATE_LOG_DDL committed: the same schema, values and reader frame."""

from __future__ import annotations

import datetime as dt

import pandas as pd
from listing_dedup.sink.delta import DeltaSink
from listing_dedup.sink.schemas import spark_to_arrow_schema
from listing_dedup.sink.state import STATE_LOG, STATE_LOG_DDL, STATE_LOG_SCHEMA, append_state_log, state_log


def test_the_driver_row_is_the_spark_written_row(spark, tmp_path):
    from deltalake import DeltaTable

    at = dt.datetime(2026, 7, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc)
    rows = [
        ("r1", None, "2026-07-01.abc", "full", "the first night", None, None, None, None, None, None, at),
        ("r2", "2026-07-01", "2026-07-01.abc", "incremental", "continues", 3, 2, 1, 94, 5, 0, at),
    ]
    assert STATE_LOG_SCHEMA == spark_to_arrow_schema(spark.createDataFrame([], STATE_LOG_DDL).schema)
    old, new = DeltaSink(str(tmp_path / "old")), DeltaSink(str(tmp_path / "new"))
    for date, row in zip(["2026-07-01", "2026-07-02"], rows, strict=True):
        df = spark.createDataFrame([row], STATE_LOG_DDL).coalesce(1)
        v_old = old.write(df, STATE_LOG, date, mode="append").version
        assert append_state_log(new, date, row) == v_old
    a, b = DeltaTable(old.table_uri(STATE_LOG)), DeltaTable(new.table_uri(STATE_LOG))
    assert a.schema() == b.schema()
    assert a.metadata().partition_columns == b.metadata().partition_columns
    pd.testing.assert_frame_equal(
        state_log(old).sort_values("run_id", ignore_index=True), state_log(new).sort_values("run_id", ignore_index=True)
    )
    assert (
        state_log(new)["committed_at"].dt.tz is not None and (state_log(new)["committed_at"] == pd.Timestamp(at)).all()
    )
