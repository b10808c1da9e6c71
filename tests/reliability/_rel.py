"""Helpers shared by the reliability tests (not a test module)."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from pathlib import Path

import numpy as np
import pandas as pd
from listing_dedup.config import load_config
from listing_dedup.pipeline import run_dedup
from listing_dedup.runtime import run_cli
from listing_dedup.sink.delta import read_table, table_version
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CONF = [str(REPO / "conf" / "local.yaml")]
# tiny catalogs: exact search, no INB round, thresholds that group the near-identical titles, and
# the threshold rule alone (the profile's relative and mutual rules are tuned for real catalogs)
SETS = [
    "match.threshold=0.8",
    "match.min2_threshold=0.8",
    "match.relative=false",
    "match.mutual_rank=0",
    "inb.thresholds=[]",
    "index.n_shards=2",
    "input.partitions=2",
]
DATA_TABLES = ("matches", "clusters", "rejects")
# For runs that test the commit path, not the signals: the lexical signal alone (no text model to
# load, the largest fixed cost of a child process after Spark's start-up), no pHash stage (their
# catalogs have no images), no candidates table and no explanation pass (the matches' kept_by /
# signal_scores / phash_distance stay null: tests/test_decisions.py and test_explain.py check them).
LEXICAL = ("embed.text.enabled=false", "phash.enabled=false", "output.candidates=false", "output.explanations=false")


def cache_versions(warehouse: str) -> dict[str, int | None]:
    """The cache tables' versions (None: not created yet)."""
    from deltalake import DeltaTable

    out = {}
    for t in ("embeddings", "embeddings_used"):
        uri = str(Path(warehouse).resolve() / t)
        out[t] = DeltaTable(uri).version() if DeltaTable.is_deltatable(uri) else None
    return out


def distinct_titles(catalog: pd.DataFrame, kept_ids) -> int:
    """Distinct cleaned titles (what the text encoder reads) of the kept listings ``kept_ids``."""
    from listing_dedup.ingest.titles import clean_title

    rows = catalog[catalog["posting_id"].isin(set(kept_ids))].drop_duplicates("posting_id")
    return len({clean_title(t) for t in rows["title"]} - {""})


def config(*extra: str):
    return load_config(CONF, [*SETS, *extra])


def job(spark, cfg, input_path: str, run_date: str, warehouse: str) -> tuple[int, str, object]:
    """Run the job in-process the way jobs/dedup_listings.py does (``run_cli`` maps errors to
    exit codes): returns (exit code, stderr, summary or None)."""
    out: dict = {}

    def _run() -> int:
        out["summary"] = run_dedup(spark=spark, cfg=cfg, input_path=input_path, run_date=run_date, warehouse=warehouse)
        return 0

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = run_cli(_run)
    return rc, err.getvalue(), out.get("summary")


def _plain(v):
    """A comparable explanation value: a map's pairs sorted with 4-digit scores, a null distance None."""
    if isinstance(v, (list, tuple, np.ndarray)) and len(v) and isinstance(v[0], tuple):
        return sorted((k, round(float(x), 4)) for k, x in v)
    if isinstance(v, dict):
        return sorted((k, round(float(x), 4)) for k, x in v.items())
    if isinstance(v, float) and np.isnan(v):
        return None
    return v


def snapshot(warehouse: str, run_date: str) -> dict[str, pd.DataFrame]:
    """The date's rows of the three data tables, sorted, in comparable form."""
    snap = {}
    for t in DATA_TABLES:
        df = read_table(warehouse, t, run_date).drop(columns=["run_date"])
        if t == "matches":
            order = [
                sorted(range(len(m)), key=lambda i, m=m, s=s: (m[i], s[i]))
                for m, s in zip(df["match_ids"], df["scores"])
            ]
            df = df.assign(
                match_ids=[[m[i] for i in o] for m, o in zip(df["match_ids"], order)],
                scores=[[round(float(s[i]), 4) for i in o] for s, o in zip(df["scores"], order)],
            )
            for c in ("kept_by", "signal_scores", "phash_distance"):  # issue 32's explanations, in that order
                if c in df.columns:
                    df[c] = [[_plain(v[i]) for i in o] if v is not None else None for v, o in zip(df[c], order)]
        df = df.sort_values([c for c in ("posting_id", "reason", "raw") if c in df.columns], na_position="first")
        snap[t] = df.reset_index(drop=True)
    return snap


