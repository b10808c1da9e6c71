"""The whole job on a tiny catalog with known groups, through the library and the CLI."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from listing_dedup.config import load_config
from listing_dedup.pipeline import run_dedup
from listing_dedup.sink.delta import read_table, table_version

ROWS = [
    ("a1", "Paper Bag Victoria Secret"),
    ("a2", "PAPER BAG VICTORIA SECRET ORIGINAL"),
    ("a3", "paper bag victoria secret murah"),
    ("b1", "Rice cooker digital Miyako 1.8 liter"),
    ("b2", "MIYAKO RICE COOKER DIGITAL 1.8 LITER"),
    ("c1", "Mouse wireless Logitech M331 silent click"),
    ("c2", "Logitech M331 silent click wireless mouse"),
    ("d1", "Hijab segi empat voal motif bunga"),
    ("e1", "Susu UHT coklat 200ml"),
]
EXPECTED_GROUPS = {
    "a1": "a1",
    "a2": "a1",
    "a3": "a1",
    "b1": "b1",
    "b2": "b1",
    "c1": "c1",
    "c2": "c1",
    "d1": "d1",
    "e1": "e1",
}


@pytest.fixture()
def catalog(tmp_path):
    rows = [{"posting_id": p, "title": t, "image_phash": None} for p, t in ROWS]
    rows.append({"posting_id": "a1", "title": "duplicate id", "image_phash": None})
    rows.append({"posting_id": None, "title": "no id", "image_phash": None})
    path = tmp_path / "listings.parquet"
    pd.DataFrame(rows).astype({"image_phash": "string"}).to_parquet(path, index=False)
    return str(path)


CONF = ["conf/local.yaml"]
SETS = [
    "match.threshold=0.6",
    "match.min2_threshold=0.6",
    "inb.thresholds=[]",
    "index.exact_below=0",
    "index.nlist=0",
    "index.n_shards=2",
    "input.partitions=2",
]


def test_job_finds_groups_writes_tables_and_reruns_idempotently(spark, catalog, tmp_path):
    cfg = load_config(CONF, SETS)
    wh = str(tmp_path / "wh")
    s = run_dedup(spark=spark, cfg=cfg, input_path=catalog, run_date="2026-03-01", warehouse=wh)
    assert (s.rows_in, s.rows_kept, s.rows_rejected) == (11, 9, 2)
    assert s.rejects_by_reason == {"duplicate_posting_id": 1, "null_posting_id": 1}

    clusters = read_table(wh, "clusters", "2026-03-01").set_index("posting_id")
    assert clusters["group_id"].to_dict() == EXPECTED_GROUPS
    assert clusters.loc["a2", "group_size"] == 3 and clusters.loc["d1", "group_size"] == 1
    matches = read_table(wh, "matches", "2026-03-01").set_index("posting_id")
    assert sorted(matches.loc["a1", "match_ids"]) == ["a2", "a3"]
    assert list(matches.loc["d1", "match_ids"]) == []
    assert all(len(m) == len(sc) for m, sc in zip(matches["match_ids"], matches["scores"]))
    rejects = read_table(wh, "rejects", "2026-03-01")
    assert sorted(rejects["reason"]) == ["duplicate_posting_id", "null_posting_id"]
    runs = read_table(wh, "runs")
    assert list(runs["status"]) == ["succeeded"] and runs["rows_in"].tolist() == [11]

    v_before = table_version(wh, "clusters")
    run_dedup(spark=spark, cfg=cfg, input_path=catalog, run_date="2026-03-01", warehouse=wh)
    again = read_table(wh, "clusters", "2026-03-01").set_index("posting_id")
    assert table_version(wh, "clusters") == v_before + 1
    assert len(again) == 9
    pd.testing.assert_frame_equal(again.sort_index(), clusters.sort_index(), check_like=True)
    assert len(read_table(wh, "runs")) == 2  # the audit log keeps both attempts


def run_cli(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)


def test_cli_end_to_end_and_evaluate(catalog, tmp_path):
    wh = str(tmp_path / "wh")
    sets = [x for s in SETS for x in ("--set", s)]
    r = run_cli(
        "jobs/dedup_listings.py",
        "--conf",
        *CONF,
        "--input",
        catalog,
        "--run-date",
        "2026-03-02",
        "--warehouse",
        wh,
        *sets,
        "--set",
        "spark.conf.spark.sql.shuffle.partitions=2",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rows rejected  2" in r.stdout and "groups found   3 groups" in r.stdout
    truth = tmp_path / "truth.csv"
    pd.DataFrame({"posting_id": list(EXPECTED_GROUPS), "label_group": list(EXPECTED_GROUPS.values())}).to_csv(
        truth, index=False
    )
    out = tmp_path / "score.json"
    r = run_cli(
        "jobs/evaluate.py", "--warehouse", wh, "--run-date", "2026-03-02", "--truth", str(truth), "--json-out", str(out)
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res == {
        "run_date": "2026-03-02",
        "n": 9,
        "matches": {"f1": 1.0, "precision": 1.0, "recall": 1.0},
        "clusters": {"f1": 1.0, "precision": 1.0, "recall": 1.0},
    }
    assert json.loads(out.read_text()) == res


@pytest.mark.parametrize(
    "args, message",
    [
        (
            [
                "--conf",
                "conf/local.yaml",
                "--input",
                "/nonexistent/x.parquet",
                "--run-date",
                "2026-01-01",
                "--warehouse",
                "WH",
            ],
            "input path does not exist",
        ),
        (
            ["--conf", "conf/local.yaml", "--input", "x", "--run-date", "2026-13-01", "--warehouse", "WH"],
            "run date must be YYYY-MM-DD",
        ),
        (
            [
                "--conf",
                "conf/local.yaml",
                "--input",
                "x",
                "--run-date",
                "2026-01-01",
                "--warehouse",
                "WH",
                "--set",
                "match.treshold=1",
            ],
            "unknown config key 'match.treshold'",
        ),
        (
            ["--conf", "nope.yaml", "--input", "x", "--run-date", "2026-01-01", "--warehouse", "WH"],
            "config file not found",
        ),
        (["--input", "x"], "required"),
    ],
)
def test_cli_bad_arguments_exit_2(args, message, tmp_path):
    wh = tmp_path / "wh"
    r = run_cli("jobs/dedup_listings.py", *[str(wh) if a == "WH" else a for a in args])
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    # nothing but (at most) the failed attempt's audit row is written
    assert not (wh / "matches").exists() and not (wh / "clusters").exists()


def test_evaluate_missing_run_exit_2(tmp_path):
    truth = tmp_path / "t.csv"
    truth.write_text("posting_id,label_group\na,1\n")
    r = run_cli("jobs/evaluate.py", "--warehouse", str(tmp_path), "--run-date", "2026-01-01", "--truth", str(truth))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run_cli(
        "jobs/evaluate.py",
        "--warehouse",
        str(tmp_path),
        "--run-date",
        "2026-01-01",
        "--truth",
        str(tmp_path / "missing.csv"),
    )
    assert r.returncode == 2 and "truth file does not exist" in r.stderr
