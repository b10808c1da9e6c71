"""The whole job on a tiny catalog with known groups: one run of the dedup command in-process
(``listing_dedup.cli.dedup.main(argv)``, what jobs/dedup_listings.py runs) whose printed summary
and tables are checked, scored by the evaluate command in-process; the argument errors of both
commands run in-process through their ``main(argv)`` too.

The child-process smoke tests of both entry points are in tests/test_dag_run.py: Airflow runs
jobs/dedup_listings.py through spark-submit on a loopback standalone cluster, and
jobs/evaluate.py scores that run in a child process. The rerun of a date (same content, a new
Delta version, both attempts in ``runs``) is checked by tests/reliability/test_rerun_retry_stable.py
on a larger catalog and by tests/test_dag_run.py through Airflow."""

import contextlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import restored_conf
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
CONF = [str(REPO / "conf" / "local.yaml")]
# The cheapest conf that still runs every stage of the job: the lexical signal alone (no text model
# to load), one exact list, no INB round, 2 partitions everywhere.
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
]


def write_catalog(path: Path) -> str:
    rows = [{"posting_id": p, "title": t, "image_phash": None} for p, t in ROWS]
    rows.append({"posting_id": "a1", "title": "duplicate id", "image_phash": None})
    rows.append({"posting_id": None, "title": "no id", "image_phash": None})
    pd.DataFrame(rows).astype({"image_phash": "string"}).to_parquet(path, index=False)
    return str(path)


def run_command(main, argv: list[str]) -> tuple[int, str, str]:
    """A command's ``main(argv)`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def cli_run(spark, tmp_path_factory):
    """One run of the dedup command in-process on the test session (its settings put back after):
    (exit code, stdout, stderr), warehouse, folder."""
    folder = tmp_path_factory.mktemp("cli_job")
    catalog = write_catalog(folder / "listings.parquet")
    wh = str(folder / "wh")
    sets = [x for s in SETS for x in ("--set", s)]
    argv = ["--conf", *CONF, "--input", catalog, "--run-date", DATE, "--warehouse", wh, *sets]
    with restored_conf(spark):
        r = run_command(dedup_cli.main, argv)
    return r, wh, folder


@pytest.mark.slow
def test_cli_job_finds_groups_and_writes_tables(cli_run):
    (rc, stdout, stderr), wh, _ = cli_run
    assert rc == 0, stderr[-3000:]
    assert "rows rejected  2" in stdout and "groups found   3 groups" in stdout

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
    # the group margin (conf/local.yaml 0.04): the match edges more than 0.04 under the best match
    # of either end are counted as kept out of the groups, computed here from the matches table
    best = {p: max(sc, default=-1.0) for p, sc in zip(matches.index, matches["scores"], strict=True)}
    pairs = {
        tuple(sorted((p, q))): s
        for p, ms, ss in zip(matches.index, matches["match_ids"], matches["scores"], strict=True)
        for q, s in zip(ms, ss, strict=True)
    }
    cut = sum(s < max(best[p], best[q]) - 0.04 for (p, q), s in pairs.items())
    assert json.loads(runs["signal_counts"].iloc[0])["margin_cut"] == cut


@pytest.mark.slow
def test_cli_job_tables_have_the_schemas_the_job_checks_first(cli_run):
    """The five data tables this run committed (candidates and group_changes included) are
    exactly what OUTPUT_DATA_SCHEMAS declares: the check the job makes before any work passes on
    them."""
    from deltalake import DeltaTable
    from listing_dedup.sink.delta import DeltaSink
    from listing_dedup.sink.schemas import OUTPUT_DATA_SCHEMAS

    _, wh, _ = cli_run
    sink = DeltaSink(wh)
    assert sorted(OUTPUT_DATA_SCHEMAS) == ["candidates", "clusters", "group_changes", "matches", "rejects"]
    for t, schema in OUTPUT_DATA_SCHEMAS.items():
        assert DeltaTable.is_deltatable(sink.table_uri(t)), t
        sink.check_schema(t, schema)  # raises SinkError on any difference of the Delta schema
        assert [f.name for f in DeltaTable(sink.table_uri(t)).schema().fields] == [*schema.names, "run_date"]


@pytest.mark.slow
def test_cli_job_records_its_health(cli_run):
    """A normal run: health in the printed summary and the runs row, no warning; its settings are
    not the defaults' (lexical only, other thresholds), so the absolute rules decide."""
    (rc, stdout, stderr), wh, _ = cli_run
    assert rc == 0, stderr[-3000:]
    assert "  health\n" in stdout and "    warnings  none" in stdout
    assert "reference  none (absolute rules)" in stdout and "shipped reference is for the conf defaults" in stdout
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
    (rc, _, stderr), wh, folder = cli_run
    assert rc == 0, stderr[-3000:]
    truth = folder / "truth.csv"
    pd.DataFrame({"posting_id": list(EXPECTED_GROUPS), "label_group": list(EXPECTED_GROUPS.values())}).to_csv(
        truth, index=False
    )
    out = folder / "score.json"
    rc, stdout, stderr = run_command(
        evaluate_cli.main, ["--warehouse", wh, "--run-date", DATE, "--truth", str(truth), "--json-out", str(out)]
    )
    assert rc == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res == {
        "run_date": DATE,
        "n": 9,
        "matches": {"f1": 1.0, "precision": 1.0, "recall": 1.0},
        "clusters": {"f1": 1.0, "precision": 1.0, "recall": 1.0},
        # unordered true pairs: a1-a2, a1-a3, a2-a3, b1-b2, c1-c2
        "matches_pairwise": {"f1": 1.0, "precision": 1.0, "recall": 1.0, "true": 5, "predicted": 5, "correct": 5},
        "clusters_pairwise": {"f1": 1.0, "precision": 1.0, "recall": 1.0, "true": 5, "predicted": 5, "correct": 5},
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
