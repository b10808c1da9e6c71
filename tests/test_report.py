"""The evaluation report: curves and error tables against hand-computed values, the files
it writes (HTML, PNGs, thumbnails) from a tiny hand-made warehouse, and the CLI option.

The tiny run (6 listings; truth A = a1 a2 a3, B = b1 b2, C = c1):
matches a1-a2 (0.9, right) and b1-c1 (0.8, a false merge); a3 and b2 unmatched.
candidates (both directions): a1-a2 fused 0.9 {text 0.9, phash 0.95}; a1-a3 0.7 {text 0.6,
image 0.85}; b1-c1 0.8 {text 0.85}; b1-b2 0.5 {text 0.3, phash 0.9}.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from listing_dedup.quality.report import (
    FINAL,
    FUSED,
    build_report,
    cluster_size_counts,
    error_pairs,
    load_report_data,
    render_report,
    threshold_curves,
)
from listing_dedup.sink.delta import DeltaSink
from PIL import Image

RUN_DATE = "2026-02-03"
TRUTH = pd.DataFrame(
    {
        "posting_id": ["a1", "a2", "a3", "b1", "b2", "c1"],
        "label_group": ["A", "A", "A", "B", "B", "C"],
    }
)
IDS = TRUTH["posting_id"]
MATCHES = pd.DataFrame(
    {
        "posting_id": ["a1", "a2", "a3", "b1", "b2", "c1"],
        "match_ids": [["a2"], ["a1"], [], ["c1"], [], ["b1"]],
        "scores": [[0.9], [0.9], [], [0.8], [], [0.8]],
    }
)
CLUSTERS = pd.DataFrame(
    {
        "posting_id": ["a1", "a2", "a3", "b1", "b2", "c1"],
        "group_id": ["a1", "a1", "a3", "b1", "b2", "b1"],
        "group_size": [2, 2, 1, 2, 1, 2],
    }
)
_CAND = [
    ("a1", "a2", 0.9, {"text": 0.9, "phash": 0.95}),
    ("a1", "a3", 0.7, {"text": 0.6, "image": 0.85}),
    ("b1", "c1", 0.8, {"text": 0.85}),
    ("b1", "b2", 0.5, {"text": 0.3, "phash": 0.9}),
]
CANDIDATES = pd.DataFrame(
    [(a, b, s, m) for a, b, s, m in _CAND] + [(b, a, s, m) for a, b, s, m in _CAND],
    columns=["posting_id", "candidate_id", "score", "signal_scores"],
)
TITLES = {
    "a1": "Sabun Mandi Cair 250ml",
    "a2": "sabun mandi cair 250 ML promo",
    "a3": "Sabun Cair Mandi 250ml ORI",
    "b1": "Kabel Data USB Type C 1m",
    "b2": "kabel data type-c 1 meter",
    "c1": "Charger <Fast> & Kabel 2A",
}


def _curve(curves: pd.DataFrame, signal: str, t: float) -> pd.Series:
    row = curves[(curves["signal"] == signal) & np.isclose(curves["threshold"], t)]
    assert len(row) == 1, (signal, t)
    return row.iloc[0]


# --------------------------------------------------------------------------------------
# pure functions against hand-computed values


def test_threshold_curves_match_hand_computed_scores():
    curves = threshold_curves(CANDIDATES, MATCHES, TRUTH, IDS, thresholds=[0.45, 0.75, 0.8, 0.85, 0.9])
    assert set(curves["signal"]) == {FINAL, FUSED, "image", "phash", "text"}

    # fused >= 0.75 keeps a1-a2 and b1-c1: F1 per listing .8 .8 .5 .5 2/3 2/3
    fused75 = _curve(curves, FUSED, 0.75)
    assert fused75["f1"] == pytest.approx((0.8 + 0.8 + 0.5 + 0.5 + 2 / 3 + 2 / 3) / 6)
    assert fused75["pairs"] == 4
    # fused >= 0.45 keeps every candidate: F1 1 .8 .8 .8 1 2/3
    fused45 = _curve(curves, FUSED, 0.45)
    assert fused45["f1"] == pytest.approx((1 + 0.8 + 0.8 + 0.8 + 1 + 2 / 3) / 6)
    assert fused45["precision"] == pytest.approx((1 + 1 + 1 + 2 / 3 + 1 + 0.5) / 6)
    assert fused45["recall"] == pytest.approx((1 + 2 / 3 + 2 / 3 + 1 + 1 + 1) / 6)
    # phash >= 0.9: a1-a2 and b1-b2 (rows without a phash key are pairs phash did not produce)
    assert _curve(curves, "phash", 0.9)["f1"] == pytest.approx((0.8 + 0.8 + 0.5 + 1 + 1 + 1) / 6)
    # image >= 0.8: a1-a3 only
    assert _curve(curves, "image", 0.8)["f1"] == pytest.approx((0.8 + 0.5 + 0.8 + 2 / 3 + 2 / 3 + 1) / 6)
    # text >= 0.85 keeps a1-a2 (0.9) and b1-c1 (0.85, equal counts as kept) = fused at 0.75
    assert _curve(curves, "text", 0.85)["f1"] == pytest.approx(fused75["f1"])
    # final matches >= 0.85: only a1-a2 survives
    assert _curve(curves, FINAL, 0.85)["f1"] == pytest.approx((0.8 + 0.8 + 0.5 + 2 / 3 + 2 / 3 + 1) / 6)
    assert _curve(curves, FINAL, 0.45)["f1"] == pytest.approx(fused75["f1"])


def test_threshold_curves_without_candidates_have_only_final_matches():
    curves = threshold_curves(None, MATCHES, TRUTH, IDS, thresholds=[0.0, 0.95])
    assert curves["signal"].unique().tolist() == [FINAL]
    # nothing kept at 0.95: every listing alone, F1 = 2 / (|T| + 1)
    assert _curve(curves, FINAL, 0.95)["f1"] == pytest.approx((0.5 * 3 + 2 / 3 * 2 + 1) / 6)


def test_error_pairs_lists_false_merges_and_missed_matches():
    fm, missed = error_pairs(MATCHES, TRUTH, IDS, CANDIDATES)
    assert fm[["posting_id", "match_id"]].values.tolist() == [["b1", "c1"]]
    assert fm["score"].tolist() == pytest.approx([0.8])
    # near misses first (best candidate score), never-candidate pairs last
    assert missed[["posting_id", "match_id"]].values.tolist() == [["a1", "a3"], ["b1", "b2"], ["a2", "a3"]]
    assert missed["score"].iloc[:2].tolist() == pytest.approx([0.7, 0.5])
    assert np.isnan(missed["score"].iloc[2])

    _, no_cand = error_pairs(MATCHES, TRUTH, IDS)
    assert sorted(map(tuple, no_cand[["posting_id", "match_id"]].values)) == [("a1", "a3"), ("a2", "a3"), ("b1", "b2")]


def test_cluster_size_counts():
    sizes = cluster_size_counts(CLUSTERS, TRUTH)
    assert sizes.to_dict("list") == {"size": [1, 2, 3], "predicted_groups": [2, 2, 0], "true_groups": [1, 1, 1]}


# --------------------------------------------------------------------------------------
# a tiny warehouse written with DeltaSink, the rendered files, the CLI


def _jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (200, 150), color).save(buf, format="JPEG")
    return buf.getvalue()


def _write_warehouse(spark, root: Path, *, with_candidates: bool) -> tuple[str, Path]:
    wh = str(root / "warehouse")
    inputs = root / "input"
    (inputs / "imgs").mkdir(parents=True)
    for pid, color in (("a1", "red"), ("b1", "green"), ("c1", "blue")):
        (inputs / "imgs" / f"{pid}.jpg").write_bytes(_jpeg(color))
    images = {"a1": "a1.jpg", "b1": "b1.jpg", "c1": "c1.jpg", "a2": "gone.jpg"}  # a2's file is missing
    pd.DataFrame(
        {
            "posting_id": list(TITLES),
            "title": list(TITLES.values()),
            "image": [images.get(p) for p in TITLES],
        }
    ).to_parquet(inputs / "listings.parquet")

    sink = DeltaSink(wh)
    m = MATCHES.assign(scores=MATCHES["scores"].map(lambda v: [float(x) for x in v]))
    sink.write(
        spark.createDataFrame(m, "posting_id string, match_ids array<string>, scores array<float>"), "matches", RUN_DATE
    )
    sink.write(
        spark.createDataFrame(CLUSTERS, "posting_id string, group_id string, group_size int"), "clusters", RUN_DATE
    )
    if with_candidates:
        sink.write(
            spark.createDataFrame(
                CANDIDATES,
                "posting_id string, candidate_id string, score float, signal_scores map<string,float>",
            ),
            "candidates",
            RUN_DATE,
        )
    t0 = dt.datetime(2026, 2, 3, 1, 0, tzinfo=dt.timezone.utc)  # noqa: UP017
    conf = {"input": {"image_root": str(inputs / "imgs")}, "match": {"threshold": 0.75}}
    runs = [
        ("r-ok", "succeeded", str(inputs / "listings.parquet"), json.dumps(conf), t0, 6),
        ("r-bad", "failed", "/nowhere/else.parquet", json.dumps(conf), t0 + dt.timedelta(hours=1), 0),
    ]
    sink.write(
        spark.createDataFrame(
            runs,
            "run_id string, status string, input_path string, config_json string, finished_at timestamp, rows_in long",
        ),
        "runs",
        RUN_DATE,
        mode="append",
    )
    return wh, inputs


def _assert_png(path: Path) -> None:
    assert path.is_file()
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 200
        # not blank: a plot has many distinct colours
        assert len(im.convert("RGB").getcolors(maxcolors=1_000_000)) > 20


def test_report_from_warehouse_with_candidates(spark, tmp_path):
    wh, inputs = _write_warehouse(spark, tmp_path, with_candidates=True)
    data = load_report_data(wh, RUN_DATE, TRUTH)
    assert data.run["run_id"] == "r-ok"  # the latest *succeeded* run, not the later failed one
    assert data.image_root == str(inputs / "imgs")  # from the run's config input.image_root
    report = build_report(data, thresholds=[0.45, 0.75, 0.9], samples=5)
    assert report.threshold == 0.75
    assert report.matches_scores.f1 == pytest.approx((0.8 + 0.8 + 0.5 + 0.5 + 2 / 3 + 2 / 3) / 6)
    assert _curve(report.curves, FUSED, 0.45)["f1"] == pytest.approx((1 + 0.8 + 0.8 + 0.8 + 1 + 2 / 3) / 6)
    assert report.false_sample[["posting_id", "match_id", "title_a", "title_b"]].values.tolist() == [
        ["b1", "c1", TITLES["b1"], TITLES["c1"]]
    ]
    assert report.missed_sample["posting_id"].tolist() == ["a1", "b1", "a2"]

    out = tmp_path / "report"
    path = render_report(report, out)
    assert path == out / "report.html"
    _assert_png(out / "curves.png")
    _assert_png(out / "cluster_sizes.png")
    page = path.read_text()
    assert "False merges: 1 predicted pairs" in page
    assert "Missed matches: 3 true pairs" in page
    assert "Charger &lt;Fast&gt; &amp; Kabel 2A" in page and "<Fast>" not in page  # titles escaped
    for pid in ("a1", "a2", "a3", "b1", "b2"):
        assert TITLES[pid] in page
    assert "No candidates for this run" not in page
    assert "signals: fused, image, phash, text" in page
    # thumbnails: b1 and c1 (false merge) + a1, b1 (missed); a2's file is missing, a3 and b2 have none
    assert page.count('src="data:image/jpeg;base64,') == 4
    assert page.count("<em>no image</em>") == 2 + 2


def test_report_without_candidates_table_says_so(spark, tmp_path):
    wh, _ = _write_warehouse(spark, tmp_path, with_candidates=False)
    data = load_report_data(wh, RUN_DATE, TRUTH, image_root=str(tmp_path / "elsewhere"))
    assert data.candidates is None and data.image_root == str(tmp_path / "elsewhere")
    report = build_report(data, thresholds=[0.5, 0.85], samples=2)
    assert report.curves["signal"].unique().tolist() == [FINAL]
    path = render_report(report, tmp_path / "r2")
    page = path.read_text()
    assert "No candidates for this run" in page and "this warehouse has no candidates table" in page
    assert "random sample (seed 0)" in page
    assert 'src="data:image' not in page  # images resolved against a root that has none
    _assert_png(tmp_path / "r2" / "curves.png")


def _load_job():
    spec = importlib.util.spec_from_file_location("evaluate_job", Path(__file__).parents[1] / "jobs" / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_evaluate_cli_report_option_keeps_one_json_line(spark, tmp_path, capsys):
    wh, _ = _write_warehouse(spark, tmp_path, with_candidates=True)
    truth_csv = tmp_path / "truth.csv"
    TRUTH.to_csv(truth_csv, index=False)
    job = _load_job()
    out = tmp_path / "rep"
    rc = job.main(["--warehouse", wh, "--run-date", RUN_DATE, "--truth", str(truth_csv), "--report", str(out)])
    captured = capsys.readouterr()
    assert rc == 0
    lines = captured.out.splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["matches"]["f1"] == pytest.approx((0.8 + 0.8 + 0.5 + 0.5 + 2 / 3 + 2 / 3) / 6)
    assert sorted(p.name for p in out.iterdir()) == ["cluster_sizes.png", "curves.png", "report.html"]

    # without --report: same line, no files
    rc = job.main(["--warehouse", wh, "--run-date", RUN_DATE, "--truth", str(truth_csv)])
    assert rc == 0 and capsys.readouterr().out.splitlines() == lines
    # --image-root alone is a usage error (exit 2)
    with pytest.raises(SystemExit) as e:
        job.main(["--warehouse", wh, "--run-date", RUN_DATE, "--truth", str(truth_csv), "--image-root", "x"])
    assert e.value.code == 2
