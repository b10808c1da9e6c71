"""Does a re-ranker trained on a mix of catalog shapes transfer to the robustness suite?

    python bench/rerank_transfer.py [--conf conf/local.yaml] [--model DIR | --train-out DIR]
        [--cache-dir data/cache] [--markdown]

Issue 15 measured two re-rankers, each trained on one shape (docs/quality.md): A on a Shopee
fold (every listing has a twin) over-merges where most listings have none; B on a
singletons-shaped catalog is under the rule on the Shopee shapes. This bench trains one on
**several catalogs of different shapes at once**, each searched among itself (the parts of
``jobs/train_reranker.py``; its features are relative to each catalog's own neighbourhoods):

- ``f3``: tuning fold 3 as it is (every listing has a twin);
- ``f4_single``: tuning fold 4, 30 % of its groups whole and one listing from each other
  group (about 40 % of the catalog without a twin);
- ``g11``, ``g12``: generated samples of seeds 11 and 12 (product lines sharing names and codes).

Nothing of fold 1, fold 2 or the seed-7 sample is trained on. It then scores the re-ranker
beside the threshold rule of the conf (matches and clusters F1, the job's edge rules, pHash
union, group margin and guard) on the report suite of ``bench/robust.py`` and on two catalogs
without any training row: ``singletons_clean`` (fold 1 plus one listing per group of fold 2)
and ``dense_clean`` (folds 1 and 2 together, 13.7k). The report suite's ``singletons`` and
``size_27k`` hold some training rows (folds 3-4); their re-ranker figures are marked.

Final line: ``rerank_transfer rule_min=<worst> rerank_min=<worst> ...`` over the clean catalogs.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "bench"))

from listing_dedup.config import load_config  # noqa: E402
from listing_dedup.graph.rerank import group_margin_of, load_reranker  # noqa: E402
from listing_dedup.quality import robust as R  # noqa: E402
from listing_dedup.quality.health import read_reference  # noqa: E402
from listing_dedup.training.rerank_train import part_candidates, train_reranker, write_reranker_dir  # noqa: E402
from robust import DEFAULT_CSV, TitleVectors, fast_health  # noqa: E402

log = logging.getLogger("rerank_transfer")


def shopee_parts(dev: pd.DataFrame, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Fold 3, fold 4, and fold 4 with 41 % singletons: 30 % of its groups whole, one listing
    of every other group (the training parts both re-ranker benches share)."""
    rng = np.random.default_rng(seed)
    f3 = dev[dev["fold"].astype(int) == 3]
    f4 = dev[dev["fold"].astype(int) == 4]
    groups = f4["label_group"].unique()
    whole = set(rng.permutation(groups)[: int(0.3 * len(groups))])
    rest = f4[~f4["label_group"].isin(whole)]
    one = rest.iloc[rng.permutation(len(rest))].drop_duplicates("label_group")
    return f3, f4, pd.concat([f4[f4["label_group"].isin(whole)], one])


def training_catalog(dev: pd.DataFrame, max_title_chars: int, mix: str = "dense", seed: int = 3) -> pd.DataFrame:
    """The mixed-shape training catalog (see the module docstring); ``fold`` names each part.
    ``mix``: "dense" adds folds 3 and 4 together as one more part (the density of two folds)
    and keeps one generated sample; "shapes" has no dense part and two samples."""
    f3, f4, f4_single = shopee_parts(dev, seed)
    parts = [f3.assign(fold="f3"), f4_single.assign(fold="f4_single")]
    if mix == "dense":  # ids made unique (fold 3 is in two parts); labels kept, so the
        # out-of-fold models hold a group out of both parts at once
        dense = pd.concat([f3, f4]).assign(fold="f34_dense")
        parts.append(dense.assign(posting_id="d:" + dense["posting_id"]))
    seeds = (11,) if mix == "dense" else (11, 12)
    for s in seeds:  # generated ids restart at each seed: keep them apart
        g = R.sample_catalog(400, s, max_title_chars).assign(fold=f"g{s}")
        g["posting_id"] = g["fold"] + ":" + g["posting_id"]
        g["label_group"] = g["fold"] + ":" + g["label_group"]
        parts.append(g)
    return pd.concat(parts, ignore_index=True)


def eval_catalogs(dev: pd.DataFrame, max_title_chars: int) -> dict[str, pd.DataFrame]:
    out = {**R.shopee_suite(dev, report_fold=1), "sample": R.sample_catalog(400, 7, max_title_chars)}
    f1, f2 = dev[dev["fold"].astype(int) == 1], dev[dev["fold"].astype(int) == 2]
    out["singletons_clean"] = R.singletons_catalog(f1, f2, 0)
    out["dense_clean"] = R._frame(pd.concat([f1, f2]))
    return out


