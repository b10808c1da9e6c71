"""The unsupervised health check (issue 15): hand-made runs with known figures and warnings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from listing_dedup.quality.health import (
    QUANTILES,
    HealthInputs,
    HealthReference,
    Limits,
    decide,
    health_check,
    inputs_from_frames,
    ks_to_reference,
    read_reference,
    reference_from,
    size_histogram,
    write_reference,
)

IDS = [f"p{i}" for i in range(10)]


def _edges(pairs):
    return pd.DataFrame(pairs, columns=["src", "dst"])


def _groups(assign: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"posting_id": list(assign), "group_id": list(assign.values())})


def _ref(median: float = 0.8, mpl: float = 1.0, signals=None) -> HealthReference:
    # top-1 quantiles of a uniform distribution on [median - 0.1, median + 0.1]
    q = tuple(median - 0.1 + 0.2 * p for p in QUANTILES)
    return HealthReference(q, mpl, 0.5, signals if signals is not None else {"text": 1.0, "phash": 1.0})


def test_figures_of_a_small_run():
    # p0-p1-p2 one group (edges p0-p1, p1-p2 in both directions), p3-p4 a pair, p5..p9 alone
    e = _edges([("p0", "p1"), ("p1", "p0"), ("p1", "p2"), ("p2", "p1"), ("p3", "p4")])
    g = _groups({"p0": "p0", "p1": "p0", "p2": "p0", "p3": "p3", "p4": "p3"})
    titles = {p: f"title {p}" for p in IDS}
    h = health_check(IDS, e, g, {p: 0.5 for p in IDS}, {"text": 1.0}, titles=titles)
    assert h.n_listings == 10
    assert h.n_edges == 3  # undirected
    assert h.share_matched == pytest.approx(0.5)
    assert h.matches_per_listing == pytest.approx(6 / 10)  # degrees 1, 2, 1, 1, 1
    assert h.max_matches == 2
    assert h.size_histogram == {"1": 5, "2": 2, "3-5": 3, "6-10": 0, "11-50": 0, ">50": 0}
    assert h.largest_groups[0] == {"group_id": "p0", "size": 3, "titles": ["title p0", "title p1", "title p2"]}
    assert h.largest_groups[1]["size"] == 2
    assert h.guard_cut_share == 0.0
    assert h.ok and h.warnings == []
    assert h.top1_ks is None  # no reference given


def test_size_histogram_bins():
    assert size_histogram(np.array([1, 2, 3, 5, 6, 10, 11, 50, 51, 300])) == {
        "1": 1,
        "2": 1,
        "3-5": 2,
        "6-10": 2,
        "11-50": 2,
        ">50": 2,
    }


def test_missing_expected_signal_warns():
    h = health_check(IDS, _edges([]), _groups({}), {}, {"text": 1.0, "phash": 0.0}, reference=_ref())
    assert [w.code for w in h.warnings] == ["signal_missing"]
    assert "phash" in h.warnings[0].message
    # the same catalog judged against settings tuned on titles alone: no warning
    h = health_check(IDS, _edges([]), _groups({}), {}, {"text": 1.0, "phash": 0.0}, expected_signals=["text"])
    assert h.ok


def test_ks_to_reference_by_hand():
    ref = tuple(0.7 + 0.2 * p for p in QUANTILES)  # uniform on [0.7, 0.9]
    # the same distribution: every reference quantile sits at its level (up to the sample's steps)
    same = np.linspace(0.7, 0.9, 1001)
    assert ks_to_reference(same, ref) == pytest.approx(0.0, abs=0.002)
    # every score above the reference's top: CDF 0 at each quantile, largest gap at level 0.95
    assert ks_to_reference(np.full(50, 0.99), ref) == pytest.approx(0.95)
    # every score below the bottom: CDF 1 everywhere, largest gap at level 0.05
    assert ks_to_reference(np.full(50, 0.1), ref) == pytest.approx(0.95)


def test_top1_shift_warns_only_when_far():
    rng = np.random.default_rng(0)
    ids = [f"q{i}" for i in range(400)]
    near = {p: v for p, v in zip(ids, rng.uniform(0.71, 0.89, 400), strict=True)}
    h = health_check(ids, _edges([]), _groups({}), near, {"text": 1.0, "phash": 1.0}, reference=_ref(0.8))
    assert h.top1_ks is not None and h.top1_ks < 0.25 and h.ok
    far = {p: v for p, v in zip(ids, rng.uniform(0.9, 1.0, 400), strict=True)}
    h = health_check(ids, _edges([]), _groups({}), far, {"text": 1.0, "phash": 1.0}, reference=_ref(0.8))
    assert [w.code for w in h.warnings] == ["top1_shift"]


def test_matches_exploding_warns():
    # one listing matched to all 9 others and those 9 to each other: 9 matches per listing
    pairs = [(a, b) for i, a in enumerate(IDS) for b in IDS[i + 1 :]]
    g = _groups({p: "p0" for p in IDS})
    h = health_check(IDS, _edges(pairs), g, {}, {"text": 1.0}, reference=_ref(mpl=1.2, signals={"text": 1.0}))
    assert h.matches_per_listing == pytest.approx(9.0)
    assert [w.code for w in h.warnings] == ["matches_exploding"]  # 9 > 3 x 1.2
    # without a reference the absolute limit (10) decides: 9 passes, 8.5 with a limit of 8 does not
    assert health_check(IDS, _edges(pairs), g, {}, {"text": 1.0}).ok
    h = health_check(IDS, _edges(pairs), g, {}, {"text": 1.0}, limits=Limits(max_matches_per_listing=8))
    assert [w.code for w in h.warnings] == ["matches_exploding"]


def test_guard_cut_warns_when_groups_drop_most_edges():
    # a chain p0-p1-...-p9 (9 edges) cut by the guard into singletons: every edge is cut
    pairs = [(IDS[i], IDS[i + 1]) for i in range(9)]
    h = health_check(IDS, _edges(pairs), _groups({p: p for p in IDS}), {}, {"text": 1.0})
    assert h.guard_cut_share == pytest.approx(1.0)
    assert [w.code for w in h.warnings] == ["guard_cut"]
    # cut into p0..p4 / p5..p9: one edge of nine is cut
    g = _groups({p: ("p0" if i < 5 else "p5") for i, p in enumerate(IDS)})
    h = health_check(IDS, _edges(pairs), g, {}, {"text": 1.0})
    assert h.guard_cut_share == pytest.approx(1 / 9) and h.ok


def test_reference_round_trip_and_from_a_run():
    e = _edges([("p0", "p1"), ("p2", "p3")])
    top1 = {p: 0.5 + 0.05 * i for i, p in enumerate(IDS)}
    ref = reference_from(IDS, e, top1, {"text": 1.0, "phash": 0.9, "image": 0.0}, source="unit")
    assert ref.matches_per_listing == pytest.approx(0.4)
    assert ref.share_matched == pytest.approx(0.4)
    assert set(ref.signals) == {"text", "phash"}  # a signal on no listing is not expected
    assert ref.top1_quantiles[0] == pytest.approx(np.quantile(list(top1.values()), 0.05))
    again = HealthReference.from_dict(ref.to_dict())
    assert again == ref
    # the run itself against its own reference: no warning
    assert health_check(
        IDS,
        e,
        _groups({"p0": "p0", "p1": "p0", "p2": "p2", "p3": "p2"}),
        top1,
        {"text": 1.0, "phash": 0.9},
        reference=ref,
    ).ok


# --------------------------------------------------------------------------------------
# the decision on aggregates (what the job computes in Spark)


def _inputs(**over) -> HealthInputs:
    base = dict(
        n_listings=100,
        n_matched=40,
        n_edges=30,
        max_matches=4,
        matches_p99=3.0,
        size_histogram={"1": 60, "2": 20, "3-5": 20, "6-10": 0, "11-50": 0, ">50": 0},
        largest_groups=[{"group_id": "g1", "size": 5, "titles": ["a", "b"]}],
        n_top1=90,
        top1_quantiles=tuple(0.5 + 0.01 * i for i in range(len(QUANTILES))),
        top1_cdf=tuple(QUANTILES),  # the catalog's CDF sits at each reference level: KS 0
        n_guard_cut=0,
        signals={"text": 1.0, "phash": 1.0},
    )
    base.update(over)
    return HealthInputs(**base)


def test_decide_on_aggregates_by_hand():
    ref = _ref(mpl=0.5)
    h = decide(_inputs(), reference=ref)
    assert h.ok and h.top1_ks == pytest.approx(0.0) and h.notes == []
    assert h.share_matched == pytest.approx(0.4) and h.matches_per_listing == pytest.approx(0.6)  # 2 x 30 / 100
    assert h.reference == ref.source and h.size_histogram["1"] == 60
    # every CDF value 0.3 above its level (capped at 1): KS 0.3; 20 of the 30 edges cut; pHash on 1 %
    shifted = tuple(min(1.0, q + 0.3) for q in QUANTILES)
    h = decide(_inputs(top1_cdf=shifted, n_guard_cut=20, signals={"text": 1.0, "phash": 0.01}), reference=ref)
    assert h.top1_ks == pytest.approx(0.3)
    assert h.guard_cut_share == pytest.approx(20 / 30)
    assert h.warning_codes == ["signal_missing", "top1_shift", "guard_cut"]
    # a slack: each level only has to lie between the CDF below and above the reference quantile
    low = tuple(max(0.0, q - 0.2) for q in QUANTILES)
    high = tuple(min(1.0, q + 0.1) for q in QUANTILES)
    assert decide(_inputs(top1_cdf=low, top1_cdf_high=high), reference=ref).top1_ks == pytest.approx(0.0)
    above = tuple(min(1.0, q + 0.3) for q in QUANTILES)  # even the CDF below sits 0.3 over the level
    h = decide(_inputs(top1_cdf=above, top1_cdf_high=tuple(1.0 for _ in QUANTILES)), reference=ref)
    assert h.top1_ks == pytest.approx(0.3) and h.warning_codes == ["top1_shift"]
    # 2 x 80 / 100 = 1.6 matches a listing: over 3 x the reference's 0.5, under the absolute 10
    assert decide(_inputs(n_edges=80), reference=ref).warning_codes == ["matches_exploding"]
    assert decide(_inputs(n_edges=70), reference=ref).ok  # 1.4 <= 1.5


def test_without_a_reference_the_absolute_rules_decide():
    h = decide(_inputs(n_edges=80, top1_cdf=None), reference_note="settings differ")
    assert h.ok and h.top1_ks is None and h.reference == ""
    assert len(h.notes) == 1 and "no health reference" in h.notes[0] and "settings differ" in h.notes[0]
    # over 10 matches a listing warns with or without a reference
    assert decide(_inputs(n_edges=501)).warning_codes == ["matches_exploding"]
    assert decide(_inputs(n_edges=500)).ok
    # signals are expected only when someone says so
    assert decide(_inputs(signals={"text": 1.0, "phash": 0.0})).ok
    assert decide(_inputs(signals={"text": 0.0}), expected_signals=["text"]).warning_codes == ["signal_missing"]
    text = "\n".join(decide(_inputs(n_edges=501)).as_lines())
    assert "reference  none (absolute rules)" in text and "WARNING matches_exploding: 10.02 matches" in text


def test_frame_aggregates_by_hand():
    # p0-p1, p1-p2 (a chain the guard cut between p1 and p2), p3-p4; p5..p9 alone
    e = _edges([("p0", "p1"), ("p1", "p0"), ("p1", "p2"), ("p3", "p4")])
    g = _groups({"p0": "p0", "p1": "p0", "p2": "p2", "p3": "p3", "p4": "p3"})
    top1 = {"p0": 0.9, "p1": 0.9, "p2": 0.6, "p3": 0.8, "p4": 0.8, "p5": 0.2, "nope": 0.99}
    x = inputs_from_frames(IDS, e, g, top1, {"text": 1.0}, ref_quantiles=[0.5, 0.85])
    assert (x.n_listings, x.n_matched, x.n_edges, x.max_matches, x.n_guard_cut) == (10, 5, 3, 2, 1)
    assert x.n_top1 == 6  # "nope" is not a listing of the run
    assert x.top1_cdf == pytest.approx((1 / 6, 4 / 6))  # 0.2 <= 0.5; 0.2, 0.6, 0.8, 0.8 <= 0.85
    assert x.size_histogram["1"] == 6 and x.size_histogram["2"] == 4
    h = decide(x)
    assert h.guard_cut_share == pytest.approx(1 / 3) and h.ok


def test_reference_file_round_trip(tmp_path):
    assert read_reference(tmp_path) is None
    ref = _ref()
    path = write_reference(tmp_path, ref)
    assert path.name == "health_reference.json" and read_reference(tmp_path) == ref


def test_shipped_reference_of_the_defaults_applies_to_the_defaults_only():
    from listing_dedup.config import load_config
    from listing_dedup.quality.health_defaults import reference
    from listing_dedup.quality.run_health import choose_reference, limits_of

    ref = reference()
    assert "folds 2+3+4" in ref.source and ref.score == "fused"
    assert set(ref.signals) == {"text", "lexical", "phash"}
    q = np.asarray(ref.top1_quantiles)
    assert len(q) == len(QUANTILES) and (np.diff(q) >= 0).all() and 0 < q[0] and q[-1] <= 1.0 + 1e-6
    assert 1.0 < ref.matches_per_listing < 10.0 and 0.5 < ref.share_matched <= 1.0  # every Shopee listing has a twin
    for profile in ("conf/local.yaml", "conf/cluster.yaml"):  # same signals and edge rules
        cfg = load_config([profile])
        # the profiles run the built-in re-ranker, judged against its own reference; their
        # threshold rule (the fallback, or rerank.enabled=false) against the shipped defaults'
        got, note = choose_reference(cfg.without_reranker())
        assert got == ref and note == ""
        got, note = choose_reference(cfg)
        assert got is not None and got != ref and "re-ranker training parts" in got.source and note == ""
    off = ["rerank.enabled=false", "match.threshold=0.8", "phash.enabled=false"]
    got, note = choose_reference(load_config(["conf/local.yaml"], off))
    assert got is None and "match.threshold" in note and "phash.enabled" in note
    cfg = load_config(["conf/local.yaml"], ["health.max_top1_ks=0.4"])
    assert limits_of(cfg.health) == Limits(max_top1_ks=0.4)


def test_codes_differ_warns_when_matched_pairs_disagree_in_codes():
    # 80 listings of 100 matched, 2 x 150 / 100 = 3 matches a listing; 60 of 100 compared pairs
    # whose titles both carry codes share none (over half): one product range merged across models
    x = _inputs(n_matched=80, n_edges=150, n_code_pairs=100, n_code_conflicts=60)
    h = decide(x)
    assert h.warning_codes == ["codes_differ"] and h.code_conflict_share == pytest.approx(0.6)
    assert "60 of 100 compared" in h.warnings[0].message
    assert decide(_inputs(n_matched=80, n_edges=150, n_code_pairs=100, n_code_conflicts=50)).ok  # half: not over
    assert decide(_inputs(n_matched=50, n_edges=150, n_code_pairs=100, n_code_conflicts=60)).ok  # half matched
    assert decide(_inputs(n_matched=80, n_edges=90, n_code_pairs=100, n_code_conflicts=60)).ok  # 1.8 a listing
    assert decide(_inputs(n_matched=80, n_edges=150, n_code_pairs=49, n_code_conflicts=40)).ok  # too few compared
    assert decide(_inputs()).code_conflict_share is None  # nothing compared
    assert decide(x, limits=Limits(max_code_conflicts=0.7)).ok


def test_frame_aggregates_count_code_conflicts_by_hand():
    titles = {
        "p0": "Brand 40in LED TV XX40A550",
        "p1": "Brand 52in LED TV XX52A650",  # p0-p1: codes on both, none shared
        "p2": "brand tv xx40a550 40 inch",  # p0-p2: the code shared
        "p3": "Brand LED TV",  # p0-p3: no code on p3, not compared
    }
    e = _edges([("p0", "p1"), ("p1", "p0"), ("p0", "p2"), ("p0", "p3")])
    x = inputs_from_frames(IDS, e, _groups({}), {}, {"text": 1.0}, titles=titles)
    assert (x.n_code_pairs, x.n_code_conflicts) == (2, 1)
    assert (inputs_from_frames(IDS, e, _groups({}), {}, {"text": 1.0}).n_code_pairs) == 0  # no titles given
