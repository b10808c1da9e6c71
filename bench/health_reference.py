"""The health reference of the conf defaults' threshold rule, from Shopee folds 2-4.

    python bench/health_reference.py [--conf conf/local.yaml] [--cache-dir data/cache] [--write] [--report]

Each tuning fold (2, 3, 4: where the defaults were chosen; fold 1 is for reporting) is searched
among itself through the job's stages on one machine, as bench/robust.py runs them (the conf's
text and lexical vectors fused, exact kNN, the INB rounds, the job's edge rules, the pHash
union). The reference pools the three folds' listings: each listing's top-1 fused score of the
final search, its matches, the signals' coverage. ``--write`` writes it to
lib/listing_dedup/quality/health_defaults.py (what the job reads when its settings are the
defaults). Per fold it prints the figures and what the health check says of the fold against
the pooled reference; ``--report`` also runs the check on the robustness suite's catalogs
(fold 1 and its shapes, the generated sample: reporting only, nothing is chosen on them).
MiniLM title vectors come from bench/robust.py's cache (data/cache/robust_minilm_titles.npz).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "bench"))

from listing_dedup.config import DedupConfig, load_config  # noqa: E402
from listing_dedup.quality import robust as R  # noqa: E402
from listing_dedup.quality.health import (  # noqa: E402
    HealthReference,
    Limits,
    decide,
    inputs_from_frames,
    reference_from,
)
from listing_dedup.quality.run_health import threshold_settings  # noqa: E402
from robust import DEFAULT_CSV, Catalog, TitleVectors  # noqa: E402

OUT = ROOT / "lib" / "listing_dedup" / "quality" / "health_defaults.py"
TUNE_FOLDS = (2, 3, 4)
log = logging.getLogger("health_reference")

MODULE = '''"""The health reference of the conf defaults' threshold rule (conf/local.yaml), computed on
Shopee folds 2-4 by ``python bench/health_reference.py --write`` (docs/quality.md). Do not edit
by hand: rerun the script when the defaults change (the job uses this reference only when a
run's threshold-rule settings equal its ``settings``)."""

from __future__ import annotations

import json

from listing_dedup.quality.health import HealthReference

REFERENCE_JSON = r"""
{body}
"""


def reference() -> HealthReference:
    return HealthReference.from_dict(json.loads(REFERENCE_JSON))
'''


def run_catalog(cat: Catalog, cfg: DedupConfig, prefix: str):
    """(ids, edges src/dst, top1 Series, groups, signals) of one catalog under ``cfg``."""
    signals = [s for s in ("text", "lexical") if getattr(cfg.embed, s).enabled]
    w = cfg.fusion.weights(signals)
    src, dst, sc = cat.search(w.get("text", 0.0), tuple(cfg.inb.thresholds), cfg.index.k)
    ph = cat.phash(cfg.phash.max_bits) if cfg.phash.enabled else None
    a, b, ew = R.rule_edges(src, dst, sc, cfg.match, ph)
    ids = np.array([f"{prefix}{p}" for p in cat.part.ids], dtype=object)
    first = np.r_[True, src[1:] != src[:-1]] if len(src) else np.zeros(0, dtype=bool)
    top1 = pd.Series(sc[first].astype(np.float64), index=ids[src[first]])
    edges = pd.DataFrame({"src": ids[a], "dst": ids[b]})
    grp = R.job_groups(cat.n, a, b, ew, cfg.match, cfg.guard)
    groups = pd.DataFrame({"posting_id": ids, "group_id": [f"g{x}" for x in grp]})
    titled = float((cat.df["title"].str.len() > 0).mean())
    cov = {s: titled for s in signals}
    cov["phash"] = float(cat.df["image_phash"].notna().mean()) if cfg.phash.enabled else 0.0
    return ids, edges, top1, groups, cov


def check(name: str, run, ref: HealthReference, titles: pd.Series) -> None:
    ids, edges, top1, groups, cov = run
    slack = Limits().top1_slack
    x = inputs_from_frames(ids, edges, groups, top1, cov, ref_quantiles=ref.top1_quantiles, slack=slack, titles=titles)
    h = decide(x, reference=ref)
    q = dict(zip((0.05, 0.5, 0.95), (h.top1_quantiles[0], h.top1_quantiles[9], h.top1_quantiles[18]), strict=True))
    print(
        f"{name}: n={h.n_listings} matched={h.share_matched:.3f} matches/listing={h.matches_per_listing:.2f} "
        f"top1 p5/p50/p95={q[0.05]:.3f}/{q[0.5]:.3f}/{q[0.95]:.3f} KS={h.top1_ks:.3f} "
        f"guard_cut={h.guard_cut_share:.3f} warnings={','.join(h.warning_codes) or '-'}",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conf", action="append", default=None)
    ap.add_argument("--csv", default=str(DEFAULT_CSV))
    ap.add_argument("--cache-dir", default=str(ROOT / "data" / "cache"))
    ap.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    ap.add_argument("--report", action="store_true", help="also check the robustness suite's catalogs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    confs = args.conf or [str(ROOT / "conf" / "local.yaml")]
    cfg = load_config(confs)
    t0 = time.perf_counter()
    vectors = TitleVectors(cfg, args.cache_dir)
    dev = R.labelled_listings(pd.read_csv(args.csv, dtype=str), cfg.input.max_title_chars)
    runs = {}
    suite = R.tuning_suite(dev, TUNE_FOLDS)
    for f in TUNE_FOLDS:
        runs[f"fold{f}"] = run_catalog(Catalog(f"fold{f}", suite[f"fold{f}"], cfg, vectors), cfg, f"f{f}:")
    ids = np.concatenate([r[0] for r in runs.values()])
    edges = pd.concat([r[1] for r in runs.values()], ignore_index=True)
    top1 = pd.concat([r[2] for r in runs.values()])
    n = {k: len(r[0]) for k, r in runs.items()}
    cov = {s: sum(r[4][s] * n[k] for k, r in runs.items()) / len(ids) for s in next(iter(runs.values()))[4]}
    ref = reference_from(
        ids,
        edges,
        top1,
        cov,
        source=f"conf defaults on Shopee folds {'+'.join(map(str, TUNE_FOLDS))} ({len(ids)} listings)",
        score="fused",
        settings=threshold_settings(cfg),
    )
    titles = pd.Series(dev["title"].to_numpy(), index=dev["posting_id"].to_numpy())
    for name, r in runs.items():
        fold = int(name[4:])
        check(name, r, ref, titles.rename(index=lambda p, fold=fold: f"f{fold}:{p}"))
    body = json.dumps(ref.to_dict(), indent=2, sort_keys=True)
    print(body)
    if args.write:
        OUT.write_text(MODULE.replace("{body}", body))
        print(f"wrote {OUT.relative_to(ROOT)}")
    if args.report:
        frames = {**R.shopee_suite(dev, report_fold=1), "sample": R.sample_catalog(400, 7, cfg.input.max_title_chars)}
        for name, df in frames.items():
            cat = Catalog(name, df, cfg, vectors)
            check(name, run_catalog(cat, cfg, ""), ref, pd.Series(df["title"].to_numpy(), index=df["posting_id"]))
            if name != "sample":  # the same catalog without its pHashes (a shop whose listings have none)
                cat = Catalog(name, df.assign(image_phash=None), cfg, vectors)
                check(f"{name} without pHash", run_catalog(cat, cfg, ""), ref, pd.Series(dtype=str))
    print(f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
