"""A driver killed between staging and committing leaves every table at its previous
version (the next run succeeds, vacuum removes the orphans); two dates committed by two
processes (a child and the test's own) at the same moment both land. The commit path is under
test, not the signals: every run here (in-process and child) uses the lexical signal alone
(``LEXICAL``: no text model to load in each child and Python worker). Its hashed term counts go
through the embeddings cache like a text model's vectors (tests/test_cache.py checks both kinds
of entry), so the cache must survive the kill and the race like the data tables."""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from _rel import (
    LEXICAL,
    cache_versions,
    cli_args,
    config,
    data_files,
    groups,
    job,
    live_files,
    snapshot,
    spawn,
    versions,
)
from listing_dedup.sink import delta
from listing_dedup.sink.delta import read_table, vacuum
from listing_dedup.sink.verify import verify_run

DATE = "2026-06-01"
V1 = [("a1", "Rice cooker digital Miyako 1.8 liter"), ("a2", "MIYAKO RICE COOKER DIGITAL 1.8 LITER"),
      ("z1", "Susu UHT coklat 200ml"), (None, "no id")]  # fmt: skip
V2 = [("b1", "Mouse wireless Logitech M331 silent click"), ("b2", "Logitech M331 silent click wireless mouse"),
      ("b3", "Hijab segi empat voal motif bunga"), ("b3", "duplicate")]  # fmt: skip


NEW3 = {"lexical": {"reused": 0, "computed": 3}}  # a run of 3 titles the cache lacks


def cache_files(warehouse: str) -> set[str]:
    root = Path(warehouse)
    return {str(p.relative_to(root)) for t in ("embeddings", "embeddings_used") for p in (root / t).rglob("*.parquet")}


def catalog(path, rows) -> str:
    pd.DataFrame(rows, columns=["posting_id", "title"]).to_parquet(path, index=False)
    return str(path)


@pytest.mark.slow
def test_killed_driver_before_commit_leaves_previous_version(spark, tmp_path):
    wh = str(tmp_path / "wh")
    v1, v2 = catalog(tmp_path / "v1.parquet", V1), catalog(tmp_path / "v2.parquet", V2)
    rc, err, s1 = job(spark, config(*LEXICAL), v1, DATE, wh)
    assert rc == 0, err
    assert s1.cache == NEW3  # 3 distinct titles kept
    before, before_versions, before_files = snapshot(wh, DATE), versions(wh), data_files(wh)
    before_cache, before_cache_files = cache_versions(wh), cache_files(wh)
    before_vectors = read_table(wh, "embeddings")

    p = spawn("kill", *cli_args(v2, DATE, wh, *LEXICAL))
    _, err = p.communicate(timeout=900)
    assert p.returncode == -signal.SIGKILL, err[-3000:]
    orphans = data_files(wh) - before_files
    # the executors had written every table's files, the cache's new vectors and used keys too ...
    assert {f.split("/")[0] for f in orphans} == {"matches", "clusters", "rejects"}
    assert {f.split("/")[0] for f in cache_files(wh) - before_cache_files} == {"embeddings", "embeddings_used"}
    # ... but nothing was committed: each table reads as its previous version
    assert versions(wh) == before_versions
    assert cache_versions(wh) == before_cache
    pd.testing.assert_frame_equal(read_table(wh, "embeddings"), before_vectors)
    for t, df in snapshot(wh, DATE).items():
        pd.testing.assert_frame_equal(df, before[t])
    assert read_table(wh, "runs", DATE)["status"].tolist() == ["succeeded"]  # the killed run left no row

    rc, err, s = job(spark, config(*LEXICAL), v2, DATE, wh)  # the next run succeeds
    assert rc == 0, err
    # the killed run's vectors never reached the cache: the rerun computes v2's 3 titles itself
    assert s.cache == NEW3
    assert len(read_table(wh, "embeddings")) == 6
    assert versions(wh)["clusters"] == before_versions["clusters"] + 1
    after = snapshot(wh, DATE)
    assert dict(zip(after["clusters"]["posting_id"], after["clusters"]["group_id"])) == {
        "b1": "b1",
        "b2": "b1",
        "b3": "b3",
    }
    verify_run(wh, DATE)

    removed = set()
    for t in ("matches", "clusters", "rejects", "embeddings", "embeddings_used"):
        # no write is in flight now: the 0-hour form may delete every unreferenced file
        removed |= {f"{t}/{f}" for f in vacuum(wh, t, retention_hours=0, allow_in_flight_deletion=True)}
    assert orphans <= removed  # every orphan went (with the files the rerun replaced)
    assert (cache_files(wh) - before_cache_files) - removed  # the rerun's own cache files stay
    assert len(read_table(wh, "embeddings")) == 6
    assert data_files(wh) == live_files(wh)
    for t, df in snapshot(wh, DATE).items():
        pd.testing.assert_frame_equal(df, after[t])


