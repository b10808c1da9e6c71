"""Reviewers' decisions (lib/listing_dedup/sink/decisions.py, ``listing-dedup decide``): the
validation of verdict rows (every reason, nothing lost), the ``decisions`` and
``decision_rejects`` tables the command appends, the content digest (the command's pandas one
equals the job's Spark one), and the job honouring the decisions night after night."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json

import pandas as pd
import pytest
from listing_dedup.cli import decide as decide_cli
from listing_dedup.sink.decisions import (
    Decisions,
    catalog_digests,
    listing_digest,
    listing_digest_column,
    validate_verdicts,
)
from listing_dedup.sink.delta import read_table

NOW = dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.timezone.utc)


def verdicts(rows):
    return pd.DataFrame(rows, columns=["posting_id_a", "posting_id_b", "verdict"])


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = decide_cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_every_reason_and_nothing_lost():
    rows = verdicts(
        [
            ("b", "g", "different"),  # contradicts_decisions: the table says a = g, a later row a = b
            ("b", "a", "same"),  # accepted, stored as a < b
            (" \u200b", "a", "same"),  # null_posting_id
            ("a", "a", "different"),  # self_pair
            ("a", "c", "maybe"),  # bad_verdict
            ("a", "c", None),  # bad_verdict
            ("a", "zz", "same"),  # unknown_posting_id (catalog given)
            ("c", "d", "same"),  # contradicts_file (both rows)
            ("d", "c", "different"),
            ("a", "b", " SAME "),  # duplicate_in_file (the first row kept)
            ("e", "f", "different"),  # contradicts_table
            ("e", "g", "same"),  # accepted
        ]
    )
    existing = pd.DataFrame(
        {
            "posting_id_a": ["e", "a"],
            "posting_id_b": ["f", "g"],
            "verdict": ["same", "same"],
            "decided_at": [pd.Timestamp(NOW) - pd.Timedelta(days=1)] * 2,
        }
    )
    known = {x: f"digest-{x}" for x in "abcdefg"}
    v = validate_verdicts(rows, existing=existing, digests=known, now=NOW)
    assert v.rows_in == 12 == len(v.accepted) + len(v.rejected)
    assert v.accepted[["posting_id_a", "posting_id_b", "verdict"]].values.tolist() == [
        ["a", "b", "same"],
        ["e", "g", "same"],
    ]
    assert v.accepted["digest_a"].tolist() == ["digest-a", "digest-e"]
    assert v.accepted["digest_b"].tolist() == ["digest-b", "digest-g"]
    assert v.accepted["source"].tolist() == ["cli", "cli"]
    assert v.reasons() == {
        "bad_verdict": 2,
        "contradicts_decisions": 1,
        "contradicts_file": 2,
        "contradicts_table": 1,
        "duplicate_in_file": 1,
        "null_posting_id": 1,
        "self_pair": 1,
        "unknown_posting_id": 1,
    }
    raw = json.loads(v.rejected["raw"].iloc[1])
    assert raw == {"posting_id_a": " \u200b", "posting_id_b": "a", "verdict": "same"}


def test_override_lets_the_latest_verdict_win():
    existing = pd.DataFrame(
        {"posting_id_a": ["e"], "posting_id_b": ["f"], "verdict": ["same"], "decided_at": [pd.Timestamp(NOW)]}
    )
    rows = verdicts([("f", "e", "different")])
    assert validate_verdicts(rows, existing=existing, now=NOW).reasons() == {"contradicts_table": 1}
    v = validate_verdicts(rows, existing=existing, now=NOW, override=True)
    assert v.accepted["verdict"].tolist() == ["different"] and v.accepted["digest_a"].isna().all()


def test_decide_command_appends_both_tables(tmp_path):
    wh = str(tmp_path / "wh")
    f = tmp_path / "v.csv"
    f.write_text("posting_id_a,posting_id_b,verdict,note\nb,a,same,looks alike\nc,c,same,\n")
    rc, out, err = run(["--warehouse", wh, "--input", str(f), "--source", "trust-team"])
    assert rc == 0, err
    assert out.startswith("decisions: 2 in, 1 accepted, 1 rejected (self_pair 1)")
    d = read_table(wh, "decisions")
    assert d[["posting_id_a", "posting_id_b", "verdict", "source", "note"]].values.tolist() == [
        ["a", "b", "same", "trust-team", "looks alike"]
    ]
    assert d["digest_a"].isna().all() and d["run_date"].tolist() == [d["recorded_at"][0].strftime("%Y-%m-%d")]
    r = read_table(wh, "decision_rejects")
    assert r["reason"].tolist() == ["self_pair"] and r["batch_id"].tolist() == d["batch_id"].tolist()
    # a second file that contradicts the table is refused; with --override it is the latest
    g = tmp_path / "w.csv"
    g.write_text("posting_id_a,posting_id_b,verdict\na,b,different\n")
    rc, out, _ = run(["--warehouse", wh, "--input", str(g)])
    assert rc == 0 and "1 rejected (contradicts_table 1)" in out
    rc, out, _ = run(["--warehouse", wh, "--input", str(g), "--override"])
    assert rc == 0 and "1 accepted, 0 rejected" in out
    assert Decisions.read(wh).latest["verdict"].tolist() == ["different"]


def test_decide_command_bad_input_exits_2(tmp_path):
    f = tmp_path / "v.csv"
    f.write_text("a,b\n1,2\n")
    rc, _, err = run(["--warehouse", str(tmp_path / "wh"), "--input", str(f)])
    assert rc == 2 and err.count("\n") == 1 and "lack the column(s)" in err
    rc, _, err = run(["--warehouse", str(tmp_path / "wh"), "--input", str(tmp_path / "missing.parquet")])
    assert rc == 2 and "cannot read the verdicts" in err


def test_catalog_digests_equal_the_jobs(spark, tmp_path):
    """The digest the command records from the raw catalog equals the one the job computes on its
    kept listings (both through the job's row rules: cleaned ids and titles, first valid id)."""
    from listing_dedup.config import InputConf
    from listing_dedup.ingest.reader import read_listings

    cat = pd.DataFrame(
        {
            "posting_id": [" a1", "a2", "a2", "b1"],
            "title": ["Paper  Bag\tVictoria", "Rice cooker", "second a2", None],
            "image_phash": [None, "ABCDEF0123456789", None, "0123456789abcdef"],
        }
    ).astype("string")
    path = str(tmp_path / "cat.parquet")
    cat.to_parquet(path, index=False)
    mine = catalog_digests(path, {"a1", "a2", "b1", "zz"}, InputConf())
    kept = read_listings(spark, path, InputConf()).kept
    job = {r["posting_id"]: r["d"] for r in kept.select("posting_id", listing_digest_column(kept).alias("d")).collect()}
    assert mine == job and set(mine) == {"a1", "a2", "b1"}
    assert mine["a2"] == listing_digest("Rice cooker", "abcdef0123456789", None)


# --------------------------------------------------------------------------- the job honours them

NIGHT1, NIGHT2 = "2026-03-02", "2026-03-03"


def _job(spark, catalog, wh, date, queue=False):
    from conftest import restored_conf
    from listing_dedup.cli import dedup as dedup_cli
    from test_job import CONF, SETS

    # every candidate in the candidates table, which the standalone command ranks; with ``queue`` the
    # job writes its own queue too
    nightly = ["output.candidates=true", "output.candidates_min_score=-1", "review.max_pairs=5"]
    nightly += ["review.nightly=true"] if queue else []
    sets = [x for s in [*SETS, *nightly] for x in ("--set", s)]
    argv = ["--conf", *CONF, "--input", catalog, "--run-date", date, "--warehouse", wh, *sets]
    out, err = io.StringIO(), io.StringIO()
    with restored_conf(spark), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = dedup_cli.main(argv)
    assert rc == 0, err.getvalue()[-3000:]
    groups = read_table(wh, "clusters", date).set_index("posting_id")["group_id"].to_dict()
    matches = read_table(wh, "matches", date).set_index("posting_id")["match_ids"].map(list).to_dict()
    runs = read_table(wh, "runs")
    counts = json.loads(runs.sort_values("started_at")["signal_counts"].iloc[-1])
    return groups, matches, counts


@pytest.fixture(scope="module")
def nights(spark, tmp_path_factory):
    """The tiny catalog of tests/test_job.py groups a1-a2-a3, b1-b2 and c1-c2; d1 and e1 are
    singletons. A reviewer says a1 != a3 and b1 != b2 (a cut each) and d1 = e1 (a join), with the
    catalog (digests). Night 1, night 2 (b2's title changed) and a rerun of night 2, each with
    the candidates table (the review queue reads it); night 1 writes its own review queue (review.nightly)."""
    from test_job import ROWS

    tmp = tmp_path_factory.mktemp("decisions_job")

    def catalog(path, rows):
        pd.DataFrame(rows, columns=["posting_id", "title"]).assign(image_phash=None).astype(
            {"image_phash": "string"}
        ).to_parquet(path, index=False)
        return str(path)

    cat1 = catalog(tmp / "night1.parquet", ROWS)
    cat2 = catalog(tmp / "night2.parquet", [(p, t + " baru" if p == "b2" else t) for p, t in ROWS])
    wh = str(tmp / "wh")
    v = tmp / "verdicts.csv"
    v.write_text("posting_id_a,posting_id_b,verdict\na3,a1,different\nb1,b2,different\nd1,e1,same\n")
    decided = run(["--warehouse", wh, "--input", str(v), "--catalog", cat1])
    return {
        "decided": decided,
        "wh": wh,
        "cat2": cat2,
        "night1": _job(spark, cat1, wh, NIGHT1, queue=True),
        "night2": _job(spark, cat2, wh, NIGHT2),
        "rerun": _job(spark, cat2, wh, NIGHT2),
    }


@pytest.mark.slow
def test_the_job_honours_decisions_night_after_night_and_on_a_rerun(nights):
    """Night 1 honours all three decisions; night 2 keeps a1 | a3 cut and d1 + e1 joined, and
    flags the b1-b2 decision as stale without applying it (b1 and b2 group again); the rerun of
    night 2 gives the same groups and matches."""
    rc, out, err = nights["decided"]
    assert rc == 0 and "3 accepted, 0 rejected" in out, out + err

    g1, m1, c1 = nights["night1"]
    assert g1["a1"] != g1["a3"] and g1["a2"] in (g1["a1"], g1["a3"])
    assert g1["b1"] != g1["b2"] and g1["d1"] == g1["e1"] == "d1" and g1["c1"] == g1["c2"]
    assert "a3" not in m1["a1"] and "b2" not in m1["b1"] and m1["d1"] == ["e1"]
    assert (c1["decisions_cut_groups"], c1["decisions_joined_groups"], c1["decisions_stale"]) == (2, 1, 0)

    g2, m2, c2 = nights["night2"]
    assert g2["a1"] != g2["a3"] and g2["d1"] == g2["e1"]
    assert g2["b1"] == g2["b2"]  # the stale decision is not applied to b2's new content
    assert (c2["decisions_stale"], c2["decisions_cut_groups"], c2["decisions_joined_groups"]) == (1, 1, 1)
    assert Decisions.read(nights["wh"]).latest.shape[0] == 3  # kept in the table

    g3, m3, _ = nights["rerun"]
    assert (g3, m3) == (g2, m2)


@pytest.mark.slow
def test_review_queue_command_writes_the_nights_queue(nights, tmp_path):
    from listing_dedup.cli import review_queue as rq_cli

    wh = nights["wh"]
    argv = ["--warehouse", wh, "--run-date", NIGHT2, "--input", nights["cat2"], "--html", str(tmp_path)]
    argv += ["--set", "review.max_pairs=5"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = rq_cli.main(argv)
    assert rc == 0, err.getvalue()
    q = read_table(wh, "review_queue", NIGHT2)
    assert 1 <= len(q) <= 5 and q["rank"].tolist() == list(range(1, len(q) + 1))
    assert q["priority"].is_monotonic_decreasing
    decided = {("a1", "a3"), ("b1", "b2"), ("d1", "e1")}
    assert not decided & set(zip(q["posting_id_a"], q["posting_id_b"]))
    assert q["title_a"].notna().all() and (q["run_id"] == read_table(wh, "clusters", NIGHT2)["run_id"][0]).all()
    assert q["signal_scores"].map(len).gt(0).all()
    page = (tmp_path / "review.html").read_text()
    assert q["title_a"][0] in page
    # a rerun of the command replaces the date's queue
    with contextlib.redirect_stdout(io.StringIO()):
        assert rq_cli.main(argv) == 0
    assert len(read_table(wh, "review_queue", NIGHT2)) == len(q)


@pytest.mark.slow
def test_every_match_says_why_it_was_kept(nights):
    """The matches table explains each match (graph/explain.py): d1-e1 (a must-link between two
    singletons) says so; the threshold rule's matches say ``threshold`` with the lexical cosine
    (the only signal) equal to the searched score; no pHash in the catalog: no distance."""
    m = read_table(nights["wh"], "matches", NIGHT1).set_index("posting_id")
    assert list(m.loc["d1", "match_ids"]) == ["e1"] and list(m.loc["d1", "kept_by"]) == ["must-link"]
    a1 = dict(zip(m.loc["a1", "match_ids"], m.loc["a1", "kept_by"]))
    assert a1 == {"a2": "threshold"}  # a1 != a3 was decided: that match is gone
    for pid, row in m.iterrows():
        n = len(row["match_ids"])
        assert len(row["kept_by"]) == len(row["signal_scores"]) == len(row["phash_distance"]) == n, pid
        assert all(pd.isna(d) for d in row["phash_distance"])
        for s, sig, why in zip(row["scores"], row["signal_scores"], row["kept_by"]):
            sig = dict(sig)
            if why == "threshold":
                assert abs(sig["lexical"] - s) < 1e-4 and abs(sig["fused"] - s) < 1e-4, (pid, sig, s)


@pytest.mark.slow
def test_the_nightly_job_writes_its_review_queue(nights):
    """review.nightly: each night's run writes its review_queue (capped by review.max_pairs, the
    decided pairs left out, titles and per-signal scores, the run's id), the same pairs in the
    same order as the standalone command ranks from that night's committed tables."""
    from listing_dedup.quality.review import queue_from_tables

    wh = nights["wh"]
    q = read_table(wh, "review_queue", NIGHT1).sort_values("rank", ignore_index=True)
    assert q["rank"].tolist() == [1, 2, 3, 4, 5]  # review.max_pairs=5
    assert not {("a1", "a3"), ("b1", "b2"), ("d1", "e1")} & set(zip(q["posting_id_a"], q["posting_id_b"]))
    assert q["title_a"].notna().all() and q["signal_scores"].map(len).gt(0).all()
    assert (q["run_id"] == read_table(wh, "clusters", NIGHT1)["run_id"][0]).all()
    _, _, counts = nights["night1"]
    assert counts["review_queue_pairs"] == 5 and "review_queue_failed" not in counts
    tables = queue_from_tables(wh, NIGHT1, max_pairs=5)
    cols = ["posting_id_a", "posting_id_b", "reason", "group_a", "group_b"]
    assert q[cols].values.tolist() == tables[cols].values.tolist()
    assert q["priority"].round(5).tolist() == tables["priority"].round(5).tolist()


@pytest.mark.slow
def test_the_report_links_the_nights_review_page(nights, tmp_path):
    """jobs/evaluate.py --report: the report of a night with a review queue writes review.html (the
    queue's pairs side by side, titles shown) and links it."""
    from listing_dedup.quality.report import write_report

    wh = nights["wh"]
    groups, _, _ = nights["night1"]
    truth = pd.DataFrame({"posting_id": list(groups), "label_group": [p[0] for p in groups]})
    path = write_report(wh, NIGHT1, truth, tmp_path)
    assert '<a href="review.html">Review page</a>: the 5 pairs' in path.read_text()
    page = (tmp_path / "review.html").read_text()
    q = read_table(wh, "review_queue", NIGHT1).sort_values("rank")
    assert all(t in page for t in q["title_a"]) and page.count('class="rank"') == 5
