"""The bad-input matrix (issue 29; docs/reliability.md "1. Bad-input matrix"), table-driven.

Two tables:

- ``MATRIX``: one input file, one row per bad *row* (odd ids, titles, pHashes, images, image paths
  outside the roots, an image over the byte limit, a loopback URI that must never be contacted),
  plus a column the job does not read (``price.usd``). The run must exit 0 with every row kept or
  rejected with its named reason: rows in = kept + rejected.
- ``FAULTS``: whole inputs (and a conf file) the job cannot or must not use: each must exit with
  its code (2: the caller's input or config; 1: storage, retryable) and exactly one stderr line
  (no traceback), and leave the date's tables exactly as the matrix run committed them (versions,
  files, rows), with the attempt recorded as ``failed`` in the ``runs`` audit log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _rel import DATA_TABLES, Listener, bad_images, config, data_files, job, jpeg, snapshot, versions
from listing_dedup.config import load_config
from listing_dedup.runtime import run_cli
from listing_dedup.sink.delta import read_table
from listing_dedup.sink.verify import verify_run

DATE = "2026-04-01"
LONG = "Tas kulit asli " + "x" * 100_000  # a 100 kB title
MAX_IMAGE_BYTES = 60_000  # input.max_image_bytes of the matrix run: imgs/large.jpg is over it
PORT = "{port}"  # the loopback listener's port, filled in when the file is written

# posting_id, title, image, image_phash -> expected reason (None: kept)
MATRIX = [
    ("ok1", "Paper bag Victoria Secret", "imgs/good.jpg", None, None),
    ("ok2", "PAPER BAG VICTORIA SECRET ORIGINAL", None, "94974F937D4C2433", None),
    (None, "no id at all", None, None, "null_posting_id"),
    ("", "empty id", None, None, "null_posting_id"),
    ("   ", "blank id", None, None, "null_posting_id"),
    ("\t", "tab id", None, None, "null_posting_id"),
    ("\n", "newline id", None, None, "null_posting_id"),
    ("\u00a0", "no-break space id", None, None, "null_posting_id"),
    ("\u200b\ufeff", "zero-width id", None, None, "null_posting_id"),
    ("ok1", "same id as the first row", None, None, "duplicate_posting_id"),
    ("t_null", None, None, None, "no_title_no_image"),
    ("t_blank", " \t ", None, None, "no_title_no_image"),
    ("t_long", LONG, None, None, None),
    ("t_mixed", "Кружка 茶杯 mug قهوة ☕ कप", None, None, None),
    ("t_escaped", "Kaos \\xe2\\x9c\\x85 Murah", None, None, None),
    ("t_bad_escape", "Sepatu \\xff\\xfe rusak", None, None, None),
    ("i_missing", "", "imgs/does_not_exist.jpg", None, "missing_image_file"),
    ("i_missing_titled", "Sendal jepit", "imgs/does_not_exist.jpg", None, None),
    ("i_truncated", "", "imgs/truncated.jpg", None, "unreadable_image"),
    ("i_truncated_titled", "Botol minum 1 liter", "imgs/truncated.jpg", None, None),
    ("i_corrupt", None, "imgs/corrupt.jpg", None, "unreadable_image"),
    ("i_not_image", "", "imgs/not_an_image.jpg", None, "unreadable_image"),
    ("i_only", "", "imgs/good.jpg", None, None),  # image only: kept, matched on images later
    ("i_folder", "", "imgs", None, "missing_image_file"),
    ("i_large", "", "imgs/large.jpg", None, "image_too_large"),  # never read: its size says so
    # paths outside the image roots are never opened (or even looked at): the same reason whether
    # the file exists (../outside.jpg, /etc/passwd) or not, so the rejects tell nothing of the host
    ("p_parent", "", "../outside.jpg", None, "image_outside_roots"),
    ("p_parent_titled", "Jam tangan pria", "imgs/../../outside.jpg", None, None),
    ("p_absolute", "", "/etc/passwd", None, "image_outside_roots"),
    ("p_absolute_missing", "", "/no/such/file.jpg", None, "image_outside_roots"),
    ("p_file_uri", "", "file:///etc/passwd", None, "image_outside_roots"),
    (
        "p_ssrf",
        "",
        f"s3://internal-bucket/secret.jpg?endpoint_override=127.0.0.1:{PORT}&scheme=http",
        None,
        "image_outside_roots",
    ),  # fmt: skip
    ("p_http_titled", "Kipas angin meja", f"http://127.0.0.1:{PORT}/x.jpg", None, None),
    ("h_malformed", "Payung lipat", None, "xyz", "malformed_image_phash"),
    ("h_short", "Payung lipat", None, "abc123", "malformed_image_phash"),
    ("h_long", "Payung lipat", None, "94974f937d4c2433ff", "malformed_image_phash"),
    ("h_only", None, None, "af3f9460c2838f0f", None),
]
# kept rows whose image is unusable (their titles still match): counted in images_unreadable
IMAGES_UNREADABLE = {
    "i_missing_titled": "missing_image_file",
    "i_truncated_titled": "unreadable_image",
    "p_parent_titled": "image_outside_roots",
    "p_http_titled": "image_outside_roots",
}


def write_matrix(folder: Path, port: int) -> str:
    imgs = folder / "imgs"
    imgs.mkdir(parents=True)
    (imgs / "good.jpg").write_bytes(jpeg())
    for name, data in bad_images().items():
        (imgs / name).write_bytes(data)
    (imgs / "large.jpg").write_bytes(jpeg(seed=1, size=400))  # a valid JPEG, over MAX_IMAGE_BYTES
    assert (imgs / "large.jpg").stat().st_size > MAX_IMAGE_BYTES > len(jpeg())
    (folder.parent / "outside.jpg").write_bytes(jpeg(seed=2))  # exists, beside the root: never read
    rows = [dict(zip(("posting_id", "title", "image", "image_phash"), r[:4])) for r in MATRIX]
    df = pd.DataFrame(rows).astype("string")
    df["image"] = df["image"].str.replace(PORT, str(port), regex=False)
    df["price.usd"] = [float(i) for i in range(len(df))]  # a column the job does not read
    path = folder / "listings.parquet"
    df.to_parquet(path, index=False)
    return str(path)


def matrix_config(*extra: str):
    # the matrix is bad on purpose (most of its rows are rejected): the kept-share guard, which would
    # refuse it as a broken extract, is lifted for it alone
    return config("input.max_rejected_share=1.0", f"input.max_image_bytes={MAX_IMAGE_BYTES}", *extra)


@pytest.fixture(scope="module")
def matrix_run(spark, tmp_path_factory):
    top = tmp_path_factory.mktemp("matrix")
    folder = top / "catalog"
    wh = str(top / "wh")
    listener = Listener()
    try:
        path = write_matrix(folder, listener.port)
        rc, err, summary = job(spark, matrix_config(), path, DATE, wh)
    finally:
        hits = listener.close()
    return rc, err, summary, wh, folder, hits


@pytest.mark.slow
def test_every_bad_row_is_accounted_for(matrix_run):
    rc, err, s, wh, _, hits = matrix_run
    assert rc == 0, err
    assert hits == 0  # no request reached the host an image value named
    expected_rejects = sorted(((r[0] if r[0] is not None else "<null>"), r[4]) for r in MATRIX if r[4])
    expected_kept = sorted(r[0] for r in MATRIX if not r[4])
    assert (s.rows_in, s.rows_kept, s.rows_rejected) == (len(MATRIX), len(expected_kept), len(expected_rejects))
    assert s.rows_in == s.rows_kept + s.rows_rejected  # nothing lost
    assert s.images_unreadable == len(IMAGES_UNREADABLE)

    rejects = read_table(wh, "rejects", DATE)
    assert sorted(zip(rejects["posting_id"].fillna("<null>"), rejects["reason"])) == expected_rejects
    # raw keeps the whole input row (the unread column too), so a rejected row can be fixed and resubmitted
    raw = [json.loads(r) for r in rejects["raw"]]
    assert {r.get("title") for r in raw} >= {"same id as the first row", "no id at all", "tab id"}
    assert all("price.usd" in r for r in raw)
    clusters = read_table(wh, "clusters", DATE)
    assert sorted(clusters["posting_id"]) == expected_kept
    g = clusters.set_index("posting_id")["group_id"]
    matches = read_table(wh, "matches", DATE).set_index("posting_id")
    m1 = dict(zip(matches.loc["ok1", "match_ids"], matches.loc["ok1", "scores"], strict=True))
    # the good rows still match: the title twins, and the image-only listing that shows the same
    # picture as ok1 (its pHash, computed from the image: 0 bits apart, score 1.0)
    assert set(m1) == {"ok2", "i_only"} and m1["i_only"] == 1.0
    assert g["i_only"] == g["ok1"]
    # the group margin (0.04): ok1's best match is the identical image (1.0), so its title match
    # groups it with ok2 only at >= 0.96; the matches keep the pair either way
    assert (g["ok2"] == g["ok1"]) == (m1["ok2"] >= 1.0 - 0.04)

    runs = read_table(wh, "runs", DATE)
    assert runs["status"].tolist() == ["succeeded"]
    assert runs["images_unreadable"].tolist() == [len(IMAGES_UNREADABLE)]
    assert json.loads(runs["rejects_by_reason"].iloc[0]) == {
        "duplicate_posting_id": 1,
        "image_outside_roots": 5,
        "image_too_large": 1,
        "malformed_image_phash": 3,
        "missing_image_file": 2,
        "no_title_no_image": 2,
        "null_posting_id": 7,
        "unreadable_image": 3,
    }
    assert verify_run(wh, DATE).ok


# ---------------------------------------------------------------------------------------------
# Whole inputs the job must refuse. Each FAULT builds its input in a folder of its own and names
# the conf overrides, the exit code and the text its one stderr line must hold.


@dataclasses.dataclass(frozen=True)
class Fault:
    build: Callable[[Path, Path], str]  # (folder of the fault, the matrix's catalog folder) -> input path
    exit_code: int
    message: str  # held by the single stderr line
    sets: tuple[str, ...] = ()
    reaches_job: bool = True  # False: refused before the job starts (a conf file): no runs row


def _parquet(table: pa.Table, path: Path) -> str:
    pq.write_table(table, path)
    return str(path)


def _missing(f: Path, _: Path) -> str:
    return str(f / "nope.parquet")


def _empty_dir(f: Path, _: Path) -> str:
    (f / "empty").mkdir()
    return str(f / "empty")


def _not_parquet(f: Path, _: Path) -> str:
    (f / "garbage.parquet").write_bytes(b"PAR1 this is not parquet")
    return str(f / "garbage.parquet")


def _typed(**cols):
    return lambda f, _: _parquet(pa.table(cols), f / "typed.parquet")


def _corrupt_in_folder(f: Path, _: Path) -> str:
    d = f / "parts"
    d.mkdir()
    _parquet(pa.table({"posting_id": ["a", "b"], "title": ["Tas", "Sepatu"]}), d / "a.parquet")
    (d / "b.parquet").write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")  # a footer that points nowhere
    return str(d)


def _mixed_types(f: Path, _: Path) -> str:
    d = f / "parts"
    d.mkdir()
    _parquet(pa.table({"posting_id": ["a", "b"], "title": ["Tas", "Sepatu"]}), d / "a.parquet")
    _parquet(pa.table({"posting_id": pa.array([3, 4], pa.int64()), "title": ["Topi", "Kaos"]}), d / "b.parquet")
    return str(d)


def _invalid_utf8(f: Path, _: Path) -> str:
    titles = pa.array([b"Tas kulit", b"Sepatu \xff rusak"], pa.binary()).view(pa.string())
    return _parquet(pa.table({"posting_id": ["a", "b"], "title": titles}), f / "utf8.parquet")


def _latin1_conf(f: Path, _: Path) -> str:
    conf = f / "bad.yaml"
    conf.write_bytes(b"input:\n  image_root: /data/caf\xe9\n")
    return str(conf)


def _matrix_ids(f: Path, catalog: Path, **override) -> str:
    """The matrix's ids (same row count as the previous run), every row changed by ``override``."""
    df = pd.read_parquet(catalog / "listings.parquet")
    return _parquet(pa.Table.from_pandas(df.assign(**override), preserve_index=False), f / "listings.parquet")


