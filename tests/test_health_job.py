"""The health check in the job (issue 15): the Spark aggregates by hand, the ``runs`` table's
health columns (and an earlier table gaining them), and the Done-when case: a Shopee re-ranker
applied to a pHash-free catalog is flagged in the summary and the ``runs`` row, while the same
catalog with its pHashes is not."""

from __future__ import annotations

import datetime as dt
import json
import re

import numpy as np
import pandas as pd
import pytest
from listing_dedup.config import load_config
from listing_dedup.quality.health import QUANTILES, HealthInputs, decide
from listing_dedup.quality.run_health import (
    edge_counts,
    group_counts,
    health_inputs_spark,
    listing_counts,
    signal_coverage,
)
from listing_dedup.sink.delta import DeltaSink, read_table
from listing_dedup.sink.runs import RUNS_SCHEMA, RunSummary, check_runs_table, write_run_row

IDS = [f"p{i}" for i in range(10)]


def _df(spark, rows, schema):
    return spark.createDataFrame(rows, schema)


def test_spark_aggregates_by_hand(spark):
    listings = _df(
        spark,
        [(p, f"t {p}" if p != "p9" else "", "0" * 16 if i < 3 else None) for i, p in enumerate(IDS)],
        "posting_id string, title string, image_phash string",
    )
    # p0-p1, p1-p2, p3-p4 (both directions, as the edge stage stores them); the guard cut p1-p2
    und = [("p0", "p1"), ("p1", "p2"), ("p3", "p4")]
    edges = _df(spark, [*und, *[(b, a) for a, b in und]], "src string, dst string")
    gid = {"p0": "p0", "p1": "p0", "p3": "p3", "p4": "p3"}
    size = {"p0": 2, "p1": 2, "p3": 2, "p4": 2}
    groups = _df(
        spark, [(p, gid.get(p, p), size.get(p, 1)) for p in IDS], "posting_id string, group_id string, group_size int"
    )
    # top-1 scores: p0 0.9, p1 0.9, p2 0.6, p3 0.8, p4 0.8, p5 0.2; nobody else has a candidate
    pairs = _df(
        spark,
        [("p0", "p1", 0.9), ("p0", "p2", 0.3), ("p1", "p0", 0.9), ("p2", "p1", 0.6)]
        + [("p3", "p4", 0.8), ("p4", "p3", 0.8), ("p5", "p9", 0.2)],
        "src string, dst string, score float",
    )
    counts = listing_counts(listings, has_image=False)
    assert counts == {"n": 10, "titled": 9, "phash": 3}
    cfg = load_config(["conf/local.yaml"], ["embed.text.enabled=false"])
    cov = signal_coverage(counts, cfg, ["lexical"], reranker=False)
    assert cov == pytest.approx({"lexical": 0.9, "phash": 0.3})
    off = load_config(["conf/local.yaml"], ["embed.text.enabled=false", "phash.enabled=false"])
    assert signal_coverage(counts, off, ["lexical"], reranker=False)["phash"] == 0.0
    assert signal_coverage(counts, off, ["lexical"], reranker=True)["phash"] == pytest.approx(0.3)  # a model feature
    # the counts the job's summary prints: 2 groups of 2+ (4 listings), 6 singletons; 6 edge rows
    gc = group_counts(groups)
    assert (gc["n"], gc["groups"], gc["grouped"], gc["singletons"], gc["largest"]) == (10, 2, 4, 6, 2)
    assert edge_counts(edges) == {"directed": 6, "matched": 5, "max": 2, "p99": 2.0}

    x = health_inputs_spark(
        listings, edges, groups, pairs, cov, ref_quantiles=[0.5, 0.85], n_largest=5, n_titles=1, guard_cut=True
    )
    assert (x.n_listings, x.n_matched, x.n_edges, x.max_matches, x.matches_p99) == (10, 5, 3, 2, 2.0)
    assert x.size_histogram == {"1": 6, "2": 4, "3-5": 0, "6-10": 0, "11-50": 0, ">50": 0}
    assert x.n_guard_cut == 1
    assert x.n_top1 == 6 and x.top1_cdf == pytest.approx((1 / 6, 4 / 6))
    # sorted top-1 [0.2, 0.6, 0.8, 0.8, 0.9, 0.9]: the median is the 3rd, 0.8; 5 % the smallest
    q = dict(zip(QUANTILES, x.top1_quantiles, strict=True))
    assert q[0.5] == pytest.approx(0.8) and q[0.05] == pytest.approx(0.2) and q[0.95] == pytest.approx(0.9)
    assert x.largest_groups == [
        {"group_id": "p0", "size": 2, "titles": ["t p0"]},
        {"group_id": "p3", "size": 2, "titles": ["t p3"]},
    ]
    # with a slack of 0.05: the shares at or below 0.45 / 0.81 and at or below 0.55 / 0.91
    # (the stages' counts passed in, as the job does: only the top-1 aggregate runs)
    known = {"edge_stats": edge_counts(edges), "group_stats": gc, "guard_cut": False, "n_largest": 0}
    z = health_inputs_spark(listings, edges, groups, pairs, cov, ref_quantiles=[0.5, 0.86], slack=0.05, **known)
    assert z.top1_cdf == pytest.approx((1 / 6, 4 / 6)) and z.top1_cdf_high == pytest.approx((1 / 6, 1.0))
    assert (z.n_listings, z.n_edges, z.size_histogram) == (x.n_listings, x.n_edges, x.size_histogram)
    # no guard re-cut: nothing is counted as cut; no scored pairs: no top-1 figures
    y = health_inputs_spark(listings, edges, groups, None, cov, **known)
    assert y.n_guard_cut == 0 and y.n_top1 == 0 and y.top1_quantiles == () and y.largest_groups == []


