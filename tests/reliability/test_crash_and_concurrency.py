"""Two dates committed by two processes (a child and the test's own) at the same moment both
land; a driver killed between staging and committing leaves every table at its previous version
(the next run succeeds, vacuum removes the orphans). The race runs once (module fixture); the
kill starts from a copy of the warehouse it left, whose committed dates are the previous
versions the killed run must not disturb. The commit path is under test, not the signals: every
run here (in-process and child) uses the lexical signal alone (``LEXICAL``: no text model to
load in each child and Python worker). Its hashed term counts go through the embeddings cache
like a text model's vectors (tests/test_cache.py checks both kinds of entry), so the cache must
survive the kill and the race like the data tables."""

from __future__ import annotations

import logging
import re
import shutil
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

V1 = [("a1", "Rice cooker digital Miyako 1.8 liter"), ("a2", "MIYAKO RICE COOKER DIGITAL 1.8 LITER"),
      ("z1", "Susu UHT coklat 200ml"), (None, "no id")]  # fmt: skip
V2 = [("b1", "Mouse wireless Logitech M331 silent click"), ("b2", "Logitech M331 silent click wireless mouse"),
      ("b3", "Hijab segi empat voal motif bunga"), ("b3", "duplicate")]  # fmt: skip
# the killed run's (and its rerun's) catalog: titles neither date of the race had
V3 = [("c1", "Sepatu sneakers pria kanvas hitam 42"), ("c2", "SEPATU SNEAKERS PRIA KANVAS HITAM 42"),
      ("c3", "Botol minum tupperware 500ml biru"), ("", "empty id")]  # fmt: skip
RACE = {"2026-06-02": V1, "2026-06-03": V2}  # the child's date, this process's date


NEW3 = {"lexical": {"reused": 0, "computed": 3}}  # a run of 3 titles the cache lacks


def cache_files(warehouse: str) -> set[str]:
    root = Path(warehouse)
    return {str(p.relative_to(root)) for t in ("embeddings", "embeddings_used") for p in (root / t).rglob("*.parquet")}


def catalog(path, rows) -> str:
    pd.DataFrame(rows, columns=["posting_id", "title"]).to_parquet(path, index=False)
    return str(path)


