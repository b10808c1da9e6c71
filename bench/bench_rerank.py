"""Score a trained re-ranker on a held-out labelled catalog against the threshold rule.

    python bench/bench_rerank.py --conf conf/local.yaml [--conf ...] --model RERANKER_DIR \
        --input data/shopee_fold1/labelled.parquet [--truth TRUTH.csv] [--cache-dir data/cache] [--json-out F]

The conf stack is the one the re-ranker was trained under, without its overlay (the
threshold rule's figure uses ``match``'s thresholds; the re-ranker's figure its own). The
held-out catalog is searched among itself with the job's stages on one machine (exact kNN,
lib/listing_dedup/training/rerank_train.py); nothing in it chooses a setting. Prints one table row per
rule (the threshold rule, the re-ranker, and the re-ranker stopped after each earlier round at
the thresholds metrics.json chose for that round) and, with --sweep, the best threshold on the
held-out catalog itself (an upper bound, never a figure to report as held out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from listing_dedup.config import load_config  # noqa: E402
from listing_dedup.graph.rerank import check_fingerprint, load_reranker  # noqa: E402
from listing_dedup.quality.tune import load_split, text_vectors  # noqa: E402
from listing_dedup.training.rerank_train import THRESHOLDS, part_candidates, rule_pairs  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", action="append", required=True)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True, help="held-out labelled Parquet")
    p.add_argument("--truth")
    p.add_argument("--cache-dir")
    p.add_argument("--sweep", action="store_true", help="also print the best threshold on this catalog")
    p.add_argument("--json-out")
    args = p.parse_args()
    cfg = load_config(args.conf, args.overrides)
    model = load_reranker(args.model)
    check_fingerprint(model.meta, cfg, args.model)
    df = load_split(args.input, args.truth, cfg.input.max_title_chars)
    t0 = time.perf_counter()
    pc = part_candidates("heldout", df, cfg, text_vectors(df, cfg, args.cache_dir))
    t_cand = time.perf_counter() - t0
    t0 = time.perf_counter()
    probs = model.round_probabilities(pc.frame)
    prob = probs[-1]
    t_pred = time.perf_counter() - t0
    bits = cfg.phash.max_bits if cfg.phash.enabled else None
    mc = cfg.match
    rows = {
        "threshold rule": pc.part.scorer.score(
            *rule_pairs(pc, pc.frame["score"].to_numpy(), mc.threshold, None, bits, match=mc)
        ),
        "re-ranker": pc.part.scorer.score(
            *rule_pairs(pc, prob, model.meta["threshold"], model.meta["min2_threshold"], bits)
        ),
    }
    # the earlier rounds alone, each at the thresholds chosen out of fold for it (metrics.json)
    metrics_file = Path(args.model) / "metrics.json"
    chosen = json.loads(metrics_file.read_text()).get("rounds", []) if metrics_file.exists() else []
    for r in range(model.graph_rounds):
        if r < len(chosen) and chosen[r].get("round") == r:
            name = "re-ranker, pair model only" if r == 0 else f"re-ranker, {r} graph round(s)"
            rows[name] = pc.part.scorer.score(
                *rule_pairs(pc, probs[r], chosen[r]["threshold"], chosen[r]["min2"], bits)
            )
    print(
        f"{len(df)} listings, {len(pc.y)} candidates ({pc.y.mean():.2%} positive); candidates {t_cand:.1f} s, "
        f"prediction {t_pred:.1f} s ({len(pc.y) / max(t_pred, 1e-9):,.0f} pairs/s, one thread)"
    )
    print("| rule | F1 | P | R |\n|---|---|---|---|")
    for name, (f1, pr, rc) in rows.items():
        print(f"| {name} | {f1:.4f} | {pr:.4f} | {rc:.4f} |")
    out = {k: dict(zip(("f1", "precision", "recall"), v, strict=True)) for k, v in rows.items()}
    if args.sweep:
        best = max(
            (
                pc.part.scorer.score(*rule_pairs(pc, prob, t, m, bits)) + (t, m)
                for t in THRESHOLDS
                for m in (None, 0.05, 0.1, 0.2, 0.3)
                if m is None or m <= t
            ),
            key=lambda r: r[0],
        )
        print(f"best on this catalog itself (not held out): F1 {best[0]:.4f} at threshold {best[3]}, min2 {best[4]}")
        out["sweep_best"] = {"f1": best[0], "threshold": best[3], "min2": best[4]}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    return 0 if np.isfinite(rows["re-ranker"][0]) else 1


if __name__ == "__main__":
    sys.exit(main())