def test_spark_code_conflicts_by_hand(spark):
    titles = {
        "p0": "Brand 40in LED TV XX40A550",
        "p1": "Brand 52in LED TV XX52A650",  # p0-p1: codes on both, none shared
        "p2": "brand tv xx40a550 40 inch",  # p0-p2: the code shared
        "p3": "Brand LED TV",  # p0-p3: no code on p3, not compared
    }
    listings = _df(spark, list(titles.items()), "posting_id string, title string")
    und = [("p0", "p1"), ("p0", "p2"), ("p0", "p3")]
    edges = _df(spark, [*und, *[(b, a) for a, b in und]], "src string, dst string")
    groups = _df(spark, [(p, "p0", 4) for p in titles], "posting_id string, group_id string, group_size int")
    x = health_inputs_spark(listings, edges, groups, None, {"text": 1.0}, guard_cut=False, n_largest=0)
    assert (x.n_code_pairs, x.n_code_conflicts) == (2, 1)


OLD_RUNS_SCHEMA = RUNS_SCHEMA.split(", images_unreadable long")[0]  # the first release's runs table


def _summary(run_id: str, health) -> RunSummary:
    s = RunSummary(run_id=run_id, run_date="2026-05-01", warehouse="")
    s.rows_in = s.rows_kept = 100
    s.health = health
    return s


