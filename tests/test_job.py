"""The whole job on a tiny catalog with known groups: one run of jobs/dedup_listings.py in a
child process (the entry point's smoke test) whose tables are checked, scored by jobs/evaluate.py
in a child process (that entry point's smoke test); the argument errors of both commands run
in-process through their ``main(argv)``.

The rerun of a date (same content, a new Delta version, both attempts in ``runs``) is checked by
tests/reliability/test_rerun_retry_stable.py on a larger catalog."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import QUICK_JVM
from listing_dedup.cli import dedup as dedup_cli
from listing_dedup.cli import evaluate as evaluate_cli
from listing_dedup.sink.delta import read_table

REPO = Path(__file__).resolve().parents[1]
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
DATE = "2026-03-02"
CONF = ["conf/local.yaml"]
# The cheapest conf that still runs every stage of the job in the child: the lexical signal alone
# (the text model's load is a child's largest fixed cost after Spark's start-up), one exact list,
# no INB round, 2 partitions everywhere.
SETS = [
    "embed.text.enabled=false",
    "match.threshold=0.6",
    "match.min2_threshold=0.6",
    "match.relative=false",  # the threshold rule alone: the expected groups follow from it
    "match.mutual_rank=0",
    "inb.thresholds=[]",
    "index.exact_below=0",
    "index.nlist=0",
    "index.n_shards=2",
    "input.partitions=2",
    "spark.conf.spark.sql.shuffle.partitions=2",
    f"spark.conf.spark.driver.extraJavaOptions={QUICK_JVM}",
]


def write_catalog(path: Path) -> str:
    rows = [{"posting_id": p, "title": t, "image_phash": None} for p, t in ROWS]
    rows.append({"posting_id": "a1", "title": "duplicate id", "image_phash": None})
    rows.append({"posting_id": None, "title": "no id", "image_phash": None})
    pd.DataFrame(rows).astype({"image_phash": "string"}).to_parquet(path, index=False)
    return str(path)


def child(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One run of jobs/dedup_listings.py in a child process: (result, warehouse, folder)."""
    folder = tmp_path_factory.mktemp("cli_job")
    catalog = write_catalog(folder / "listings.parquet")
    wh = str(folder / "wh")
    sets = [x for s in SETS for x in ("--set", s)]
    r = child(
        "jobs/dedup_listings.py", "--conf", *CONF, "--input", catalog, "--run-date", DATE, "--warehouse", wh, *sets
    )
    return r, wh, folder


@pytest.mark.slow
def test_cli_job_finds_groups_and_writes_tables(cli_run):
    r, wh, _ = cli_run
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rows rejected  2" in r.stdout and "groups found   3 groups" in r.stdout

    clusters = read_table(wh, "clusters", DATE).set_index("posting_id")
    assert clusters["group_id"].to_dict() == EXPECTED_GROUPS
    assert clusters.loc["a2", "group_size"] == 3 and clusters.loc["d1", "group_size"] == 1
    matches = read_table(wh, "matches", DATE).set_index("posting_id")
    assert sorted(matches.loc["a1", "match_ids"]) == ["a2", "a3"]
    assert list(matches.loc["d1", "match_ids"]) == []
    assert all(len(m) == len(sc) for m, sc in zip(matches["match_ids"], matches["scores"]))
    rejects = read_table(wh, "rejects", DATE)
    assert sorted(rejects["reason"]) == ["duplicate_posting_id", "null_posting_id"]
    runs = read_table(wh, "runs")
    assert list(runs["status"]) == ["succeeded"]
    assert (runs["rows_in"].tolist(), runs["rows_kept"].tolist(), runs["rows_rejected"].tolist()) == ([11], [9], [2])
    assert json.loads(runs["rejects_by_reason"].iloc[0]) == {"duplicate_posting_id": 1, "null_posting_id": 1}


@pytest.mark.slow
def test_cli_job_records_its_health(cli_run):
    """A normal run: health in the printed summary and the runs row, no warning; its settings are
    not the defaults' (lexical only, other thresholds), so the absolute rules decide."""
    r, wh, _ = cli_run
    assert r.returncode == 0, r.stderr[-3000:]
    assert "  health\n" in r.stdout and "    warnings  none" in r.stdout
    assert "reference  none (absolute rules)" in r.stdout and "shipped reference is for the conf defaults" in r.stdout
    runs = read_table(wh, "runs")
    assert runs["health_warnings"].tolist() == [""]
    h = json.loads(runs["health_json"].iloc[0])
    sizes = pd.Series(EXPECTED_GROUPS).value_counts()
    grouped = int(sizes[sizes > 1].sum())  # every listing of a group has a match (no guard cut)
    assert h["n_listings"] == len(EXPECTED_GROUPS) and h["share_matched"] == pytest.approx(grouped / 9)
    assert h["size_histogram"] == {"1": 2, "2": 4, "3-5": 3, "6-10": 0, "11-50": 0, ">50": 0}
    titles = dict(ROWS)
    assert h["largest_groups"][0] == {"group_id": "a1", "size": 3, "titles": [titles[p] for p in ("a1", "a2", "a3")]}
    assert h["warnings"] == [] and h["reference"] == "" and h["top1_ks"] is None


@pytest.mark.slow
def test_evaluate_cli_scores_the_run(cli_run):
    r, wh, folder = cli_run
    assert r.returncode == 0, r.stderr[-3000:]
    truth = folder / "truth.csv"
    pd.DataFrame({"posting_id": list(EXPECTED_GROUPS), "label_group": list(EXPECTED_GROUPS.values())}).to_csv(
        truth, index=False
    )
    out = folder / "score.json"
    r = child("jobs/evaluate.py", "--warehouse", wh, "--run-date", DATE, "--truth", str(truth), "--json-out", str(out))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res == {
        "run_date": DATE,
        "n": 9,
        "matches": {"f1": 1.0, "precision": 1.0, "recall": 1.0},
        "clusters": {"f1": 1.0, "precision": 1.0, "recall": 1.0},
    }
    assert json.loads(out.read_text()) == res


def run_main(main, argv: list[str], capsys) -> tuple[int, str]:
    """A command's ``main(argv)`` in-process: (exit code, stderr). argparse errors exit through
    SystemExit, errors inside the command return their code."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


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
            "run date must be a date YYYY-MM-DD",
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
def test_cli_bad_arguments_exit_2(args, message, tmp_path, capsys, request):
    if "/nonexistent/x.parquet" in args:  # the one case that gets as far as the SparkSession
        request.getfixturevalue("cli_spark")
    wh = tmp_path / "wh"
    rc, err = run_main(dedup_cli.main, [str(wh) if a == "WH" else a for a in args], capsys)
    assert rc == 2
    assert message in err
    assert "Traceback" not in err
    # nothing but (at most) the failed attempt's audit row is written
    assert not (wh / "matches").exists() and not (wh / "clusters").exists()


def test_evaluate_missing_run_exit_2(tmp_path, capsys):
    truth = tmp_path / "t.csv"
    truth.write_text("posting_id,label_group\na,1\n")
    rc, err = run_main(
        evaluate_cli.main, ["--warehouse", str(tmp_path), "--run-date", "2026-01-01", "--truth", str(truth)], capsys
    )
    assert rc == 2 and "Traceback" not in err
    rc, err = run_main(
        evaluate_cli.main,
        ["--warehouse", str(tmp_path), "--run-date", "2026-01-01", "--truth", str(tmp_path / "missing.csv")],
        capsys,
    )
    assert rc == 2 and "truth file does not exist" in err
