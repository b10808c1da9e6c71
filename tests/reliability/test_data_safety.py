"""Data safety around the commit: empty or shrunken inputs, schema checks before the first
commit, the runs row after the data commits, vacuum retention, one-line config/input errors."""

from __future__ import annotations

import pandas as pd
from _rel import config, job
from listing_dedup.sink.delta import read_table
from listing_dedup.sink.verify import verify_run

DATE = "2026-04-01"


def test_empty_and_all_null_inputs_write_empty_partitions(spark, tmp_path):
    wh = str(tmp_path / "wh")
    # pandas writes an empty object column with no type (Parquet null, read by Spark as int)
    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"posting_id": pd.Series([], dtype=object), "title": pd.Series([], dtype=object)}).to_parquet(empty)
    rc, err, s = job(spark, config(), str(empty), DATE, wh)
    assert rc == 0, err
    assert (s.rows_in, s.rows_kept, s.rows_rejected, s.n_groups) == (0, 0, 0, 0)
    for t in ("matches", "clusters", "rejects"):
        assert read_table(wh, t, DATE).empty
    assert verify_run(wh, DATE).rows_in == 0

    # optional columns that are entirely null are accepted (read as string)
    nulls = tmp_path / "nulls.parquet"
    pd.DataFrame(
        {"posting_id": ["a", "b"], "title": ["Payung lipat", None], "image": [None, None], "image_phash": [None, None]}
    ).to_parquet(nulls)
    rc, err, s = job(spark, config(), str(nulls), "2026-04-02", wh)
    assert rc == 0, err
    assert (s.rows_in, s.rows_kept, s.rejects_by_reason) == (2, 1, {"no_title_no_image": 1})
    assert verify_run(wh, "2026-04-02").ok