def test_runs_table_of_an_earlier_version_gains_the_health_columns(spark, tmp_path):
    wh = str(tmp_path / "wh")
    sink = DeltaSink(wh)
    t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)  # noqa: UP017
    old = ("r0", "succeeded", "", t, t, "x", "{}", "0.0.1", 1, 1, 0, "{}", 1, 0, 0, 0, 1, 1, "{}")
    sink.write(spark.createDataFrame([old], OLD_RUNS_SCHEMA), "runs", "2026-04-30", mode="append")
    check_runs_table(spark, sink)  # the row to come fits what the table has

    inputs = HealthInputs(
        n_listings=100,
        n_matched=100,
        n_edges=600,  # 12 matches a listing: over the absolute limit of 10
        max_matches=40,
        matches_p99=30.0,
        size_histogram={"1": 0, "2": 0, "3-5": 0, "6-10": 0, "11-50": 0, ">50": 100},
        largest_groups=[{"group_id": "a", "size": 100, "titles": ["x"]}],
        n_top1=100,
        top1_quantiles=tuple(0.9 for _ in QUANTILES),
        top1_cdf=None,
        n_guard_cut=0,
        signals={"lexical": 1.0},
    )
    cfg = load_config(["conf/local.yaml"])
    started = dt.datetime.now(dt.timezone.utc)  # noqa: UP017
    write_run_row(spark, sink, _summary("r1", decide(inputs)), cfg, "in", started, status="succeeded")
    ok = decide(HealthInputs(**{**inputs.__dict__, "n_edges": 50}))
    write_run_row(spark, sink, _summary("r2", ok), cfg, "in", started, status="succeeded")

    runs = read_table(wh, "runs").set_index("run_id")
    assert {"health_json", "health_warnings", "images_unreadable", "signal_counts"} <= set(runs.columns)
    assert runs.loc["r0", "status"] == "succeeded" and runs.loc["r0", "rows_in"] == 1  # the earlier row is kept
    assert pd.isna(runs.loc["r0", "health_json"]) and pd.isna(runs.loc["r0", "health_warnings"])
    assert runs.loc["r1", "health_warnings"] == "matches_exploding"
    assert runs.loc["r2", "health_warnings"] == ""
    h = json.loads(runs.loc["r1", "health_json"])
    assert h["matches_per_listing"] == pytest.approx(12.0) and h["warnings"][0]["code"] == "matches_exploding"
    assert h["reference"] == "" and "no health reference" in h["notes"][0]
    assert sink.add_columns("runs", _arrow(spark), ["health_json"]) is None  # nothing left to add


def _arrow(spark):
    from listing_dedup.sink.schemas import spark_to_arrow_schema

    return spark_to_arrow_schema(spark.createDataFrame([], RUNS_SCHEMA).schema)


# --------------------------------------------------------------------------------------
# the Done-when case, through the job


def _shopee(shared_data, fold: int, n: int) -> pd.DataFrame:
    """Whole groups of one Shopee fold, about ``n`` listings, as the job's reader sees them."""
    from listing_dedup.quality import robust as R

    dev = pd.read_csv(shared_data / "shopee" / "listings_dev.csv", dtype=str)
    return R.labelled_listings(R.size_catalog(dev[dev["fold"].astype(int) == fold], n, seed=0))


# the lexical signal and pHash (no text model to load), 20 neighbours, no INB round (the model's
# overlay repeats these for the job)
LEX = ["embed.text.enabled=false", "index.k=20", "inb.thresholds=[]"]
FAST = [  # a small pair model (no graph round): what is under test is the catalog it meets
    "rerank.train.rounds=50",
    "rerank.train.threads=1",
    "rerank.train.cv_folds=2",
    "rerank.train.graph_rounds=0",
    "rerank.train.min_data_in_leaf=20",
]
JOB = [*LEX, "index.exact_below=100000", "index.n_shards=1", "input.partitions=2", "output.candidates=false",
       "output.explanations=false"]  # fmt: skip


@pytest.fixture(scope="module")
def shopee_reranker(shared_data, tmp_path_factory):
    """A re-ranker trained on whole groups of Shopee folds 2 and 3 (their pHashes on every
    listing), and a catalog of fold-4 groups it never saw."""
    from listing_dedup.training.rerank_train import train_reranker, write_reranker_dir

    train = pd.concat([_shopee(shared_data, f, 400) for f in (2, 3)], ignore_index=True)
    cfg = load_config(["conf/local.yaml"], LEX + FAST)
    res = train_reranker(train, cfg)
    out = tmp_path_factory.mktemp("shopee_rr") / "model"
    write_reranker_dir(out, res, cfg, source="Shopee folds 2+3 (test)")
    catalog = _shopee(shared_data, 4, 250)
    return out, res, catalog


