"""The learned pair re-ranker: features by hand, the Spark frame equal to the numpy frame,
training that beats the threshold rule on a held-out catalog, the model directory, the job."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from listing_dedup.config import load_config
from listing_dedup.errors import ConfigError
from listing_dedup.graph.rerank import (
    ATTRIBUTE_FEATURE_SET,
    ATTRIBUTE_FRAME_COLUMNS,
    FEATURE_SETS,
    FEATURES,
    FRAME_COLUMNS,
    GRAPH_FEATURES,
    ID_FEATURES,
    IDENTIFIER_FEATURE_SET,
    NUMBER_FEATURE_SET,
    Reranker,
    candidate_frame,
    candidate_frame_spark,
    check_fingerprint,
    graph_features,
    listing_stats,
    load_reranker,
    pair_features,
    phash_bits,
    rerank_spark,
    title_tokens,
)
from listing_dedup.ingest.titles import clean_title
from listing_dedup.quality.sample import generate_catalog
from listing_dedup.quality.tuning import knn
from listing_dedup.search.blender import blend_numpy
from listing_dedup.training.rerank_train import part_candidates, rule_pairs, train_reranker, write_reranker_dir

LEX = ["embed.text.enabled=false"]  # lexical + pHash only: no text model in these tests
FAST = [
    "rerank.train.rounds=60",
    "rerank.train.threads=1",
    "rerank.train.cv_folds=3",
    "rerank.train.min_data_in_leaf=20",
]


def test_title_tokens_and_hamming():
    assert title_tokens("Susu UHT 1.8 L isi 2") == (
        frozenset({"susu", "uht", "1", "8", "l", "isi", "2"}),
        frozenset({"1.8", "2"}),
    )
    assert title_tokens(None) == (frozenset(), frozenset())
    got = phash_bits(
        ["ffffffffffffffff", "0000000000000001", None, "zz"],
        ["fffffffffffffff0", "0000000000000001", "0" * 16, "0" * 16],
    )
    assert got[:2].tolist() == [4.0, 0.0] and np.isnan(got[2:]).all()


def _frame(**over):
    row = dict.fromkeys(FRAME_COLUMNS, 0.0)
    row.update(
        score=0.8,
        raw_score=0.7,
        raw_top1_src=0.9,
        rank=1.0,
        rev_rank=3.0,
        top1_src=0.9,
        mean_top_src=0.6,
        kth_src=0.5,
        deg_a_src=4.0,
        deg_b_src=2.0,
        top1_dst=0.85,
        mean_top_dst=0.65,
        kth_dst=0.55,
        deg_a_dst=5.0,
        deg_b_dst=1.0,
        phash_src="00000000000000ff",
        phash_dst="000000000000000f",
        title_src="Gelas kaca 250 ml set 6",
        title_dst="GELAS KACA 500 ml set 6",
    )
    row.update(over)
    return pd.DataFrame([row])


def test_pair_features_by_hand():
    x = dict(zip(FEATURES, pair_features(_frame())[0], strict=True))
    assert x["score"] == 0.8 and x["raw_score"] == 0.7 and x["raw_gap"] == pytest.approx(-0.2)
    assert (x["rank"], x["rev_rank"]) == (1.0, 3.0)
    assert x["gap_src"] == pytest.approx(-0.1) and x["gap_dst"] == pytest.approx(-0.05)
    assert x["rel_src"] == pytest.approx(0.2) and x["rel_dst"] == pytest.approx(0.15)
    assert (x["kth_src"], x["kth_dst"], x["deg_a_src"], x["deg_a_dst"], x["deg_b_src"], x["deg_b_dst"]) == (
        0.5,
        0.55,
        4.0,
        5.0,
        2.0,
        1.0,
    )
    assert x["phash_bits"] == 4.0
    # words {gelas, kaca, 250|500, ml, set, 6}: 5 shared of 7; numbers {250, 6} vs {500, 6}: 1 of 3
    assert x["word_jaccard"] == pytest.approx(5 / 7) and x["number_jaccard"] == pytest.approx(1 / 3)
    assert x["number_sides"] == 2.0 and x["len_min"] == 23.0 and x["len_diff"] == 0.0
    y = dict(zip(FEATURES, pair_features(_frame(title_dst="gelas", phash_dst=None, raw_score=np.nan))[0], strict=True))
    assert y["number_jaccard"] == 0.0
    assert y["number_sides"] == 1.0 and np.isnan(y["phash_bits"]) and np.isnan(y["raw_gap"])
    assert pair_features(_frame().iloc[:0]).shape == (0, len(FEATURES))


def test_identifier_features_by_hand():
    # the TV range: same series words, different model codes and screen sizes
    f = _frame(title_src="Brand 40in Smart LED TV XX40A550", title_dst="Brand 52in Smart LED TV XX52A650")
    x = dict(zip(IDENTIFIER_FEATURE_SET, pair_features(f, IDENTIFIER_FEATURE_SET)[0], strict=True))
    assert [x[k] for k in ID_FEATURES] == [0.0, 0.0, 1.0, 1.0, 1.0]
    # one code shared (written two ways, 7 characters), same size, the other side has 2 codes
    f = _frame(title_src="Sony DSC-W120 camera 7.2MP", title_dst="sony dsc w120 7.2 MP silver")
    x = dict(zip(IDENTIFIER_FEATURE_SET, pair_features(f, IDENTIFIER_FEATURE_SET)[0], strict=True))
    assert [x[k] for k in ID_FEATURES] == [1.0, 7.0, 0.0, 0.0, 2.0]
    # the first features are those of FEATURES, unchanged
    assert (pair_features(f, IDENTIFIER_FEATURE_SET)[:, : len(FEATURES)] == pair_features(f)).all()


def test_number_containment_by_hand():
    # wdc_products' missed pair: the short title's numbers {8} all in the long one's {8, 2666, 16}
    # (Jaccard 1/3); the long one's part number {4, 21300} against {8, 2666, 16}: none
    f = _frame(title_src="corsair 8gb 2666mhz cl16 vengeance lpx", title_dst="corsair vengeance lpx 8gb")
    x = dict(zip(NUMBER_FEATURE_SET, pair_features(f, NUMBER_FEATURE_SET)[0], strict=True))
    assert x["number_containment"] == 1.0 and x["number_jaccard"] == pytest.approx(1 / 3)
    f = _frame(title_src="corsair vengeance lpx 8gb - pc4-21300", title_dst="corsair 8gb 2666mhz cl16 vengeance lpx")
    x = dict(zip(NUMBER_FEATURE_SET, pair_features(f, NUMBER_FEATURE_SET)[0], strict=True))
    assert x["number_containment"] == pytest.approx(1 / 3)  # {8, 4, 21300} against {8, 2666, 16}: 1 of 3
    # a side without numbers: unknown; the earlier sets' columns unchanged
    f = _frame(title_src="corsair vengeance lpx", title_dst="corsair 8gb vengeance lpx")
    x = dict(zip(NUMBER_FEATURE_SET, pair_features(f, NUMBER_FEATURE_SET)[0], strict=True))
    assert np.isnan(x["number_containment"])
    n = len(ATTRIBUTE_FEATURE_SET)
    np.testing.assert_array_equal(pair_features(f, NUMBER_FEATURE_SET)[:, :n], pair_features(f, ATTRIBUTE_FEATURE_SET))
    assert NUMBER_FEATURE_SET in FEATURE_SETS


def test_listing_stats_and_frame_by_hand():
    # 0 -> 1 (0.9), 2 (0.5); 1 -> 0 (0.9); 2 -> 1 (0.7), 0 (0.5)
    final = (
        np.array([0, 0, 1, 2, 2]),
        np.array([1, 2, 0, 1, 0]),
        np.array([0.9, 0.5, 0.9, 0.7, 0.5], dtype=np.float32),
    )
    base = (np.array([0, 1, 2]), np.array([1, 0, 1]), np.array([0.8, 0.8, 0.6], dtype=np.float32))
    st = listing_stats(final[0], final[2], 3)
    assert st["top1"].tolist() == pytest.approx([0.9, 0.9, 0.7])
    assert st["mean_top"].tolist() == pytest.approx([0.7, 0.9, 0.6])
    assert np.isnan(st["kth"]).all()  # nobody has 5 neighbours
    assert st["deg_a"].tolist() == [1, 1, 1] and st["deg_b"].tolist() == [1, 1, 0]
    f = candidate_frame(base, final, ["a", "b", "c"], [None] * 3, k=4, min_score=0.6)
    assert list(zip(f["src"], f["dst"])) == [(0, 1), (1, 0), (2, 1)]  # the 0.5 rows are below min_score
    assert f["rank"].tolist() == [0, 0, 0]
    assert f["rev_rank"].tolist() == [0, 0, 4]  # 2 is not in the list of 1: k
    assert f["raw_score"].tolist() == pytest.approx([0.8, 0.8, 0.6])
    assert f["raw_top1_src"].tolist() == pytest.approx([0.8, 0.8, 0.6])
    assert f["title_dst"].tolist() == ["b", "a", "b"]


def _random_lists(n=60, d=8, k=8, seed=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, d))
    x = (centres[rng.integers(0, 12, n)] + 0.6 * rng.normal(size=(n, d))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    base = knn(x, k)
    keep = base[2] >= 0.5
    final = knn(blend_numpy(x, base[0][keep], base[1][keep], base[2][keep]), k)
    ids = np.array([f"p{i:03d}" for i in range(n)], dtype=object)
    titles = [f"item {i % 7} size {i % 3}00 ml" if i % 5 else "" for i in range(n)]
    phashes = [f"{rng.integers(0, 2**62):016x}" if i % 4 else None for i in range(n)]
    return ids, base, final, titles, phashes


def _pairs_df(spark, ids, lists):
    s, d, sc = lists
    pdf = pd.DataFrame({"src": ids[s], "dst": ids[d], "score": sc.astype(np.float32)})
    return spark.createDataFrame(pdf, "src string, dst string, score float")


def _small_model(seed=0):
    """A pair model and one graph round, trained on noise (only the plumbing is under test)."""
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 5}
    texts = []
    for width in (len(FEATURES), len(FEATURES) + len(GRAPH_FEATURES)):
        X = rng.normal(size=(400, width))
        y = (X[:, 0] + 0.5 * X[:, -3] > 0).astype(float)
        texts.append(lgb.train(params, lgb.Dataset(X, y), 20).model_to_string())
    return Reranker(tuple(texts), {"graph_floor": 0.05})


def test_graph_features_by_hand():
    # candidates 0->1 (0.9), 1->0 (0.7), 1->2 (0.6), 2->1 (0.3), 0->2 (0.04): undirected graph with
    # floor 0.05: {0,1} 0.9, {1,2} 0.6 ({0,2} 0.04 is below the floor)
    src, dst = np.array([0, 1, 1, 2, 0]), np.array([1, 0, 2, 1, 2])
    p = np.array([0.9, 0.7, 0.6, 0.3, 0.04])
    g = pd.DataFrame(graph_features(src, dst, p, 3, 0.05), columns=GRAPH_FEATURES)
    assert g["p"].tolist() == p.tolist()
    assert g["p_rev"].tolist()[:4] == [0.7, 0.9, 0.3, 0.6] and np.isnan(g["p_rev"].iloc[4])
    # 0 -> 2 goes through 1: 0.9 * 0.6, strong (> 0.5) on both hops
    assert g["two_sum"].tolist() == pytest.approx([0, 0, 0, 0, 0.54]) and g["two_count"].tolist() == [0, 0, 0, 0, 1]
    assert g["deg_src"].tolist() == [1, 2, 2, 1, 1] and g["deg_dst"].tolist() == [2, 1, 1, 2, 1]
    assert g["psum_src"].tolist() == pytest.approx([0.9, 1.5, 1.5, 0.6, 0.9])
    assert g["pgap_src"].tolist() == pytest.approx([0, -0.2, -0.3, -0.3, -0.86])
    assert g["pgap_dst"].tolist() == pytest.approx([0, -0.2, 0, -0.6, -0.56])
    assert g["prank"].tolist() == [0, 0, 1, 0, 1]


def test_spark_candidate_frame_and_scores_equal_numpy(spark):
    ids, base, final, titles, phashes = _random_lists()
    k = 8
    ref = candidate_frame(base, final, titles, phashes, k, min_score=0.2)
    ref = ref.assign(src=ids[ref["src"]], dst=ids[ref["dst"]])
    listings = spark.createDataFrame(
        pd.DataFrame({"posting_id": ids, "title": titles, "image_phash": phashes}),
        "posting_id string, title string, image_phash string",
    )
    frame = candidate_frame_spark(_pairs_df(spark, ids, base), _pairs_df(spark, ids, final), listings, k, 0.2)
    got = frame.toPandas().sort_values(["src", "dst"], ignore_index=True)
    ref = ref.sort_values(["src", "dst"], ignore_index=True)
    assert list(got.columns) == ["src", "dst", *FRAME_COLUMNS]
    assert len(got) == len(ref) > 0
    pd.testing.assert_frame_equal(got, ref[got.columns], check_dtype=False, atol=1e-6)
    np.testing.assert_allclose(pair_features(got), pair_features(ref), atol=1e-6)

    model = _small_model()
    assert model.graph_rounds == 1
    scored = rerank_spark(frame, model).toPandas().sort_values(["src", "dst"], ignore_index=True)
    np.testing.assert_allclose(scored["score"], model.predict(ref), atol=1e-6)
    one = Reranker(model.model_texts[:1], {})  # the pair model alone
    alone = rerank_spark(frame, one).toPandas().sort_values(["src", "dst"], ignore_index=True)
    np.testing.assert_allclose(alone["score"], one.predict(ref), atol=1e-6)
    assert not np.allclose(alone["score"], scored["score"])

    # the optional attributes (issue 30) ride along to both ends, the same in both frames
    n = len(ids)
    attrs = {
        "model": [f"M{i % 9}" if i % 3 else None for i in range(n)],
        "brand": [f"b{i % 4}" if i % 2 else None for i in range(n)],
    }
    ref = candidate_frame(base, final, titles, phashes, k, min_score=0.2, attributes=attrs)
    ref = ref.assign(src=ids[ref["src"]], dst=ids[ref["dst"]]).sort_values(["src", "dst"], ignore_index=True)
    listings = spark.createDataFrame(
        pd.DataFrame({"posting_id": ids, "title": titles, "image_phash": phashes, "price": 1.0, **attrs}),
        "posting_id string, title string, image_phash string, price double, model string, brand string",
    )
    frame = candidate_frame_spark(_pairs_df(spark, ids, base), _pairs_df(spark, ids, final), listings, k, 0.2)
    got = frame.toPandas().sort_values(["src", "dst"], ignore_index=True)
    assert list(got.columns) == ["src", "dst", *FRAME_COLUMNS, *ATTRIBUTE_FRAME_COLUMNS]
    np.testing.assert_allclose(
        pair_features(got, ATTRIBUTE_FEATURE_SET), pair_features(ref, ATTRIBUTE_FEATURE_SET), atol=1e-6
    )
    assert got["model_dst"].tolist() == ref["model_dst"].tolist()


def _labelled(seed, n_products=120):
    s = generate_catalog(n_products, seed=seed, with_bad_rows=False)
    return s.listings.merge(s.truth, on="posting_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = load_config(["conf/local.yaml"], LEX + FAST)
    res = train_reranker(_labelled(21, 300), cfg)
    out = tmp_path_factory.mktemp("rr") / "model"
    overlay = write_reranker_dir(out, res, cfg, source="generated seed 21")
    return cfg, res, out, overlay


@pytest.mark.slow
def test_trained_reranker_beats_the_threshold_rule_on_a_held_out_catalog(trained):
    cfg, res, out, _ = trained
    # out of fold, on the training catalog's parts
    for part in res.parts:
        assert part["reranked_out_of_fold"]["f1"] > part["threshold_rule"]["f1"]
    # on a catalog it never saw (other products): the sample's hard negatives are variants that
    # differ in a size or a code, which the fused cosine cannot tell apart and the titles' numbers can
    held = _labelled(99, 120)
    pc = part_candidates("held", held, cfg, None)
    bits = cfg.phash.max_bits
    mc = cfg.match
    score = pc.frame["score"].to_numpy()
    base = pc.part.scorer.score(*rule_pairs(pc, score, mc.threshold, None, bits, match=mc))
    # the conf's whole rule: without the relative and mutual rules it is threshold + min2 alone;
    # with them it keeps those pairs and more (each listing's clear twins)
    plain = dataclasses.replace(mc, relative=False, mutual_rank=0, min2=True, min2_threshold=0.4)
    pairs = lambda *a, **k: set(zip(*(x.tolist() for x in rule_pairs(pc, score, *a, **k))))  # noqa: E731
    assert pairs(0.0, None, bits, match=plain) == pairs(mc.threshold, 0.4, bits)
    rel = dataclasses.replace(mc, threshold=0.9, min2=False, relative=True, relative_rank=2, relative_margin=0.05)
    assert pairs(0.0, None, bits, match=rel) > pairs(0.9, None, bits)
    best_rule = max(
        pc.part.scorer.score(*rule_pairs(pc, pc.frame["score"].to_numpy(), t, m, bits))[0]
        for t in np.arange(0.4, 0.95, 0.05)
        for m in (None, 0.4)
    )
    model = load_reranker(out)
    rr = pc.part.scorer.score(*rule_pairs(pc, model.predict(pc.frame), res.threshold, res.min2_threshold, bits))
    assert rr[0] > best_rule + 0.03, (rr, base, best_rule)


@pytest.mark.slow
def test_model_directory_round_trip_overlay_and_checks(trained, tmp_path):
    cfg, res, out, overlay = trained
    assert {p.name for p in out.iterdir()} >= {
        "reranker.json",
        "reranker.txt",
        "metrics.json",
        "overlay.yaml",
        "importance.png",
        "health_reference.json",
    }
    from listing_dedup.quality.health import read_reference

    ref = read_reference(out)  # what the job's health check compares a catalog with
    assert ref == res.health_reference and ref.score == "fused" and "out-of-fold" in ref.source
    assert ref.settings["rerank"]["threshold"] == res.threshold and len(ref.top1_quantiles) == 19
    meta = json.loads((out / "reranker.json").read_text())
    assert meta["features"] == list(ATTRIBUTE_FEATURE_SET) and meta["threshold"] == res.threshold
    metrics = json.loads((out / "metrics.json").read_text())
    assert sum(metrics["importance"].values()) == pytest.approx(1.0)
    # the share of matches among the training candidates, for the prior shift (off: jobs/train_reranker.py's default)
    pos, cand = sum(p["positives"] for p in metrics["parts"]), sum(p["candidates"] for p in metrics["parts"])
    assert meta["train_prior"] == pytest.approx(pos / cand, abs=1e-6) and meta["prior_shift"] is False
    model = load_reranker(out)
    assert model.graph_rounds == 1 and meta["graph_rounds"] == 1 and metrics["rounds"][1]["round"] == 1
    frame = pd.concat([_frame(), _frame(score=0.3, title_dst="Gelas kaca 250 ml set 6")], ignore_index=True)
    frame = frame.assign(src=["a", "b"], dst=["b", "a"])
    import lightgbm as lgb

    X = pair_features(frame, ATTRIBUTE_FEATURE_SET)  # a model trained now reads the identifier and attribute features
    p1 = lgb.Booster(model_str=res.model_texts[0]).predict(X)
    G = graph_features(np.array([0, 1]), np.array([1, 0]), p1, 2, meta["graph_floor"])
    p2 = lgb.Booster(model_str=res.model_texts[1]).predict(np.column_stack([X, G]))
    np.testing.assert_allclose(model.predict(frame), p2)

    run_cfg = load_config(["conf/local.yaml", str(out / "overlay.yaml")])
    assert run_cfg.rerank.enabled and run_cfg.rerank.model == str(out.resolve())
    assert run_cfg.edge_match().threshold == res.threshold
    assert yaml.safe_load((out / "overlay.yaml").read_text()) == overlay
    check_fingerprint(model.meta, run_cfg, str(out))  # the overlay reproduces the training pipeline
    with pytest.raises(ConfigError, match="inb_thresholds"):
        check_fingerprint(
            model.meta, load_config(["conf/local.yaml", str(out / "overlay.yaml")], ["inb.thresholds=[]"]), "m"
        )

    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(ConfigError, match="cannot read"):
        load_reranker(bad)
    (bad / "reranker.txt").write_text(res.model_texts[0])
    (bad / "reranker.json").write_text(json.dumps({**meta, "features": meta["features"][:-1]}))
    with pytest.raises(ConfigError, match="feature lists"):
        load_reranker(bad)
    (bad / "reranker.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(ConfigError, match="not a listing-dedup re-ranker"):
        load_reranker(bad)


def test_rerank_config_is_validated():
    with pytest.raises(ConfigError, match="rerank.model"):
        load_config(["conf/local.yaml"], ["rerank.enabled=true", "rerank.model=''"])
    with pytest.raises(ConfigError, match="rerank.min2_threshold"):
        load_config(["conf/local.yaml"], ["rerank.threshold=0.3", "rerank.min2_threshold=0.4"])
    with pytest.raises(ConfigError, match="rerank.fallback"):
        load_config(["conf/local.yaml"], ["rerank.fallback=maybe"])
    with pytest.raises(ConfigError, match="rerank.group_margin"):
        load_config(["conf/local.yaml"], ["rerank.group_margin=2"])
    assert load_config(["conf/local.yaml"], ["rerank.group_margin=0.1"]).rerank.group_margin == 0.1
    with pytest.raises(ConfigError, match="rerank.train.features"):
        load_config(["conf/local.yaml"], ["rerank.train.features=codes"])
    cfg = load_config(["conf/local.yaml"], ["rerank.enabled=false"])
    assert cfg.edge_match() == cfg.match  # off: the threshold rule
    on = load_config(["conf/local.yaml"])  # the shipped re-ranker by default, its probabilities' rule
    assert on.rerank.model == "builtin" and on.edge_match() == on.rerank.match() != on.match
    assert on.without_reranker().edge_match() == on.match and on.without_reranker().rerank.enabled is False


def test_builtin_titles_reranker_is_chosen_by_phash_coverage():
    """Under half the listings with a pHash: the titles-only built-in model with its own rule
    (never the rule fallback for a missing signal); otherwise, or off, the conf unchanged."""
    from listing_dedup.graph.rerank import BUILTIN_TITLES, for_coverage, reranker_for
    from listing_dedup.quality.health import read_reference
    from listing_dedup.quality.run_health import choose_reference

    cfg = load_config(["conf/local.yaml"])
    same, note = for_coverage(cfg, 0.5)
    assert same is cfg and note == ""
    titles, note = for_coverage(cfg, 0.1)
    model = load_reranker(BUILTIN_TITLES)
    meta = model.meta
    assert titles.rerank.model == BUILTIN_TITLES and titles.rerank.enabled
    assert titles.rerank.threshold == meta["threshold"] and titles.rerank.min_score == meta["min_score"]
    assert titles.rerank.min2 == (meta["min2_threshold"] is not None)
    assert "10% of the listings have a pHash" in note and BUILTIN_TITLES in note
    got, why = reranker_for(titles)
    assert got is not None and why == "" and got.features == NUMBER_FEATURE_SET
    ref, _ = choose_reference(titles)
    assert ref == read_reference(BUILTIN_TITLES) and ref.signals.get("phash", 0.0) == 0.0  # trained without pHash
    # the threshold rule or a model directory of one's own: unchanged
    off = load_config(["conf/local.yaml"], ["rerank.enabled=false"])
    assert for_coverage(off, 0.0) == (off, "")
    own = dataclasses.replace(cfg, rerank=dataclasses.replace(cfg.rerank, model="/some/dir"))
    assert for_coverage(own, 0.0) == (own, "")


def test_builtin_reranker_is_shipped_for_the_default_pipeline():
    """The profiles turn on the packaged model with the thresholds its training chose; a run
    on other pipeline settings gets the threshold rule and a reason, never wrong features."""
    from listing_dedup.graph.rerank import builtin_reranker, fingerprint_diffs, group_margin_of
    from listing_dedup.quality.health import read_reference

    model = load_reranker("builtin")
    meta = model.meta
    assert model.graph_rounds == meta["graph_rounds"] >= 1
    for profile in ("conf/local.yaml", "conf/cluster.yaml"):
        cfg = load_config([profile])
        assert cfg.rerank.enabled and cfg.rerank.model == "builtin" and cfg.rerank.fallback == "rule"
        assert cfg.rerank.threshold == meta["threshold"]
        assert cfg.rerank.min2 == (meta["min2_threshold"] is not None)
        assert cfg.rerank.min_score == meta["min_score"]
        assert fingerprint_diffs(meta, cfg) == {}
        got, why = builtin_reranker(cfg)
        assert got is not None and why == ""
        assert group_margin_of(cfg, got) == meta["group_margin"]  # rerank.group_margin: null = the model's
    ref = read_reference("builtin")
    assert ref is not None and ref.signals["phash"] > 0.9  # trained with pHash on (almost) every listing
    # other settings: the rule decides, and the reason names what differs
    for sets, key in ((["inb.thresholds=[]"], "inb_thresholds"), (["embed.text.model=e5-small"], "text_model")):
        got, why = builtin_reranker(load_config(["conf/local.yaml"], sets))
        assert got is None and key in why and "threshold rule" in why
    cfg = load_config(["conf/local.yaml"], ["rerank.group_margin=0.3"])
    assert group_margin_of(cfg, model) == 0.3
    bare = Reranker(model.model_texts, {k: v for k, v in meta.items() if k != "group_margin"})
    assert group_margin_of(load_config(["conf/local.yaml"]), bare) == 0.04  # guard.group_margin


@pytest.mark.slow
def test_job_with_the_reranker_matches_the_one_machine_path(spark, trained, tmp_path):
    """The job's rerank stage gives the pairs that the training path's rules give on the same catalog."""
    from listing_dedup.pipeline import run_dedup
    from listing_dedup.sink.delta import read_table

    _, res, out, _ = trained
    held = _labelled(99, 60)
    path = tmp_path / "listings.parquet"
    held.drop(columns=["label_group"]).to_parquet(path, index=False)
    sets = LEX + [
        "index.exact_below=100000",
        "index.n_shards=1",
        "input.partitions=2",
        "guard.mode=none",
        "output.candidates=true",
        "output.candidates_min_score=-1",
        "rerank.fallback=none",  # the re-ranker's pairs whatever the health check says of this small catalog
    ]
    cfg = load_config(["conf/local.yaml", str(out / "overlay.yaml")], sets)
    s = run_dedup(spark=spark, cfg=cfg, input_path=str(path), run_date="2026-04-01", warehouse=str(tmp_path / "wh"))
    assert s.signal_counts["reranked_pairs"] > 0
    matches = read_table(str(tmp_path / "wh"), "matches", "2026-04-01")
    got = {(a, b) for a, ms in zip(matches["posting_id"], matches["match_ids"], strict=True) for b in ms if a < b}

    df = held.assign(title=held["title"].map(clean_title))
    pc = part_candidates("held", df, cfg, None)
    prob = load_reranker(out).predict(pc.frame)
    a, b = rule_pairs(pc, prob, res.threshold, res.min2_threshold, cfg.phash.max_bits)
    ids = df["posting_id"].to_numpy()
    want = {(min(ids[i], ids[j]), max(ids[i], ids[j])) for i, j in zip(a, b, strict=True)}
    assert got == want
    cand = read_table(str(tmp_path / "wh"), "candidates", "2026-04-01")
    assert sum("rerank" in dict(m) for m in cand["signal_scores"]) == s.signal_counts["reranked_pairs"]


@pytest.mark.slow
def test_train_reranker_cli(tmp_path):
    """jobs/train_reranker.py in a child process (the entry point's smoke test)."""
    labelled = _labelled(5, 90)
    path = tmp_path / "l.parquet"
    labelled.to_parquet(path, index=False)
    out = tmp_path / "m"
    # the feature set the shipped titles-only model reads, named in the conf (the default: "attributes")
    sets = [x for s in [*LEX, *FAST, "rerank.train.features=numbers"] for x in ("--set", s)]
    r = subprocess.run(
        [
            sys.executable,
            "jobs/train_reranker.py",
            "--conf",
            "conf/local.yaml",
            "--input",
            str(path),
            "--out",
            str(out),
            *sets,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "chosen: threshold" in r.stdout and (out / "reranker.txt").is_file()
    assert json.loads((out / "reranker.json").read_text())["features"][-1] == "number_containment"
    assert "number_containment" in (out / "reranker.txt").read_text().split("feature_names=")[1].split("\n")[0]


def test_train_reranker_cli_bad_input_and_conf_exit_2(tmp_path, capsys):
    from listing_dedup.cli import train_reranker as rr_cli

    path = tmp_path / "l.parquet"
    _labelled(5, 30).to_parquet(path, index=False)
    for args, msg in [
        (["--input", str(tmp_path / "missing.parquet")], "cannot read input"),
        (["--input", str(path), "--set", "embed.image.enabled=true", "--set", "fusion.image=0.5"], "fusion.image"),
    ]:
        rc = rr_cli.main(["--conf", "conf/local.yaml", "--out", str(tmp_path / "x"), *args])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and "Traceback" not in err, err[-2000:]


def test_group_margin_is_chosen_out_of_fold_by_hand():
    """Two true pairs (0-1, 2-3) and a wrong 1-2 candidate 0.05 under both ends' best: with the
    margin off (0) or at 0.05 and over, the three edges make one group of 4 (each row's F1
    2*2/(2+4)); a margin under 0.05 keeps 1-2 out of the groups (F1 1). Ties go to the
    smallest margin: 0.01."""
    from listing_dedup.quality.tune import PairScorer, Part
    from listing_dedup.training.rerank_train import MARGINS, PartCandidates, choose_group_margin

    cfg = load_config(["conf/local.yaml"], ["guard.mode=none"])
    part = Part("hand", np.array(["a", "b", "c", "d"]), PairScorer(["A", "A", "B", "B"]), None, None)
    frame = pd.DataFrame({"src": [0, 1, 2], "dst": [1, 2, 3]})
    pc = PartCandidates(part, frame, np.zeros((3, 1)), np.array([1, 0, 1]), np.array(["A", "A", "B"]))
    prob = np.array([0.95, 0.9, 0.95])
    margin, rows = choose_group_margin([pc], [prob], 0.5, None, None, cfg)
    by = {r["group_margin"]: r["clusters_f1"] for r in rows}
    assert set(by) == set(MARGINS)
    for m in MARGINS:
        want = 1.0 if 0 < m < 0.05 else 2 * 2 / (2 + 4)
        assert by[m] == pytest.approx(want), m
    assert margin == 0.01


def test_threshold_selections_by_hand():
    """Two parts. A: a true pair 0-1 at 0.6. B: four singletons with a wrong candidate 0-1 at
    0.9 and another 2-3 at 0.5. Mean F1 prefers a threshold <= 0.6 (A 1.0, B (2/3 * 2 + 1 * 2)
    / 4 = 5/6 with 0-1 kept only: mean 11/12); the worst gain over no match (A: 2/3 alone; B: 1
    alone) is best above 0.9, where nothing is matched (gains 0 and 0)."""
    from listing_dedup.quality.tune import PairScorer, Part
    from listing_dedup.training.rerank_train import PartCandidates, choose_thresholds

    def pc(labels, src, dst, y):
        part = Part("p", np.array([f"x{i}" for i in range(len(labels))]), PairScorer(labels), None, None)
        frame = pd.DataFrame({"src": src, "dst": dst})
        return PartCandidates(part, frame, np.zeros((len(src), 1)), np.array(y), np.array(labels)[src])

    a = pc(["A", "A"], [0], [1], [1])
    b = pc(["B", "C", "D", "E"], [0, 2], [1, 3], [0, 0])
    probs = [np.array([0.6]), np.array([0.9, 0.5])]
    mean = choose_thresholds([a, b], probs, None, "mean").iloc[0]
    assert 0.5 < mean["threshold"] <= 0.6 and mean["f1"] == pytest.approx((1 + 5 / 6) / 2)
    gain = choose_thresholds([a, b], probs, None, "gain").iloc[0]
    assert gain["threshold"] > 0.9 and gain["gain_min"] == pytest.approx(0.0)
    assert gain["f1"] == pytest.approx((2 / 3 + 1) / 2)
    # mean pairwise F1: A's pair found (1) at <= 0.6, B has no true pair (0 whatever is kept);
    # ties broken by the mean F1: (0.5, 0.6]
    pair = choose_thresholds([a, b], probs, None, "pair").iloc[0]
    assert 0.5 < pair["threshold"] <= 0.6 and pair["pair_f1"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        choose_thresholds([a, b], probs, None, "best")


def test_builtin_reranker_loads_from_the_py_files_zip(tmp_path):
    """spark-submit ships the package as a --py-files zip: the built-in model and its health
    reference are read from inside it (importlib.resources), in a child process that imports
    the package from the zip only."""
    import zipfile
    from pathlib import Path

    import listing_dedup

    src = Path(listing_dedup.__file__).parent
    zpath = tmp_path / "listing_dedup_jobs.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in src.rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts:
                z.write(f, Path("listing_dedup") / f.relative_to(src))
    code = (
        f"import sys; sys.path.insert(0, {str(zpath)!r}); import listing_dedup; "
        "assert listing_dedup.__file__.startswith(sys.path[0]), listing_dedup.__file__; "
        "from listing_dedup.graph.rerank import load_reranker; "
        "from listing_dedup.quality.health import read_reference; "
        "m = load_reranker('builtin'); r = read_reference('builtin'); "
        "print(m.graph_rounds, m.meta['threshold'], r.source)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert out.returncode == 0, out.stderr
    meta = load_reranker("builtin").meta
    assert out.stdout.split()[:2] == [str(meta["graph_rounds"]), str(meta["threshold"])]
    assert "re-ranker training parts" in out.stdout


def test_the_jobs_rerank_stage_scores_with_the_optional_attributes(spark):
    """The job's re-ranker stage (pipeline.rerank) hands the kept listings' optional model / brand
    to the candidate frame, so a model trained on them scores the job's candidates as the bench
    does (session 4: the stage selected posting_id, title and image_phash only, and the shipped
    titles-only model read no attribute in the job: its prior estimate on amazon_google 9.96 %
    against the bench's 6.9 %)."""
    import types

    import lightgbm as lgb
    from listing_dedup import pipeline
    from listing_dedup.graph.rerank import SOURCE_RULE, source_constrained
    from listing_dedup.timing import StageTimer
    from pyspark.sql import functions as F

    ids, base, final, titles, phashes = _random_lists()
    k, n = 8, len(ids)
    attrs = {
        "model": [f"M{i % 9}" if i % 3 else None for i in range(n)],
        "brand": [f"b{i % 4}" if i % 2 else None for i in range(n)],
    }
    rng = np.random.default_rng(3)
    X = rng.normal(size=(600, len(ATTRIBUTE_FEATURE_SET)))
    X[:, -1] = rng.choice([0.0, 0.5, 1.0, np.nan], 600)  # model_agree decides
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 5}
    text = lgb.train(params, lgb.Dataset(X, (X[:, -1] == 1.0).astype(float)), 20).model_to_string()
    model = Reranker((text,), {"features": list(ATTRIBUTE_FEATURE_SET)})
    ref = candidate_frame(base, final, titles, phashes, k, min_score=0.2, attributes=attrs)
    ref = ref.assign(src=ids[ref["src"]], dst=ids[ref["dst"]])
    want = pd.Series(model.predict(ref), index=pd.MultiIndex.from_arrays([ref["src"], ref["dst"]]))
    kept = spark.createDataFrame(
        pd.DataFrame({"posting_id": ids, "title": titles, "image_phash": phashes, **attrs}),
        "posting_id string, title string, image_phash string, model string, brand string",
    )
    cfg = load_config(["conf/local.yaml"], ["index.k=8", "rerank.min_score=0.2"])
    run = types.SimpleNamespace(cfg=cfg, timer=StageTimer(), summary=types.SimpleNamespace(signal_counts={}))
    rounds = types.SimpleNamespace(first_nbrs=_pairs_df(spark, ids, base), nbrs=_pairs_df(spark, ids, final))
    scored = pipeline.rerank(run, types.SimpleNamespace(reranker=model), types.SimpleNamespace(kept=kept), rounds)
    got = scored.toPandas().set_index(["src", "dst"])["score"]
    assert len(got) == len(want) > 0
    np.testing.assert_allclose(got.reindex(want.index).to_numpy(), want.to_numpy(), atol=1e-6)
    without = model.predict(candidate_frame(base, final, titles, phashes, k, min_score=0.2))
    assert not np.allclose(without, want.to_numpy())  # the attributes move these probabilities

    # with the optional source too: the one-to-one rule's zeroes, as source_constrained on the numpy frame
    attrs["source"] = ["A" if i % 2 else "B" for i in range(n)]
    ref = candidate_frame(base, final, titles, phashes, k, min_score=0.2, attributes=attrs)
    p, applied = source_constrained(ref, model.predict(ref))
    assert applied and 0 < int((p == 0).sum()) < len(p)
    want = pd.Series(p, index=pd.MultiIndex.from_arrays([ids[ref["src"]], ids[ref["dst"]]]))
    kept = kept.withColumn("source", F.when(F.substring("posting_id", -1, 1).cast("int") % 2 == 1, "A").otherwise("B"))
    scored = pipeline.rerank(run, types.SimpleNamespace(reranker=model), types.SimpleNamespace(kept=kept), rounds)
    assert SOURCE_RULE in scored.columns
    got = scored.toPandas().set_index(["src", "dst"])["score"]
    np.testing.assert_allclose(got.reindex(want.index).to_numpy(), want.to_numpy(), atol=1e-6)
