"""Train the titles-only re-ranker (no pHash; identifier and attribute features) on catalogs of several shapes,
other shops' included, leaving one catalog out for each other-shop catalog it is scored on.

    python bench/rerank_titles.py --out data/models/titles [--cache-dir data/cache]
        [--set rerank.train.rounds=200 ...] [--skip-loo]

Parts (each one catalog searched among itself, pHash removed so the model learns from titles
alone, as a shop without precomputed pHash runs):

- ``f3``: Shopee tuning fold 3 as it is (every listing has a twin);
- ``f4_single``: tuning fold 4, 30 % of its groups whole and one listing of each other group;
- ``g11``: the generated sample of seed 11 (product lines sharing names and codes);
- ``amazon_google``, ``wdc_products``: the other shops' catalogs whole (with their optional
  ``brand`` / ``price`` attributes, and walmart_amazon's ``modelno`` as ``model``, cleaned as the
  reader cleans them: the attribute features of graph/rerank.ATTR_FEATURES);
- ``walmart_amazon``: whole label groups of it drawn until 8,000 listings (the catalog's own mix:
  93 % without a duplicate), to keep the training time down.

No row of Shopee fold 1 or 2 or of the seed-7 sample. The probability threshold is chosen out of
fold for the mean pairwise F1 over the parts (``rerank_train.choose_thresholds``,
``select="pair"``): the row-wise F1 of a catalog of singletons rewards matching nothing, which
would set the threshold for the Shopee-shaped parts only.
Writes ``OUT/all`` (trained on every part:
the model to ship, lib/listing_dedup/models/reranker_titles) and, unless ``--skip-loo``,
``OUT/loo_<shop>`` for each other shop: trained on every part but that shop's, the model that
scores that shop in ``bench/robust.py --titles-model <shop>=OUT/loo_<shop>`` (leave one
catalog out: no setting is chosen on the catalog it is scored on).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "bench"))

from listing_dedup.config import load_config  # noqa: E402
from listing_dedup.graph.rerank import FEATURES, ID_FEATURES, SOURCE  # noqa: E402
from listing_dedup.quality import robust as R  # noqa: E402
from listing_dedup.training import rerank_train  # noqa: E402
from listing_dedup.training.offers import many_shops  # noqa: E402
from listing_dedup.training.rerank_train import (  # noqa: E402
    part_candidates,
    train_from_candidates,
    write_reranker_dir,
)
from rerank_transfer import shopee_parts  # noqa: E402
from robust import DEFAULT_CSV, DEFAULT_OTHER, TitleVectors  # noqa: E402

log = logging.getLogger("rerank_titles")
WALMART_TRAIN = 8000
OFFERS_SEED = 5


def training_parts(
    dev: pd.DataFrame, other: str, max_title_chars: int, seed: int = 3, offers: tuple[str, ...] = ()
) -> dict[str, pd.DataFrame]:
    f3, _, f4_single = shopee_parts(dev, seed)
    parts = {"f3": R._frame(f3), "f4_single": R._frame(f4_single)}
    g = R.sample_catalog(400, 11, max_title_chars)
    g["posting_id"] = "g11:" + g["posting_id"]
    g["label_group"] = "g11:" + g["label_group"]
    parts["g11"] = g
    shops = R.other_shops_suite(other, max_title_chars=max_title_chars)
    for name, df in shops.items():
        df = R.size_catalog(df, WALMART_TRAIN, seed) if name == "walmart_amazon" else df
        parts[name] = df.assign(label_group=name + ":" + df["label_group"])  # labels of one catalog only
    for name in offers:  # generated offers of many shops (training/offers.py) of the whole catalog's groups of 2+
        o = many_shops(shops[name], seed=OFFERS_SEED, prefix=f"{name}_offers")
        parts[f"{name}_offers"] = o.assign(label_group=name + ":" + o["label_group"])
    return {k: v.assign(image_phash=None) for k, v in parts.items()}  # titles only


def _cross_source(pc):
    """``pc`` without its candidates whose two ends name one source (unchanged without sources)."""
    cols = (f"{SOURCE}_src", f"{SOURCE}_dst")
    if not all(c in pc.frame.columns for c in cols):
        return pc
    a, b = pc.frame[cols[0]], pc.frame[cols[1]]
    keep = ~(a.notna() & b.notna() & (a.astype(str) == b.astype(str))).to_numpy()
    n_same = int((~keep).sum())
    log.info("part %s: %d of %d candidates join two listings of one source, left out", pc.part.name, n_same, len(keep))
    return dataclasses.replace(
        pc, frame=pc.frame[keep].reset_index(drop=True), X=pc.X[keep], y=pc.y[keep], groups=pc.groups[keep]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conf", action="append", default=None)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--csv", default=str(DEFAULT_CSV))
    ap.add_argument("--other-shops", default=str(DEFAULT_OTHER))
    ap.add_argument("--cache-dir", default=str(ROOT / "data" / "cache"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip-loo", action="store_true", help="train only the model on every part")
    ap.add_argument("--only", default="", help="comma-separated models to train (all, loo_<shop>; default: every one)")
    ap.add_argument(
        "--no-identifiers",
        action="store_true",
        help="ablation: train on the pair features without the identifier and attribute ones (graph/rerank.FEATURES)",
    )
    ap.add_argument(
        "--drop-same-source",
        action="store_true",
        help="leave out the candidates whose two ends name one source (the two-source parts: the pairs a run "
        "with the source attribute never matches, graph/rerank.one_to_one_keep)",
    )
    ap.add_argument(
        "--offers",
        default="",
        help="comma-separated other-shop catalogs whose label groups of 2+ also give a part of generated offers of "
        "many shops (<shop>_offers, training/offers.many_shops; left out with the shop)",
    )
    ap.add_argument(
        "--offers-weight",
        type=float,
        default=1.0,
        help="the fit weight of each generated offers part's candidates (the real parts' 1)",
    )
    ap.add_argument(
        "--number-containment",
        action="store_true",
        help="train on graph/rerank.NUMBER_FEATURE_SET (the attribute features and number_containment)",
    )
    ap.add_argument(
        "--no-prior-shift",
        action="store_true",
        help="write prior_shift: false (the job keeps the trained thresholds on every catalog)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # --number-containment: the shipped titles-only model's feature set (what part_candidates
    # computes, the fit names and the model directory records)
    sets = ["rerank.train.features=numbers"] if args.number_containment else []
    cfg = load_config(args.conf or [str(ROOT / "conf" / "local.yaml")], [*args.overrides, *sets])
    dev = R.labelled_listings(pd.read_csv(args.csv, dtype=str), cfg.input.max_title_chars)
    vectors = TitleVectors(cfg, args.cache_dir)
    offers = tuple(d for d in args.offers.split(",") if d)
    parts = training_parts(dev, args.other_shops, cfg.input.max_title_chars, offers=offers)
    pcs = {}
    for name, df in parts.items():
        t0 = time.perf_counter()
        pcs[name] = part_candidates(name, df.reset_index(drop=True), cfg, vectors.get(df["title"].tolist()))
        single = 100 * (df.groupby("label_group")["posting_id"].transform("size") == 1).mean()
        log.info(
            "part %s: %d listings (%.0f%% without a twin), %d candidates (%.1f%% positive) in %.0f s",
            name,
            len(df),
            single,
            len(pcs[name].y),
            100 * pcs[name].y.mean(),
            time.perf_counter() - t0,
        )
    if args.offers_weight != 1.0:
        pcs = {
            k: dataclasses.replace(v, weight=args.offers_weight) if k.endswith("_offers") else v for k, v in pcs.items()
        }
    if args.drop_same_source:
        pcs = {k: _cross_source(v) for k, v in pcs.items()}
    if args.no_identifiers:  # the identifier (and attribute) features follow FEATURES in the training set
        assert rerank_train.train_features(cfg)[: len(FEATURES) + len(ID_FEATURES)] == FEATURES + ID_FEATURES
        train = dataclasses.replace(cfg.rerank.train, features="base")  # what the fit names and the model records
        cfg = dataclasses.replace(cfg, rerank=dataclasses.replace(cfg.rerank, train=train))
        pcs = {k: dataclasses.replace(v, X=v.X[:, : len(FEATURES)]) for k, v in pcs.items()}
    runs = {"all": list(pcs)}
    if not args.skip_loo:
        runs.update({f"loo_{s}": [p for p in pcs if p not in (s, f"{s}_offers")] for s in R.OTHER_SHOPS if s in pcs})
    if args.only:
        runs = {k: v for k, v in runs.items() if k in args.only.split(",")}
    for run, names in runs.items():
        t0 = time.perf_counter()
        res = train_from_candidates([pcs[n] for n in names], cfg, select="pair")
        out = Path(args.out) / run
        write_reranker_dir(
            out, res, cfg, source="titles only (pHash removed): " + "+".join(names), prior_shift=not args.no_prior_shift
        )
        print(
            f"rerank_titles model={run} parts={'+'.join(names)} threshold={res.threshold} min2={res.min2_threshold} "
            f"group_margin={res.group_margin} oof_f1={res.best['f1']:.4f} oof_f1_min={res.best['f1_min']:.4f} "
            f"oof_gain_min={res.best['gain_min']:.4f} oof_pair_f1={res.best['pair_f1']:.4f} "
            f"seconds={time.perf_counter() - t0:.0f}",
            flush=True,
        )
        for p in res.parts:
            print(
                f"  part={p['part']} rule_f1={p['threshold_rule']['f1']:.4f} "
                f"reranked_oof_f1={p['reranked_out_of_fold']['f1']:.4f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