class _Messages(logging.Handler):
    """The ``listing_dedup`` log records of this process, as text (caplog is per test; the race
    runs once for the module)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def race(spark, tmp_path_factory):
    """A child process (jobs/dedup_listings.py) and this one (the test session's driver) each run
    one date into the same fresh warehouse; both hold at their first commit until the other is
    there too, so their commits (and the tables' creation) really race. Returns what the race
    test checks, read before any other test can touch the warehouse."""
    root = tmp_path_factory.mktemp("race")
    wh = str(root / "wh")  # fresh: both processes also race to create every table
    barrier = root / "barrier"
    barrier.mkdir()
    (child_date, child_rows), (here_date, here_rows) = RACE.items()
    child_path, here_path = catalog(root / "d1.parquet", child_rows), catalog(root / "d2.parquet", here_rows)
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

    logger, handler = logging.getLogger("listing_dedup"), _Messages()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(delta.DeltaSink, "commit", commit)
            rc, err, here = job(spark, config(*LEXICAL), here_path, here_date, wh)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        reader.join()
    return {
        "warehouse": wh,
        "child_rc": p.returncode,
        "child_err": child_out.get("err", ""),
        "rc": rc,
        "err": err,
        "here": here,
        "barrier": sorted(f.name for f in barrier.iterdir()),
        "logs": [child_out.get("err", ""), "\n".join(handler.messages)],
        "verified": {d: verify_run(wh, d) for d in RACE} if rc == 0 and p.returncode == 0 else {},
        "clusters": read_table(wh, "clusters"),
        "runs": read_table(wh, "runs"),
        "embeddings": read_table(wh, "embeddings"),
        "used": read_table(wh, "embeddings_used"),
    }


@pytest.mark.slow
def test_two_dates_committed_concurrently_by_two_processes(race):
    assert race["child_rc"] == 0, race["child_err"][-3000:]
    assert race["rc"] == 0, race["err"]
    assert len(race["barrier"]) == 2  # both had staged their files before either committed

    clusters = race["clusters"]
    got = {d: groups(clusters[clusters["run_date"] == d]) for d in RACE}
    assert got == {
        "2026-06-02": {frozenset({"a1", "a2"}): "a1", frozenset({"z1"}): "z1"},
        "2026-06-03": {frozenset({"b1", "b2"}): "b1", frozenset({"b3"}): "b3"},
    }
    assert set(race["verified"]) == set(RACE)  # verify_run passed for both dates
    # each commit got its own version: one process created each table, the other committed after it
    for t in ("matches", "clusters", "rejects", "runs", "embeddings", "embeddings_used"):
        found = sorted(
            int(m)
            for text in race["logs"]
            for m in re.findall(rf"committed {t} run_date=\S+ mode=\S+: version (\d+)", text)
        )
        assert found == [0, 1], (t, found)
    runs = race["runs"]
    assert sorted(zip(runs["run_date"], runs["status"])) == [("2026-06-02", "succeeded"), ("2026-06-03", "succeeded")]
    # both dates' lexical counts landed in the one cache (3 distinct titles each), with their used keys
    emb = race["embeddings"]
    assert sorted(emb.groupby("run_date").size().items()) == [("2026-06-02", 3), ("2026-06-03", 3)]
    assert not emb["key"].duplicated().any()
    assert race["here"].cache == NEW3
    assert runs["vectors_computed"].tolist() == [3, 3]
    used = race["used"]
    assert sorted(used.groupby("run_date").size().items()) == [("2026-06-02", 3), ("2026-06-03", 3)]


@pytest.mark.slow
def test_killed_driver_before_commit_leaves_previous_version(spark, race, tmp_path):
    """The child's date of the race (V1, committed) is rerun with V3 by a child killed after it
    staged every table and the cache, before its first commit."""
    assert race["child_rc"] == 0 and race["rc"] == 0, "the race did not commit both dates"
    wh = str(tmp_path / "wh")
    shutil.copytree(race["warehouse"], wh)  # the race's warehouse stays as it was
    date = next(iter(RACE))
    v3 = catalog(tmp_path / "v3.parquet", V3)
    before, before_versions, before_files = snapshot(wh, date), versions(wh), data_files(wh)
    before_cache, before_cache_files = cache_versions(wh), cache_files(wh)
    before_vectors = read_table(wh, "embeddings")
    assert len(before_vectors) == 6 and before["clusters"]["posting_id"].tolist() == ["a1", "a2", "z1"]

    p = spawn("kill", *cli_args(v3, date, wh, *LEXICAL))
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
    for t, df in snapshot(wh, date).items():
        pd.testing.assert_frame_equal(df, before[t])
    assert read_table(wh, "runs", date)["status"].tolist() == ["succeeded"]  # the killed run left no row

    rc, err, s = job(spark, config(*LEXICAL), v3, date, wh)  # the next run succeeds
    assert rc == 0, err
    # the killed run's vectors never reached the cache: the rerun computes V3's 3 titles itself
    assert s.cache == NEW3
    assert len(read_table(wh, "embeddings")) == 9
    assert versions(wh)["clusters"] == before_versions["clusters"] + 1
    after = snapshot(wh, date)
    assert dict(zip(after["clusters"]["posting_id"], after["clusters"]["group_id"])) == {
        "c1": "c1",
        "c2": "c1",
        "c3": "c3",
    }
    verify_run(wh, date)

    removed = set()
    for t in ("matches", "clusters", "rejects", "embeddings", "embeddings_used"):
        # no write is in flight now: the 0-hour form may delete every unreferenced file
        removed |= {f"{t}/{f}" for f in vacuum(wh, t, retention_hours=0, allow_in_flight_deletion=True)}
    assert orphans <= removed  # every orphan went (with the files the rerun replaced)
    assert (cache_files(wh) - before_cache_files) - removed  # the rerun's own cache files stay
    assert len(read_table(wh, "embeddings")) == 9
    assert data_files(wh) == live_files(wh)
    for t, df in snapshot(wh, date).items():
        pd.testing.assert_frame_equal(df, after[t])