def _job(spark, model, catalog: pd.DataFrame, path, run_date: str, wh: str, fallback: str = "none"):
    from listing_dedup.pipeline import run_dedup

    catalog[["posting_id", "title", "image_phash"]].astype({"image_phash": "string"}).to_parquet(path, index=False)
    cfg = load_config(["conf/local.yaml", str(model / "overlay.yaml")], [*JOB, f"rerank.fallback={fallback}"])
    return run_dedup(spark=spark, cfg=cfg, input_path=str(path), run_date=run_date, warehouse=wh)


@pytest.mark.slow
def test_shopee_reranker_on_a_phash_free_catalog_is_flagged(spark, shopee_reranker, tmp_path):
    model, res, catalog = shopee_reranker
    ref = res.health_reference
    assert ref is not None and ref.score == "fused" and ref.signals["phash"] == 1.0
    assert json.loads((model / "health_reference.json").read_text()) == ref.to_dict()
    wh = str(tmp_path / "wh")
    # the catalog as the model knows such catalogs: pHash on every listing
    ok = _job(spark, model, catalog, tmp_path / "with.parquet", "2026-05-01", wh)
    # the same listings from a shop without image hashes
    bad = _job(spark, model, catalog.assign(image_phash=None), tmp_path / "without.parquet", "2026-05-02", wh)
    # the model's own kind of catalog: judged against the model's reference, nothing to say
    assert ok.health.reference == ref.source and ok.health.top1_ks is not None
    assert ok.health.warning_codes == [], ok.as_text()
    # no pHash: the model reads phash_bits as 0 (identical images) on every pair
    # ... and its matches merge listings whose titles carry different codes (issue 30's check)
    assert bad.health.warning_codes == ["signal_missing", "matches_exploding", "codes_differ", "guard_cut"], (
        bad.as_text()
    )
    text = bad.as_text()
    assert "WARNING signal_missing: signal phash is on 0.0% of the listings" in text
    assert "WARNING matches_exploding" in text and "WARNING guard_cut" in text

    # the same figures, read from the tables by this test
    def per_listing(run_date):
        m = read_table(wh, "matches", run_date)
        g = read_table(wh, "clusters", run_date).set_index("posting_id")["group_id"]
        pairs = [(a, b) for a, ms in zip(m["posting_id"], m["match_ids"]) for b in ms]
        cut = np.mean([g[a] != g[b] for a, b in pairs]) if pairs else 0.0
        return np.mean([len(x) for x in m["match_ids"]]), cut

    assert per_listing("2026-05-01")[0] < 10 and per_listing("2026-05-01")[1] < 0.5
    mpl, cut = per_listing("2026-05-02")
    assert mpl > 3 * ref.matches_per_listing and mpl > 10 and cut > 0.5
    assert bad.health.matches_per_listing == pytest.approx(mpl)

    runs = read_table(wh, "runs").set_index("run_date")
    assert runs.loc["2026-05-01", "health_warnings"] == ""
    assert runs.loc["2026-05-02", "health_warnings"] == "signal_missing,matches_exploding,codes_differ,guard_cut"
    h = json.loads(runs.loc["2026-05-02", "health_json"])
    assert h["reference"] == ref.source and h["signals"]["phash"] == 0.0
    assert [w["code"] for w in h["warnings"]] == ["signal_missing", "matches_exploding", "codes_differ", "guard_cut"]
    assert h["code_conflict_share"] > 0.5

    # rerank.fallback: rule (the default): the same flagged run writes the threshold rule's
    # matches and groups, and says so first
    fb = _job(spark, model, catalog.assign(image_phash=None), tmp_path / "without.parquet", "2026-05-03", wh, "rule")
    assert fb.health.warning_codes[0] == "rerank_fallback", fb.as_text()
    assert "signal_missing" in fb.health.warnings[0].message and "matches_exploding" in fb.health.warnings[0].message
    assert fb.signal_counts["rerank_fallback"] == 1 and fb.signal_counts["reranked_pairs"] > 0
    assert fb.health.reference != ref.source  # judged as the threshold rule's run
    mpl, cut = per_listing("2026-05-03")
    assert mpl < 10 and cut < 0.5 and fb.health.matches_per_listing == pytest.approx(mpl)
    assert runs_after(wh).loc["2026-05-03", "health_warnings"].startswith("rerank_fallback")


