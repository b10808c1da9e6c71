"""How many labelled groups does a shop need to fit the edge rule? (issue 15)

    python bench/label_curve.py [--conf conf/local.yaml] [--cache-dir data/cache] [--seeds 5]
        [--groups 25,50,100,200,400,800,1600]

A user fitting the job to their shop labels some of its product groups (each labelled group
complete: every listing of it found) and tunes on the catalog. Simulated here on Shopee folds
2, 3 and 4 (each one catalog searched among itself, as jobs/tune.py does): for each number of
labelled groups, ``--seeds`` random draws of that many groups from the three folds; the edge
rule (``match.threshold`` x ``match.relative_margin`` x ``match.mutual_rank``, the rest of the
conf as given) is chosen by the mean F1 over the labelled listings only (row-wise F1, where a
labelled listing's match outside its group is a false positive), then scored on every catalog
of the robustness suite (bench/robust.py's report catalogs, whole, all rows). Beside it, in the
same run: the rule chosen with every group labelled, and the conf's own rule (the shipped
defaults). The suite's singletons and size_27k catalogs hold listings of folds 2-4 too (as in
bench/robust.py, whose settings were chosen there as well).

Final line: ``label_curve groups=<smallest n whose mean fold-1 F1 is within 0.005 of all
labels> f1_at_all=<fold 1 F1 with all labels> defaults_f1=<fold 1 F1 of the conf's rule>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import robust as B  # noqa: E402  (bench/robust.py: the suite's catalogs and fast path)
from listing_dedup.config import load_config  # noqa: E402
from listing_dedup.quality import robust as R  # noqa: E402

THRESHOLDS = (0.8, 0.825, 0.85, 0.875, 0.9, 0.925, 0.95)
MARGINS = (0.025, 0.05, 0.1)
MUTUAL = (0, 2)
log = logging.getLogger("label_curve")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conf", action="append", default=None)
    ap.add_argument("--csv", default=str(B.DEFAULT_CSV))
    ap.add_argument("--cache-dir", default=str(B.ROOT / "data" / "cache"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--groups", default="25,50,100,200,400,800,1600")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not Path(args.csv).exists():
        print(f"label_curve: skipped, no labelled data at {args.csv}")
        return 0
    t0 = time.perf_counter()
    cfg = load_config(args.conf or [str(B.ROOT / "conf" / "local.yaml")])
    vectors = B.TitleVectors(cfg, args.cache_dir)
    w = cfg.fusion.weights([s for s in ("text", "lexical") if getattr(cfg.embed, s).enabled])
    inb, k = tuple(cfg.inb.thresholds), cfg.index.k

    def nbrs(cat):
        return cat.search(w.get("text", 0.0), inb, k), (cat.phash(cfg.phash.max_bits) if cfg.phash.enabled else None)

    settings = [
        dataclasses.replace(cfg.match, threshold=t, relative_margin=m, mutual_rank=r, min2=False, min2_threshold=t)
        for t, m, r in itertools.product(THRESHOLDS, MARGINS, MUTUAL)
    ]
    tune = B.build(cfg, args.csv, vectors, "tune")  # folds 2, 3, 4, each searched among itself
    # each setting's per-row F1 on every tuning fold (the draws below only pick rows of it)
    rows = []
    for cat in tune:
        (s, d, sc), ph = nbrs(cat)
        rows.append(np.stack([cat.scorer.row_f1(*R.rule_edges(s, d, sc, m, ph)[:2]) for m in settings]))
    report = B.build(cfg, args.csv, vectors, "report")
    rep_nb = [nbrs(cat) for cat in report]

    def suite_scores(m):
        return {c.name: c.scorer.score(*R.rule_edges(*nb, m, ph)[:2])[0] for c, (nb, ph) in zip(report, rep_nb)}

    cache: dict[int, dict] = {}

    def scores_of(i: int) -> dict:
        if i not in cache:
            cache[i] = suite_scores(settings[i])
        return cache[i]

    groups = [(f, g) for f, cat in enumerate(tune) for g in np.unique(cat.labels)]
    log.info("%d settings, %d labelled groups in the tuning folds", len(settings), len(groups))

    def choose(chosen: set) -> int:
        f1_sum, n = np.zeros(len(settings)), 0
        for f, cat in enumerate(tune):
            mask = np.isin(cat.labels, [g for ff, g in chosen if ff == f])
            f1_sum += rows[f][:, mask].sum(axis=1)
            n += int(mask.sum())
        return int(np.argmax(f1_sum / max(n, 1)))

    names = [c.name for c in report]
    out = []
    best_all = choose(set(groups))
    for n_groups in [int(x) for x in args.groups.split(",")]:
        picks = []
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            drawn = {groups[i] for i in rng.choice(len(groups), size=min(n_groups, len(groups)), replace=False)}
            picks.append(choose(drawn))
        sc = pd.DataFrame([scores_of(i) for i in picks])[names]
        out.append((n_groups, sc, picks))
        m = settings[max(set(picks), key=picks.count)]
        print(
            f"groups={n_groups} fold1={sc[names[0]].mean():.4f}+-{sc[names[0]].std(ddof=0):.4f} "
            f"suite_min={sc.min(axis=1).mean():.4f} suite_mean={sc.mean(axis=1).mean():.4f} "
            f"distinct_settings={len(set(picks))} most_chosen=thr {m.threshold} margin {m.relative_margin} "
            f"mutual {m.mutual_rank}",
            flush=True,
        )
    all_sc = scores_of(best_all)
    default_sc = suite_scores(cfg.match)
    ma = settings[best_all]
    print(f"all groups ({len(groups)}): thr {ma.threshold} margin {ma.relative_margin} mutual {ma.mutual_rank}")
    print("| labelled groups | " + " | ".join(names) + " | suite min | suite mean |")
    print("|---" * (len(names) + 3) + "|")
    for n_groups, sc, _ in out:
        cells = [f"{sc[c].mean():.3f} ± {sc[c].std(ddof=0):.3f}" for c in names]
        print(
            f"| {n_groups} | " + " | ".join(cells) + f" | {sc.min(axis=1).mean():.3f} | {sc.mean(axis=1).mean():.3f} |"
        )
    for label, s in ((f"all ({len(groups)})", all_sc), ("conf's rule (defaults)", default_sc)):
        v = [s[c] for c in names]
        print(f"| {label} | " + " | ".join(f"{x:.3f}" for x in v) + f" | {min(v):.3f} | {np.mean(v):.3f} |")
    enough = next((n for n, sc, _ in out if sc[names[0]].mean() >= all_sc[names[0]] - 0.005), None)
    print(f"{time.perf_counter() - t0:.0f} s")
    print(
        f"label_curve groups={enough if enough is not None else 'none'} f1_at_all={all_sc[names[0]]:.4f} "
        f"defaults_f1={default_sc[names[0]]:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