def _all_titles_null(f: Path, catalog: Path) -> str:
    # the upstream bug of issue 29 row 1: the same ids, every title (and image, hash) gone
    return _matrix_ids(f, catalog, title=None, image=None, image_phash=None)


def _zero_rows(f: Path, catalog: Path) -> str:
    df = pd.read_parquet(catalog / "listings.parquet").iloc[:0]
    return _parquet(pa.Table.from_pandas(df, preserve_index=False), f / "listings.parquet")


def _shrunk(f: Path, catalog: Path) -> str:
    df = pd.read_parquet(catalog / "listings.parquet").iloc[:3]
    return _parquet(pa.Table.from_pandas(df, preserve_index=False), f / "listings.parquet")


def _images_elsewhere(f: Path, catalog: Path) -> str:
    return str(catalog / "listings.parquet")  # its image column, under a root that is not there


UNGUARDED = ("input.max_shrink=1.0", "input.max_rejected_share=1.0")
FAULTS = {
    "missing path": Fault(_missing, 2, "input path does not exist"),
    "folder without parquet": Fault(_empty_dir, 2, "holds no .parquet files"),
    "file that is not parquet": Fault(_not_parquet, 2, "cannot read input Parquet"),
    "int posting_id": Fault(
        _typed(posting_id=[1, 2], title=["a", "b"]), 2, "input column 'posting_id' has type bigint, expected string"
    ),
    "int title": Fault(
        _typed(posting_id=["a", "b"], title=[1, 2]), 2, "input column 'title' has type bigint, expected string"
    ),
    "double phash": Fault(
        _typed(posting_id=["a"], title=["t"], image_phash=[1.5]),
        2,
        "input column 'image_phash' has type double, expected string",
    ),
    "no title column": Fault(_typed(posting_id=["a"], name=["t"]), 2, "missing required column 'title'"),
    # (the size guards lifted: these few-row files would otherwise be refused as a shrunken catalog
    # before their bad column is read)
    "one corrupt file in a folder": Fault(_corrupt_in_folder, 2, "b.parquet", sets=UNGUARDED),
    "posting_id string in one file, int64 in another": Fault(_mixed_types, 2, "b.parquet", sets=UNGUARDED),
    "invalid UTF-8 in a title": Fault(
        _invalid_utf8, 2, "row 2 (posting_id 'b'): column 'title' is not valid UTF-8", sets=UNGUARDED
    ),
    "a Latin-1 byte in a conf file": Fault(
        _latin1_conf, 2, "is not UTF-8 text: byte 0xe9 at offset 30 (line 2, column 24)", reaches_job=False
    ),
    "every title null (an upstream bug)": Fault(
        _all_titles_null, 2, f"keeps 0 of its {len(MATRIX)} rows (0%, {len(MATRIX)} rejected"
    ),
    "0 rows": Fault(_zero_rows, 2, "holds 0 rows"),
    "shrank past max_shrink": Fault(_shrunk, 2, f"holds 3 rows, 92% fewer than the {len(MATRIX)} rows"),
    "image root not there (storage)": Fault(
        _images_elsewhere,
        1,
        "image root /nonexistent/images does not exist",
        sets=("input.image_root=/nonexistent/images",),
    ),
}
RUNS_OF_REFUSED = sum(f.reaches_job for f in FAULTS.values())


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.slow
def test_refused_inputs_exit_with_one_line_and_leave_the_date_unchanged(spark, matrix_run):
    rc, err, _, wh, catalog, _ = matrix_run
    assert rc == 0, err
    before_versions, before_files, before = versions(wh), data_files(wh), snapshot(wh, DATE)
    for name, fault in FAULTS.items():
        folder = catalog.parent / "faults" / name.replace(" ", "_")
        folder.mkdir(parents=True)
        path = fault.build(folder, catalog)
        if fault.reaches_job:
            rc, err, _ = job(spark, config(*fault.sets), path, DATE, wh)
        else:  # a conf file: the loader's error, through the same exit-code mapping as the job
            buf = io.StringIO()
            with contextlib.redirect_stderr(buf):
                rc = run_cli(lambda p=path: load_config([p], []))
            err = buf.getvalue()
        line = _one_line(err)
        assert (rc, line.startswith("error: ")) == (fault.exit_code, True), (name, err)
        assert fault.message in line, (name, line)
    # no data table moved, no file was staged, the date still reads the same rows
    after_versions = versions(wh)
    assert {t: after_versions[t] for t in DATA_TABLES} == {t: before_versions[t] for t in DATA_TABLES}
    assert data_files(wh) == before_files
    for t, df in snapshot(wh, DATE).items():
        pd.testing.assert_frame_equal(df, before[t])
    # the audit log records each refused attempt after the succeeded one
    runs = read_table(wh, "runs", DATE).sort_values("started_at")
    assert runs["status"].tolist() == ["succeeded"] + ["failed"] * RUNS_OF_REFUSED
    assert after_versions["runs"] == before_versions["runs"] + RUNS_OF_REFUSED


