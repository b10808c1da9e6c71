"""An embeddings cache that cannot be read fails no run (issue 29 row 10): a Parquet file of the
``embeddings`` table that the Delta log lists but that does not decode is skipped, the contents
it held are recomputed, and the summary says so; the run's tables are the ones a readable cache
gives. The lexical signal alone (its hashed counts are what the cache holds here)."""

from __future__ import annotations

import pandas as pd
import pytest
from _rel import LEXICAL, config, job, snapshot

DATE = "2026-05-01"
CATALOG = [
    ("a1", "Rice cooker digital Miyako 1.8 liter"),
    ("a2", "MIYAKO RICE COOKER DIGITAL 1.8 LITER"),
    ("b1", "Mouse wireless Logitech M331 silent click"),
    ("b2", "Logitech M331 silent click wireless mouse"),
    ("c1", "Hijab segi empat voal motif bunga"),
]


@pytest.mark.slow
def test_a_corrupt_cache_file_is_recomputed_and_the_run_succeeds(spark, tmp_path):
    path = tmp_path / "listings.parquet"
    pd.DataFrame(CATALOG, columns=["posting_id", "title"]).to_parquet(path, index=False)
    wh = tmp_path / "wh"
    rc, err, first = job(spark, config(*LEXICAL), str(path), DATE, str(wh))
    assert rc == 0, err
    assert first.cache["lexical"] == {"reused": 0, "computed": 5} and not first.cache_warning
    before = snapshot(str(wh), DATE)

    files = sorted((wh / "embeddings").rglob("*.parquet"))
    assert files
    files[0].write_bytes(b"PAR1" + b"\x00not parquet" * 50 + b"PAR1")  # listed by the log, does not decode

    rc, err, again = job(spark, config(*LEXICAL), str(path), DATE, str(wh))
    assert rc == 0, err  # the old code: exit 1 on FAILED_READ_FILE
    assert again.rows_in == again.rows_kept + again.rows_rejected == len(CATALOG)
    assert again.cache_warning.startswith(f"the embeddings cache at {wh.resolve() / 'embeddings'} could not be read (")
    text = again.as_text()
    assert "; WARNING: the embeddings cache at " in text and "recomputed" in text
    assert again.cache["lexical"]["computed"] >= 1  # what the corrupt file held
    assert again.cache["lexical"]["reused"] + again.cache["lexical"]["computed"] == 5
    for t, df in snapshot(str(wh), DATE).items():  # the same tables as with a readable cache
        drop = [c for c in ("run_id",) if c in df.columns]  # each run's own id
        pd.testing.assert_frame_equal(df.drop(columns=drop), before[t].drop(columns=drop))
