"""Bad-input matrix: every bad row is rejected with a named reason or kept on purpose, every
input row is accounted for, and inputs the job cannot use at all exit 2 leaving no table
change (only the failed attempt in the ``runs`` audit log)."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _rel import bad_images, config, data_files, job, jpeg, snapshot, versions
from listing_dedup.sink.delta import read_table
from listing_dedup.sink.verify import verify_run

DATE = "2026-04-01"
LONG = "Tas kulit asli " + "x" * 100_000  # a 100 kB title

# posting_id, title, image, image_phash -> expected reason (None: kept)
MATRIX = [
    ("ok1", "Paper bag Victoria Secret", "imgs/good.jpg", None, None),
    ("ok2", "PAPER BAG VICTORIA SECRET ORIGINAL", None, "94974F937D4C2433", None),
    (None, "no id at all", None, None, "null_posting_id"),
    ("", "empty id", None, None, "null_posting_id"),
    ("   ", "blank id", None, None, "null_posting_id"),
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
    ("h_malformed", "Payung lipat", None, "xyz", "malformed_image_phash"),
    ("h_short", "Payung lipat", None, "abc123", "malformed_image_phash"),
    ("h_long", "Payung lipat", None, "94974f937d4c2433ff", "malformed_image_phash"),
    ("h_only", None, None, "af3f9460c2838f0f", None),
]
IMAGES_UNREADABLE = 2  # i_missing_titled, i_truncated_titled


def write_matrix(folder) -> str:
    imgs = folder / "imgs"
    imgs.mkdir(parents=True)
    (imgs / "good.jpg").write_bytes(jpeg())
    for name, data in bad_images().items():
        (imgs / name).write_bytes(data)
    rows = [dict(zip(("posting_id", "title", "image", "image_phash"), r[:4])) for r in MATRIX]
    path = folder / "listings.parquet"
    pd.DataFrame(rows).astype("string").to_parquet(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def matrix_run(spark, tmp_path_factory):
    folder = tmp_path_factory.mktemp("matrix")
    wh = str(folder / "wh")
    path = write_matrix(folder)
    rc, err, summary = job(spark, config(), path, DATE, wh)
    return rc, err, summary, wh, folder


@pytest.mark.slow
def test_every_bad_row_is_accounted_for(matrix_run):
    rc, err, s, wh, _ = matrix_run
    assert rc == 0, err
    expected_rejects = sorted(((r[0] if r[0] is not None else "<null>"), r[4]) for r in MATRIX if r[4])
    expected_kept = sorted(r[0] for r in MATRIX if not r[4])
    assert (s.rows_in, s.rows_kept, s.rows_rejected) == (len(MATRIX), len(expected_kept), len(expected_rejects))
    assert s.images_unreadable == IMAGES_UNREADABLE

    rejects = read_table(wh, "rejects", DATE)
    assert sorted(zip(rejects["posting_id"].fillna("<null>"), rejects["reason"])) == expected_rejects
    # raw keeps the whole input row, so a rejected row can be fixed and resubmitted
    raw = {json.loads(r).get("title") for r in rejects["raw"]}
    assert "same id as the first row" in raw and "no id at all" in raw
    clusters = read_table(wh, "clusters", DATE)
    assert sorted(clusters["posting_id"]) == expected_kept
    g = clusters.set_index("posting_id")["group_id"]
    matches = read_table(wh, "matches", DATE).set_index("posting_id")
    m1 = dict(zip(matches.loc["ok1", "match_ids"], matches.loc["ok1", "scores"], strict=True))
    # the good rows still match: the title twins, and the image-only listing that shows the same
    # picture as ok1 (its pHash, computed from the image: 0 bits apart, score 1.0)
    assert set(m1) == {"ok2", "i_only"} and m1["i_only"] == 1.0
    assert g["i_only"] == g["ok1"] == "i_only"
    # the group margin (0.04): ok1's best match is the identical image (1.0), so its title match
    # groups it with ok2 only at >= 0.96; the matches keep the pair either way
    assert (g["ok2"] == g["ok1"]) == (m1["ok2"] >= 1.0 - 0.04)

    runs = read_table(wh, "runs", DATE)
    assert runs["status"].tolist() == ["succeeded"]
    assert runs["images_unreadable"].tolist() == [IMAGES_UNREADABLE]
    assert json.loads(runs["rejects_by_reason"].iloc[0]) == {
        "duplicate_posting_id": 1,
        "malformed_image_phash": 3,
        "missing_image_file": 2,
        "no_title_no_image": 2,
        "null_posting_id": 3,
        "unreadable_image": 3,
    }
    assert verify_run(wh, DATE).ok


def _parquet(path, table: pa.Table) -> str:
    pq.write_table(table, path)
    return str(path)


def _unusable_inputs(folder) -> dict[str, tuple[str, str]]:
    """name -> (input path, expected message)."""
    folder.mkdir()
    (folder / "garbage.parquet").write_bytes(b"PAR1 this is not parquet")
    (folder / "empty_dir").mkdir()
    return {
        "missing path": (str(folder / "nope.parquet"), "input path does not exist"),
        "folder without parquet": (str(folder / "empty_dir"), "holds no .parquet files"),
        "corrupt parquet": (str(folder / "garbage.parquet"), "cannot read input Parquet"),
        "int posting_id": (
            _parquet(folder / "int_id.parquet", pa.table({"posting_id": [1, 2], "title": ["a", "b"]})),
            "input column 'posting_id' has type bigint, expected string",
        ),
        "int title": (
            _parquet(folder / "int_title.parquet", pa.table({"posting_id": ["a", "b"], "title": [1, 2]})),
            "input column 'title' has type bigint, expected string",
        ),
        "double phash": (
            _parquet(
                folder / "float_phash.parquet",
                pa.table({"posting_id": ["a"], "title": ["t"], "image_phash": [1.5]}),
            ),
            "input column 'image_phash' has type double, expected string",
        ),
        "no title column": (
            _parquet(folder / "no_title.parquet", pa.table({"posting_id": ["a"], "name": ["t"]})),
            "missing required column 'title'",
        ),
    }


@pytest.mark.slow
def test_unusable_inputs_exit_2_and_leave_tables_untouched(spark, matrix_run):
    _, _, _, wh, folder = matrix_run
    before_versions, before_files = versions(wh), data_files(wh)
    before = snapshot(wh, DATE)
    cases = _unusable_inputs(folder / "unusable")
    for name, (path, message) in cases.items():
        rc, err, _ = job(spark, config(), path, DATE, wh)
        assert rc == 2, (name, err)
        assert err.strip().splitlines() == [err.strip()] and message in err, (name, err)
        assert "Traceback" not in err
    after_versions = versions(wh)
    # no data table moved, no file was staged, the date still reads the same
    assert {t: after_versions[t] for t in ("matches", "clusters", "rejects")} == {
        t: before_versions[t] for t in ("matches", "clusters", "rejects")
    }
    assert data_files(wh) == before_files
    for t, df in snapshot(wh, DATE).items():
        pd.testing.assert_frame_equal(df, before[t])
    # the audit log records each failed attempt, after the succeeded one
    runs = read_table(wh, "runs", DATE).sort_values("started_at")
    assert runs["status"].tolist() == ["succeeded"] + ["failed"] * len(cases)
    assert after_versions["runs"] == before_versions["runs"] + len(cases)


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
