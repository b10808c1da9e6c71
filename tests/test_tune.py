import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from listing_dedup.config import load_config
from listing_dedup.graph.edges import select_edges_pandas
from listing_dedup.quality.metrics import row_scores
from listing_dedup.quality.sample import generate_catalog
from listing_dedup.quality.tune import Grid, PairScorer, fast_edges, rank_settings, split_parts, tune
from listing_dedup.quality.tuning import knn


def _random_case(seed=0, n=60, d=8):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.integers(0, 15, size=n)
    return x, labels


@pytest.mark.parametrize("t,m", [(0.3, None), (0.5, 0.2), (0.9, 0.0), (0.6, 0.6)])
def test_fast_edges_equal_the_job_rules(t, m):
    x, _ = _random_case()
    ids = np.array([f"p{i:03d}" for i in range(len(x))], dtype=object)
    src, dst, sc = knn(x, 5)
    a, b = fast_edges(src, dst, sc, t, m)
    nbrs = pd.DataFrame({"src": ids[src], "dst": ids[dst], "score": sc})
    ref = select_edges_pandas(nbrs, t, m is not None, m if m is not None else t)
    ref_pairs = {(s, d) for s, d in zip(ref["src"], ref["dst"], strict=True) if s < d}
    assert {(ids[i], ids[j]) for i, j in zip(a, b, strict=True)} == ref_pairs


def test_pair_scorer_equals_row_scores():
    x, labels = _random_case(1)
    ids = [f"p{i:03d}" for i in range(len(x))]
    src, dst, sc = knn(x, 5)
    a, b = fast_edges(src, dst, sc, 0.2, None)
    f1, p, r = PairScorer(labels).score(a, b)
    pairs = pd.DataFrame(
        {"posting_id": [ids[i] for i in a] + [ids[j] for j in b], "match_id": [ids[j] for j in b] + [ids[i] for i in a]}
    )
    ref = row_scores(pairs, ids, pd.DataFrame({"posting_id": ids, "label_group": labels.astype(str)}))
    assert (f1, p, r) == pytest.approx((ref.f1, ref.precision, ref.recall), abs=1e-12)


def test_pair_scorer_row_f1_by_hand():
    # groups {0, 1, 2}, {3}; predicted pairs 0-1 (right) and 2-3 (wrong); each row counts itself
    # row 0: pred {0,1}, true {0,1,2}: 2*2/(3+2) = 0.8; row 1 the same; row 2: pred {2,3},
    # inter {2}: 2*1/(3+2) = 0.4; row 3: pred {3,2}, true {3}: 2*1/(1+2) = 2/3
    scorer = PairScorer(["g", "g", "g", "h"])
    f1 = scorer.row_f1(np.array([0, 2]), np.array([1, 3]))
    assert f1 == pytest.approx([0.8, 0.8, 0.4, 2 / 3])
    assert scorer.score(np.array([0, 2]), np.array([1, 3]))[0] == pytest.approx(np.mean([0.8, 0.8, 0.4, 2 / 3]))