@pytest.mark.slow
def test_two_dates_committed_concurrently_by_two_processes(spark, tmp_path, caplog):
    """A child process (jobs/dedup_listings.py) and this one (the test session's driver) each run
    one date into the same fresh warehouse; both hold at their first commit until the other is
    there too, so their commits (and the tables' creation) really race."""
    wh = str(tmp_path / "wh")  # fresh: both processes also race to create every table
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    dates = {"2026-06-02": catalog(tmp_path / "d1.parquet", V1), "2026-06-03": catalog(tmp_path / "d2.parquet", V2)}
    (child_date, child_path), (here_date, here_path) = dates.items()
    p = spawn(f"barrier:{barrier}:2", *cli_args(child_path, child_date, wh, *LEXICAL))
    child_out: dict = {}
    reader = threading.Thread(target=lambda: child_out.update(zip(("out", "err"), p.communicate(timeout=900))))
    reader.start()  # drain the child's pipes while this process runs its own date

    real_commit = delta.DeltaSink.commit
    first = [True]

    def commit(self, staged, **kw):  # the child's barrier, on this side
        if first[0]:
            first[0] = False
            (barrier / "this_process").touch()
            deadline = time.time() + 600
            while len(list(barrier.iterdir())) < 2 and p.poll() is None and time.time() < deadline:
                time.sleep(0.01)
        return real_commit(self, staged, **kw)

    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.INFO, logger="listing_dedup"):
        mp.setattr(delta.DeltaSink, "commit", commit)
        rc, err, here = job(spark, config(*LEXICAL), here_path, here_date, wh)
    reader.join()
    assert p.returncode == 0, child_out["err"][-3000:]
    assert rc == 0, err
    assert len(list(barrier.iterdir())) == 2  # both had staged their files before either committed

    clusters = read_table(wh, "clusters")
    got = {d: groups(clusters[clusters["run_date"] == d]) for d in dates}
    assert got == {
        "2026-06-02": {frozenset({"a1", "a2"}): "a1", frozenset({"z1"}): "z1"},
        "2026-06-03": {frozenset({"b1", "b2"}): "b1", frozenset({"b3"}): "b3"},
    }
    for d in dates:
        verify_run(wh, d)
    # each commit got its own version: one process created each table, the other committed after it
    logs = [child_out["err"], "\n".join(caplog.messages)]
    for t in ("matches", "clusters", "rejects", "runs", "embeddings", "embeddings_used"):
        found = sorted(
            int(m) for text in logs for m in re.findall(rf"committed {t} run_date=\S+ mode=\S+: version (\d+)", text)
        )
        assert found == [0, 1], (t, found)
    runs = read_table(wh, "runs")
    assert sorted(zip(runs["run_date"], runs["status"])) == [("2026-06-02", "succeeded"), ("2026-06-03", "succeeded")]
    # both dates' lexical counts landed in the one cache (3 distinct titles each), with their used keys
    emb = read_table(wh, "embeddings")
    assert sorted(emb.groupby("run_date").size().items()) == [("2026-06-02", 3), ("2026-06-03", 3)]
    assert not emb["key"].duplicated().any()
    assert here.cache == NEW3
    assert runs["vectors_computed"].tolist() == [3, 3]
    used = read_table(wh, "embeddings_used")
    assert sorted(used.groupby("run_date").size().items()) == [("2026-06-02", 3), ("2026-06-03", 3)]