def versions(warehouse: str) -> dict[str, int]:
    return {t: table_version(warehouse, t) for t in (*DATA_TABLES, "runs")}


def data_files(warehouse: str) -> set[str]:
    """Every Parquet file under the data tables' folders (committed or not)."""
    root = Path(warehouse)
    return {str(p.relative_to(root)) for t in DATA_TABLES for p in (root / t).rglob("*.parquet")}


def groups(clusters: pd.DataFrame) -> dict[frozenset, str]:
    """member set -> group_id."""
    return {frozenset(g["posting_id"]): gid for gid, g in clusters.groupby("group_id")}


def jpeg(seed: int = 0, size: int = 48) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def bad_images() -> dict[str, bytes]:
    good = jpeg()
    return {
        "truncated.jpg": good[: len(good) * 2 // 3],
        "corrupt.jpg": good[:20] + bytes(range(256)) * 8,
        "not_an_image.jpg": b"posting_id,title\na,b\n",
        "empty.jpg": b"",
    }


# Runs jobs/dedup_listings.py in a child process with DeltaSink.commit wrapped by a test-only
# hook: "kill" SIGKILLs the driver at its first commit (after the executors wrote every staged
# file); "barrier:<dir>:<n>" makes the process wait at its first commit until <n> processes
# are there, so that their commits really race.
HARNESS = r"""
import os, runpy, signal, sys, time
from pathlib import Path
from listing_dedup.sink import delta

mode, args = sys.argv[1], sys.argv[2:]
real_commit = delta.DeltaSink.commit
state = {"first": True}

def commit(self, staged, **kw):
    if state["first"]:
        state["first"] = False
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode.startswith("barrier:"):
            _, folder, n = mode.split(":")
            Path(folder, f"{os.getpid()}").touch()
            deadline = time.time() + 600
            while len(list(Path(folder).iterdir())) < int(n) and time.time() < deadline:
                time.sleep(0.01)
    return real_commit(self, staged, **kw)

delta.DeltaSink.commit = commit
sys.argv = ["jobs/dedup_listings.py", *args]
runpy.run_path("jobs/dedup_listings.py", run_name="__main__")
"""


def spawn(mode: str, *args: str):
    import subprocess
    import sys

    from conftest import QUICK_SETS

    jvm = [x for s in QUICK_SETS for x in ("--set", s)]
    return subprocess.Popen(
        [sys.executable, "-c", HARNESS, mode, *args, *jvm],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli_args(input_path: str, run_date: str, warehouse: str, *extra: str) -> list[str]:
    """jobs/dedup_listings.py's arguments for one date under the tiny-catalog conf (``extra``:
    more ``--set`` assignments, e.g. ``*LEXICAL``)."""
    sets = [x for s in [*SETS, "spark.conf.spark.sql.shuffle.partitions=2", *extra] for x in ("--set", s)]
    return ["--conf", CONF[0], "--input", input_path, "--run-date", run_date, "--warehouse", warehouse, *sets]


def live_files(warehouse: str) -> set[str]:
    """The Parquet files the data tables' current versions reference (as in data_files)."""
    from deltalake import DeltaTable

    root = Path(warehouse).resolve()
    return {
        str(Path(uri.removeprefix("file://")).resolve().relative_to(root))
        for t in DATA_TABLES
        for uri in DeltaTable(str(root / t)).file_uris()
    }


class Listener:
    """A TCP listener on 127.0.0.1 (random port) counting the connections it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.hits += 1
            conn.close()  # answer nothing: a client waiting for a reply fails at once

    def close(self) -> int:
        """Stop, count what is still queued (a completed handshake waits in the backlog), close."""
        self._stop.set()
        self._thread.join()
        self.sock.setblocking(False)
        while True:
            try:
                self.sock.accept()[0].close()
                self.hits += 1
            except BlockingIOError:
                break
        self.sock.close()
        return self.hits