OLD_RUNS_SCHEMA = (  # the runs table as the first release wrote it
    "run_id string, status string, error string, started_at timestamp, finished_at timestamp, "
    "input_path string, config_json string, version string, rows_in long, rows_kept long, rows_rejected long, "
    "rejects_by_reason string, rows_embedded long, n_edges long, n_groups long, n_grouped long, "
    "n_singletons long, largest_group long, stage_seconds string"
)


def test_runs_table_of_an_earlier_version_keeps_recording(spark, tmp_path):
    import datetime as dt

    from listing_dedup.sink.delta import DeltaSink

    wh = str(tmp_path / "wh")
    t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)  # noqa: UP017
    old = ("r0", "succeeded", "", t, t, "x", "{}", "0.0.1", 1, 1, 0, "{}", 1, 0, 0, 0, 1, 1, "{}")
    DeltaSink(wh).write(spark.createDataFrame([old], OLD_RUNS_SCHEMA), "runs", DATE, mode="append")
    columns = list(read_table(wh, "runs").columns)

    rc, err, _ = job(spark, config(), str(tmp_path / "missing.parquet"), DATE, wh)
    assert rc == 2 and "Traceback" not in err, err
    runs = read_table(wh, "runs", DATE).sort_values("started_at")
    assert runs["status"].tolist() == ["succeeded", "failed"]
    assert list(runs.columns) == columns  # the table keeps its schema; the new counters are left out
