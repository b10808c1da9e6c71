"""Where a pHash-free catalog loses against the oracle TF-IDF (issue 30): the candidates' ceiling,
the titles-only model's every threshold, the defaults' decision and the expected-F1 threshold.

    python bench/robust_ceiling.py --catalog wdc_products \
        --titles-model data/models/titles_attr2/loo_wdc_products

One catalog of bench/robust.py's report suite (pHash removed where it has one), scored as
bench/robust.py's ``run_conf`` scores it (the same candidates and probabilities; a catalog that
names its sources is out of scope: the one-to-one rule decides there). Prints:

- ``candidates``: the share of the catalog's true pairs among the candidate pairs (no rule on
  them can find more) and the share of true pairs' directions at rank < k of the fused score
  (``quality/robust.candidate_recall``);
- ``ap``: average precision of the model's probability and of the fused score over the rows;
- ``threshold=t``: row-wise and pairwise F1 (pairwise P / R) of the model's rule at each t (the
  ceiling of any threshold; reading it to choose a threshold on the scored catalog is the oracle's
  privilege, not a setting);
- ``defaults``: the trained threshold after the prior shift (what the job decides);
- ``expected_f1``: the threshold on the prior-shifted posteriors that maximises the plug-in
  expected pairwise F1 (``quality/robust.expected_f1_threshold``; no label read);
- ``oracle``: the TF-IDF oracle's row-wise and pairwise settings, and how many of its right
  pairs the defaults also find.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "bench"))

from listing_dedup.config import load_config  # noqa: E402
from listing_dedup.config.job import MatchConf  # noqa: E402
from listing_dedup.graph.rerank import (  # noqa: E402
    BUILTIN_TITLES,
    estimate_prior,
    for_coverage,
    histogram_of,
    prior_shifted,
    reranker_for,
    shifted_threshold,
)
from listing_dedup.quality import robust as R  # noqa: E402
from robust import DEFAULT_CSV, DEFAULT_OTHER, TitleVectors, build, oracle, scored_frame  # noqa: E402

GRID = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    o = np.argsort(-s, kind="mergesort")
    hit = y[o].astype(np.float64)
    if hit.sum() == 0:
        return float("nan")
    prec = np.cumsum(hit) / np.arange(1, len(hit) + 1)
    return float((prec * hit).sum() / hit.sum())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--titles-model", default=BUILTIN_TITLES, help="titles-only model dir (leave one out)")
    ap.add_argument("--csv", default=str(DEFAULT_CSV))
    ap.add_argument("--other-shops", default=str(DEFAULT_OTHER))
    ap.add_argument("--cache-dir", default=str(ROOT / "data" / "cache"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not Path(args.csv).exists():
        print(f"robust_ceiling: skipped, no labelled data at {args.csv}")
        return 0
    cfg = load_config([str(ROOT / "conf" / "local.yaml")])
    vectors = TitleVectors(cfg, args.cache_dir)
    cats = build(cfg, args.csv, vectors, "report", args.other_shops, (args.catalog,), sources=False)
    if not cats:
        print(f"robust_ceiling: no catalog {args.catalog!r}", file=sys.stderr)
        return 2
    cat = cats[0]
    cat.df = cat.df.assign(image_phash=None)
    cfg, _ = for_coverage(cfg, 0.0, args.titles_model)
    model, _ = reranker_for(cfg)
    frame, final = scored_frame(cat, cfg)
    src, dst, fused = frame["src"].to_numpy(), frame["dst"].to_numpy(), frame["score"].to_numpy()
    p = model.round_probabilities(frame)[-1]
    lab = R.label_codes(cat.labels)
    y = lab[src] == lab[dst]
    sizes = np.bincount(lab).astype(np.int64)
    print(
        f"catalog={cat.name} n={cat.n} true_pairs={int((sizes * (sizes - 1) // 2).sum())} rows={len(src)} "
        f"mean_group={np.mean(sizes[lab]):.2f}"
    )
    cr = R.candidate_recall(cat.labels, final[0], final[1], final[2], ks=(1, 2, 5, 10, 20, 50))
    print("candidates(final search) " + " ".join(f"{k}={v:.3f}" for k, v in cr.items()))
    cr = R.candidate_recall(cat.labels, src, dst, fused, ks=(1, 5, 50))
    print("candidates(scored frame) " + " ".join(f"{k}={v:.3f}" for k, v in cr.items()))
    print(f"ap model={average_precision(y, p):.3f} fused_score={average_precision(y, fused):.3f}")

    def rule(t: float) -> str:
        a, b, _ = R.rule_edges_any_order(src, dst, p, MatchConf(threshold=t, min2=True, min2_threshold=t))
        f1 = cat.scorer.score(a, b)[0]
        pf, pp, pr = cat.scorer.pair_scores(a, b)
        return f"{f1:.4f}/{pf:.4f} (P {pp:.3f} R {pr:.3f}; {len(a)} edges)"

    for t in GRID:
        print(f"threshold={t:g} {rule(t)}")
    rr, note = prior_shifted(cfg.rerank, model, *histogram_of(p))
    print(f"defaults threshold={rr.threshold:.3f} {rule(rr.threshold)} [{note}]")
    tp = float(model.meta.get("train_prior") or np.mean(y))
    prior = estimate_prior(*histogram_of(p), tp)
    r, q = prior / tp, (1.0 - prior) / (1.0 - tp)
    post = r * p / (r * p + q * (1.0 - p))
    und = pd.DataFrame({"a": np.minimum(src, dst), "b": np.maximum(src, dst), "q": post}).groupby(["a", "b"])["q"].max()
    tq, ef = R.expected_f1_threshold(und.to_numpy())
    te = shifted_threshold(tq, prior, tp)
    print(f"expected_f1 posterior>={tq:.3f} (expected pairwise F1 {ef:.3f}) threshold={te:.3f} {rule(te)}")
    o_row, o_pair = oracle(cat, cfg.index.k, None)
    print(
        f"oracle row {o_row['f1']:.4f}/{o_row['pf1']:.4f} ({o_row['by']}); pair {o_pair['f1']:.4f}/{o_pair['pf1']:.4f} "
        f"(P {o_pair['pp']:.3f} R {o_pair['pr']:.3f}; {o_pair['by']})"
    )
    a, b, _ = R.rule_edges_any_order(
        src, dst, p, MatchConf(threshold=rr.threshold, min2=True, min2_threshold=rr.threshold)
    )
    mine = set(zip(a.tolist(), b.tolist(), strict=True))
    oa, ob, _ = o_pair["_graph"]
    right = [(x, z) for x, z in zip(oa.tolist(), ob.tolist(), strict=True) if lab[x] == lab[z]]
    both = sum((x, z) in mine for x, z in right)
    mine_right = sum(lab[x] == lab[z] for x, z in mine)
    print(
        f"overlap oracle_pair_right={len(right)} defaults_right={mine_right} both={both} "
        f"oracle_only={len(right) - both} defaults_only={mine_right - both}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