def seed_cache(df: pd.DataFrame, cfg, cache_dir: str, vectors: TitleVectors) -> None:
    """Write the per-catalog text cache ``quality.tune.text_vectors`` reads, from the per-title
    cache of bench/robust.py (the same encoder; saves re-encoding)."""
    key = hashlib.sha256(("\n".join(df["title"]) + "|" + cfg.embed.text.model).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"text_{key}.npy"
    if not path.exists():
        np.save(path, vectors.get(df["title"].tolist()))


def score_catalog(
    df: pd.DataFrame, cfg, model, reference, vecs: np.ndarray, held_out: np.ndarray | None = None
) -> dict:
    """Rule and re-ranker on one catalog. ``held_out``: a mask of the rows no training saw;
    ``f1_held`` is the matches F1 over them only (the catalog is still searched whole)."""
    pc = part_candidates("eval", df, cfg, vecs)
    src, dst = pc.frame["src"].to_numpy(), pc.frame["dst"].to_numpy()
    n, bits = pc.part.scorer.n, cfg.phash.max_bits
    ph = (*pc.part.phash[bits], pc.part.phash_score[bits]) if cfg.phash.enabled else None
    out = {"candidates": len(pc.frame)}
    prob = model.round_probabilities(pc.frame)[-1]
    t, m2 = model.meta["threshold"], model.meta["min2_threshold"]
    rr_match = dataclasses.replace(cfg.rerank, threshold=t, min2=m2 is not None, min2_threshold=m2 or t).match()
    # the re-ranker's probabilities group under the margin its training chose (reranker.json)
    rr_guard = dataclasses.replace(cfg.guard, group_margin=group_margin_of(cfg, model))
    for name, score, match, guard in (
        ("rule", pc.frame["score"].to_numpy(), cfg.match, cfg.guard),
        ("rerank", prob, rr_match, rr_guard),
    ):
        a, b, w = R.rule_edges_any_order(src, dst, score, match, ph)
        f1, p, r = pc.part.scorer.score(a, b)
        g = R.job_groups(n, a, b, w, match, guard)
        cf1 = R.cluster_scores(df["label_group"].to_numpy(), g)[0]
        out[name] = {"f1": f1, "p": p, "r": r, "cf1": cf1, "edges_per_listing": 2 * len(a) / max(n, 1)}
        if held_out is not None:
            out[name]["f1_held"] = float(pc.part.scorer.row_f1(a, b)[held_out].mean())
    # the job's health check of the re-ranked run, against the model's reference
    top1 = pc.frame.groupby("src")["score"].max()
    health = fast_health(df, pc.part.ids, (a, b, g), top1, cfg, reference)
    out["rerank"]["warnings"] = ",".join(health.warning_codes)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conf", action="append", default=None)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--csv", default=str(DEFAULT_CSV))
    ap.add_argument("--cache-dir", default=str(ROOT / "data" / "cache"))
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="score this re-ranker directory (no training)")
    g.add_argument("--train-out", help="train the mixed-shape re-ranker into this directory, then score it")
    ap.add_argument("--mix", choices=("dense", "shapes"), default="dense", help="the training parts (see above)")
    ap.add_argument("--only", help="comma-separated catalog names to score")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = load_config(args.conf or [str(ROOT / "conf" / "local.yaml")], args.overrides)
    dev = R.labelled_listings(pd.read_csv(args.csv, dtype=str), cfg.input.max_title_chars)
    vectors = TitleVectors(cfg, args.cache_dir)
    model_dir = args.model
    if args.train_out:
        train = training_catalog(dev, cfg.input.max_title_chars, args.mix)
        for part, sub in train.groupby("fold"):
            log.info(
                "training part %s: %d listings, %.0f%% without a twin",
                part,
                len(sub),
                100 * (sub.groupby("label_group")["posting_id"].transform("size") == 1).mean(),
            )
        seed_cache(train, cfg, args.cache_dir, vectors)
        t0 = time.perf_counter()
        res = train_reranker(train, cfg, cache_dir=args.cache_dir)
        write_reranker_dir(args.train_out, res, cfg, source="mixed shapes: " + "+".join(sorted(train["fold"].unique())))
        log.info("trained in %.0f s: threshold %s min2 %s", time.perf_counter() - t0, res.threshold, res.min2_threshold)
        model_dir = args.train_out
    model = load_reranker(model_dir)
    reference = read_reference(model_dir)
    cats = eval_catalogs(dev, cfg.input.max_title_chars)
    if args.only:
        cats = {k: v for k, v in cats.items() if k in args.only.split(",")}
    rows = {}
    print(
        "| catalog | listings | rule matches | rule clusters | re-ranker matches | re-ranker clusters "
        "| re-ranker P / R | re-ranker health warnings |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, df in cats.items():
        t0 = time.perf_counter()
        held = None
        if name in ("singletons", "size_27k"):  # rows of folds 3-4 are training rows
            held = ~df["posting_id"].isin(set(dev.loc[dev["fold"].astype(int).isin([3, 4]), "posting_id"])).to_numpy()
        rows[name] = r = score_catalog(df, cfg, model, reference, vectors.get(df["title"].tolist()), held)
        mark = " *" if held is not None else ""
        print(
            f"| {name}{mark} | {len(df):,} | {r['rule']['f1']:.4f} | {r['rule']['cf1']:.4f} | {r['rerank']['f1']:.4f} "
            f"| {r['rerank']['cf1']:.4f} | {r['rerank']['p']:.3f} / {r['rerank']['r']:.3f} "
            f"| {r['rerank']['warnings'] or 'none'} |",
            flush=True,
        )
        if held is not None:
            print(
                f"| {name}, the {held.sum():,} rows no training saw | | {r['rule']['f1_held']:.4f} | "
                f"| {r['rerank']['f1_held']:.4f} | | | |"
            )
        log.info("%s scored in %.0f s (%d candidates scored)", name, time.perf_counter() - t0, r["candidates"])
    clean = [k for k in rows if k not in ("singletons", "size_27k")]
    if clean:
        print(
            f"rerank_transfer rule_min={min(rows[k]['rule']['f1'] for k in clean):.4f} "
            f"rerank_min={min(rows[k]['rerank']['f1'] for k in clean):.4f} "
            f"rule_mean={np.mean([rows[k]['rule']['f1'] for k in clean]):.4f} "
            f"rerank_mean={np.mean([rows[k]['rerank']['f1'] for k in clean]):.4f} clean={','.join(clean)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