def test_split_parts_are_group_disjoint_and_cover_everything():
    df = pd.DataFrame({"posting_id": [str(i) for i in range(40)], "label_group": [i // 3 for i in range(40)]})
    parts = split_parts(df, 3)
    assert len(parts) == 3 and sum(len(p) for p in parts) == 40
    groups = [set(p["label_group"]) for p in parts]
    assert not (groups[0] & groups[1]) and not (groups[1] & groups[2]) and not (groups[0] & groups[2])
    with_folds = df.assign(fold=[i % 2 for i in range(40)])
    assert [len(p) for p in split_parts(with_folds, 3)] == [20, 20]


def _labelled_sample():
    s = generate_catalog(150, seed=11)
    df = s.listings.dropna(subset=["posting_id"]).drop_duplicates("posting_id")
    df = df.merge(s.truth, on="posting_id")
    return df[df["title"].str.strip().str.len() > 0].reset_index(drop=True)


def test_tune_finds_a_setting_better_than_the_worst_and_writes_a_loadable_overlay(tmp_path):
    df = _labelled_sample()
    cfg = load_config(["conf/local.yaml"], ["embed.text.enabled=false"])
    grid = Grid(
        text_weights=(0.0,), inb=(None, 0.6), thresholds=(0.5, 0.7, 0.9), min2=(None, 0.5), phash_bits=(None, 4)
    )
    ranked, results, abl, overlay = tune(df, cfg, grid, n_parts=2)
    assert set(results["part"]) == {"0", "1"}
    assert len(ranked) == len(results) // 2  # every setting scored on both parts
    best = ranked.iloc[0]
    assert best["f1"] == pytest.approx(results.groupby(list(ranked.columns[:5]), dropna=False)["f1"].mean().max())
    assert best["f1"] > ranked["f1"].min()
    # the sample's listings mostly reuse their product's photo: at a strict text threshold the
    # pHash union adds true pairs the titles miss
    strict = results[(results["threshold"] == 0.9) & results["inb"].isna() & results["min2"].isna()]
    with_ph = strict[strict["phash_bits"] == 4]["recall"].mean()
    without = strict[strict["phash_bits"].isna()]["recall"].mean()
    assert with_ph > without
    assert set(abl["uses_phash"]) == {True, False}
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(overlay))
    cfg2 = load_config(["conf/local.yaml", str(path)])
    assert cfg2.match.threshold == best["threshold"] and cfg2.fusion.lexical == 1.0
    assert cfg2.inb.thresholds == (() if best["inb"] is None else (best["inb"],))
    assert cfg2.phash.enabled == (best["phash_bits"] is not None)


def test_tune_sweeps_the_confs_relative_and_mutual_rules(tmp_path):
    """The sweep scores the rule the job will run: the conf's relative and mutual rules with the
    grid's threshold and min2, and the overlay records them."""
    df = _labelled_sample()
    grid = Grid(text_weights=(0.0,), inb=(None,), thresholds=(0.95,), min2=(None,), phash_bits=(None,))
    plain = load_config(
        ["conf/local.yaml"], ["embed.text.enabled=false", "match.relative=false", "match.mutual_rank=0"]
    )
    rules = load_config(["conf/local.yaml"], ["embed.text.enabled=false", "match.relative=true", "match.mutual_rank=2"])
    _, r_plain, _, o_plain = tune(df, plain, grid, n_parts=2)
    _, r_rules, _, o_rules = tune(df, rules, grid, n_parts=2)
    # at threshold 0.95 the plain rule keeps only near-identical titles; the relative and mutual
    # rules add each listing's clear twins: more recall on both parts
    assert (r_rules["recall"].to_numpy() > r_plain["recall"].to_numpy()).all()
    assert o_plain["match"]["relative"] is False and o_plain["match"]["mutual_rank"] == 0
    assert o_rules["match"]["relative"] is True and o_rules["match"]["mutual_rank"] == 2
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(o_rules))
    # stacked on a profile whose rules differ, the overlay still gives the rule that was scored
    shop = tmp_path / "shop.yaml"
    shop.write_text("match:\n  relative: false\n  mutual_rank: 0\n")
    cfg2 = load_config(["conf/local.yaml", str(shop), str(path)])
    assert (cfg2.match.threshold, cfg2.match.relative, cfg2.match.mutual_rank) == (0.95, True, 2)


def test_rank_settings_orders_by_mean_f1():
    r = pd.DataFrame(
        {
            "part": ["0", "1", "0", "1"],
            "text_weight": [0.3] * 4,
            "inb": [None] * 4,
            "threshold": [0.5, 0.5, 0.7, 0.7],
            "min2": [None] * 4,
            "phash_bits": [None] * 4,
            "f1": [0.9, 0.5, 0.7, 0.71],
            "precision": [1.0] * 4,
            "recall": [1.0] * 4,
        }
    )
    ranked = rank_settings(r)
    assert ranked["threshold"].tolist() == [0.7, 0.5]
    assert ranked["f1"].tolist() == pytest.approx([0.705, 0.7])
    assert ranked["f1_min"].tolist() == pytest.approx([0.7, 0.5])


@pytest.mark.slow
def test_tune_cli(tmp_path):
    """jobs/tune.py in a child process (the entry point's smoke test), lexical signal only."""
    df = _labelled_sample()
    inp = tmp_path / "l.parquet"
    df.drop(columns=["label_group"]).to_parquet(inp, index=False)
    truth = tmp_path / "t.csv"
    df[["posting_id", "label_group"]].to_csv(truth, index=False)
    out = tmp_path / "tuned.yaml"
    r = subprocess.run(
        [
            sys.executable,
            "jobs/tune.py",
            "--conf",
            "conf/local.yaml",
            "--input",
            str(inp),
            "--truth",
            str(truth),
            "--out",
            str(out),
            "--parts",
            "2",
            "--set",
            "embed.text.enabled=false",
            "--log-level",
            "WARNING",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "component ablation" in r.stdout and out.exists()
    load_config(["conf/local.yaml", str(out)])
    # the health reference of the chosen setting, named by the overlay and used by the job
    import json

    from listing_dedup.quality.health import QUANTILES
    from listing_dedup.quality.run_health import choose_reference

    ref_path = tmp_path / "tuned.health.json"
    assert yaml.safe_load(out.read_text())["health"] == {"reference": str(ref_path)}
    raw = json.loads(ref_path.read_text())
    q = raw["top1_quantiles"]
    assert len(q) == len(QUANTILES) and q == sorted(q) and 0.0 <= q[0] and q[-1] <= 1.0 + 1e-6
    want = {"lexical": 1.0}
    if yaml.safe_load(out.read_text())["phash"]["enabled"]:  # the sample's listings with a pHash
        want["phash"] = pytest.approx(df["image_phash"].notna().mean())
    assert raw["signals"] == want and 0 < raw["share_matched"] <= 1 and raw["matches_per_listing"] > 0
    cfg = load_config(["conf/local.yaml", str(out)], ["embed.text.enabled=false"])
    ref, note = choose_reference(cfg)
    assert ref is not None and note == "" and list(ref.top1_quantiles) == q
    other = load_config(["conf/local.yaml", str(out)], ["embed.text.enabled=false", "match.threshold=0.99"])
    ref, note = choose_reference(other)
    assert ref is None and "recorded under other settings" in note and "match.threshold" in note


def test_tune_cli_missing_input_exit_2(tmp_path, capsys):
    from listing_dedup.cli import tune as tune_cli

    rc = tune_cli.main(
        ["--conf", "conf/local.yaml", "--input", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "t.yaml")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "Traceback" not in err
