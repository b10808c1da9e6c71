"""Prior shift of the titles-only re-ranker (issue 30): the share of matches among a catalog's
candidates, re-estimated without labels (Saerens et al. 2002), moves the probability thresholds.
Pure numpy: no Spark, no model training."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from listing_dedup.config import RerankConf
from listing_dedup.graph.rerank import (
    BUILTIN,
    BUILTIN_TITLES,
    Reranker,
    estimate_prior,
    histogram_of,
    load_reranker,
    prior_shifted,
    probability_histogram_spark,
    shifted_threshold,
)
from listing_dedup.training.rerank_train import sample_weights, train_prior


def _calibrated(prior_catalog: float, prior_train: float, n: int, seed: int = 0):
    """Candidates of a catalog whose share of matches is ``prior_catalog``, scored by a model
    calibrated on training rows with ``prior_train``: a match's score ~ N(1, 1), a non-match's
    ~ N(-1, 1), and the model's probability is the posterior under the training prior."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < prior_catalog
    x = np.where(y, rng.normal(1.0, 1.0, n), rng.normal(-1.0, 1.0, n))
    lr = np.exp(2.0 * x)  # N(1,1) / N(-1,1) density ratio
    odds = lr * prior_train / (1.0 - prior_train)
    return odds / (1.0 + odds), y


@pytest.mark.parametrize("prior_catalog", [0.01, 0.1, 0.4])
def test_estimate_prior_recovers_the_catalogs_share_of_matches(prior_catalog):
    p, y = _calibrated(prior_catalog, 0.1, 200_000)
    est = estimate_prior(p, None, 0.1)
    assert est == pytest.approx(y.mean(), abs=0.01)
    # the histogram the job collects gives the same estimate
    assert estimate_prior(*histogram_of(p), 0.1) == pytest.approx(est, abs=0.005)


def test_shifted_threshold_by_hand():
    # the same prior: the threshold stays
    assert shifted_threshold(0.5, 0.1, 0.1) == pytest.approx(0.5)
    # ten times fewer matches: r = 0.01/0.1 = 0.1, q = 0.99/0.9 = 1.1;
    # 0.5 * 1.1 / (0.1 * 0.5 + 0.5 * 1.1) = 0.55 / 0.6
    assert shifted_threshold(0.5, 0.01, 0.1) == pytest.approx(0.55 / 0.6)
    # more matches: r = 0.3/0.1 = 3, q = 0.7/0.9; 0.5 * (7/9) / (3 * 0.5 + 0.5 * 7/9) = (7/18) / (1.5 + 7/18)
    assert shifted_threshold(0.5, 0.3, 0.1) == pytest.approx((7 / 18) / (1.5 + 7 / 18))
    # the posterior at the shifted threshold is the threshold asked for
    t = shifted_threshold(0.35, 0.02, 0.09)
    r, q = 0.02 / 0.09, 0.98 / 0.91
    assert r * t / (r * t + q * (1 - t)) == pytest.approx(0.35)


def test_train_prior_of_the_parts():
    parts = [{"candidates": 100, "positives": 30}, {"candidates": 300, "positives": 10}]
    assert train_prior(parts) == pytest.approx(40 / 400)
    assert train_prior([]) is None


def test_train_prior_and_sample_weights_of_weighted_parts():
    # a generated part fitted at weight 0.3: its candidates count 0.3 each in the model's base rate
    parts = [{"candidates": 100, "positives": 30}, {"candidates": 300, "positives": 10, "weight": 0.3}]
    assert train_prior(parts) == pytest.approx((30 + 3) / (100 + 90), abs=1e-6)  # rounded to 6 places
    pc = [SimpleNamespace(y=np.zeros(2), weight=1.0), SimpleNamespace(y=np.zeros(3), weight=0.3)]
    assert sample_weights(pc).tolist() == [1.0, 1.0, 0.3, 0.3, 0.3]
    assert sample_weights([SimpleNamespace(y=np.zeros(2), weight=1.0)]) is None  # unweighted: as before


def _model(**meta) -> Reranker:
    return Reranker(("",), {"threshold": 0.35, **meta})


def test_prior_shifted_moves_both_thresholds_only_when_the_model_asks():
    conf = RerankConf(enabled=True, model="builtin-titles", threshold=0.35, min2=True, min2_threshold=0.3)
    p, _ = _calibrated(0.005, 0.09, 100_000)  # a catalog of singletons
    hist = histogram_of(p)
    same, note = prior_shifted(conf, _model(train_prior=0.09), *hist)  # no prior_shift: unchanged
    assert same == conf and note == ""
    moved, note = prior_shifted(conf, _model(train_prior=0.09, prior_shift=True), *hist)
    prior = estimate_prior(*hist, 0.09)
    assert moved.threshold == pytest.approx(shifted_threshold(0.35, prior, 0.09), abs=1e-6)
    assert moved.min2_threshold == pytest.approx(shifted_threshold(0.3, prior, 0.09), abs=1e-6)
    assert moved.threshold > 0.35 and moved.min2_threshold > 0.3 and "prior shift" in note
    assert dataclasses.replace(moved, threshold=0.35, min2_threshold=0.3) == conf  # nothing else moved
    # an empty catalog: nothing to estimate from
    assert prior_shifted(conf, _model(train_prior=0.09, prior_shift=True), *histogram_of(np.zeros(0)))[0] == conf


def test_builtin_models_prior_shift_only_for_titles():
    """The pHash model's edge rule is untouched (fold 1 through the job stays as measured);
    the titles-only one shifts from the share its training candidates had."""
    assert not load_reranker(BUILTIN).meta.get("prior_shift")
    titles = load_reranker(BUILTIN_TITLES).meta
    assert titles["prior_shift"] is True and 0.0 < titles["train_prior"] < 1.0


def test_probability_histogram_spark_equals_numpy(spark):
    p = np.array([0.0, 0.0004, 0.3505, 0.3509, 0.9999, 1.0], dtype=np.float32)
    scored = spark.createDataFrame(
        [(str(i), str(i + 1), float(x)) for i, x in enumerate(p)], "src string, dst string, score float"
    )
    centres, counts = probability_histogram_spark(scored)
    want_centres, want_counts = histogram_of(p)
    assert np.allclose(centres, want_centres) and np.array_equal(counts, want_counts)
    # by hand: bins 0 (0.0 and 0.0004), 350 (twice) and 999 (0.9999 and 1.0: the last bin holds 1.0)
    assert {int(i): int(c) for i, c in enumerate(counts) if c} == {0: 2, 350: 2, 999: 2}