def runs_after(wh):
    return read_table(wh, "runs").set_index("run_date")


@pytest.mark.slow
def test_builtin_defaults_on_a_phash_free_catalog_run_the_titles_only_model(spark, shared_data, tmp_path):
    """The defaults (rerank.model: builtin) on a catalog without pHash (whole groups of Shopee
    fold 2, no row of which the models trained on): the titles-only built-in re-ranker decides
    (its note in the summary), judged against its own reference: no signal_missing, no fallback
    to the rule (issue 30)."""
    from listing_dedup.pipeline import run_dedup

    catalog = _shopee(shared_data, 2, 600)
    path = tmp_path / "listings.parquet"
    catalog[["posting_id", "title"]].assign(image_phash=None).astype({"image_phash": "string"}).to_parquet(
        path, index=False
    )
    cfg = load_config(
        ["conf/local.yaml"],
        [
            "input.partitions=2",
            "index.n_shards=1",
            "output.candidates=true",
            "output.candidates_min_score=-1",
            "review.nightly=true",
        ],  # fmt: skip
    )
    wh = str(tmp_path / "wh")
    out = run_dedup(spark=spark, cfg=cfg, input_path=str(path), run_date="2026-05-04", warehouse=wh)
    text = out.as_text()
    assert "the built-in titles-only re-ranker (builtin-titles" in text, text
    assert out.signal_counts.get("reranked_pairs", 0) > 0 and "rerank_fallback" not in out.signal_counts, text
    assert out.health.warning_codes == [], text
    assert "amazon_google" in out.health.reference  # the titles-only model's training parts
    # its thresholds moved to this catalog's estimated share of matches (graph/rerank.prior_shifted)
    shift = [n for n in out.health.notes if n.startswith("prior shift: ")]
    assert shift, text
    # the explanations and the review queue read the rule as applied, shifted (not rerank.threshold)
    m = re.search(r"probability threshold ([0-9.]+) -> ([0-9.]+), min2 [0-9.]+ -> ([0-9.]+)", shift[0])
    unshifted, t, t2 = (float(g) for g in m.groups())
    assert abs(t - unshifted) > 0.01, shift  # the catalog moves it: the check below can tell the two apart
    matches = read_table(wh, "matches")
    seen = 0
    for row in matches.itertuples():
        for why, sig in zip(row.kept_by, row.signal_scores):
            p = dict(sig)["rerank"]
            if abs(p - t) < 1e-3 or abs(p - t2) < 1e-3:
                continue  # the note rounds to 3 decimals
            assert why.startswith("reranker:builtin"), why
            assert why.endswith(":min2") == (p < t), (why, p, t)
            seen += 1
    assert seen > 0
    queue = read_table(wh, "review_queue")  # one night: no previous groups, so no new_merge rows
    assert len(queue) > 0 and set(queue["reason"]) <= {"near_threshold", "guard_cut"}
    near = 1.0 - (queue["probability"] - t).abs() / max(t, 1.0 - t)  # the priority of docs/review.md
    np.testing.assert_allclose(queue["priority"], near + (queue["reason"] == "guard_cut"), atol=2e-3)
    # ... and so does the review-queue command, from the committed tables (the runs row's health)
    from listing_dedup.quality.review import queue_from_tables

    tables = queue_from_tables(wh, "2026-05-04", max_pairs=len(queue))
    assert tables["priority"].round(5).tolist() == queue.sort_values("rank")["priority"].round(5).tolist()
