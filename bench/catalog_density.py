"""How crowded a listing's neighbourhood is as a catalog grows: generated catalogs vs Shopee.

    python bench/catalog_density.py [--products 3000,10000,33000,100000] [--growth categories,lines]
        [--queries 1000] [--csv ../shared/data/shopee/listings_dev.csv]

The scale bench (bench/scale.py) grows the generated sample to 1M listings. What each listing
costs the search, INB and the graph depends on how many look-alikes it has, so a generator
whose look-alikes grow in proportion to the catalog measures its own density, not the job.
This prints, for each generated size and growth rule (quality/sample.py) and for the Shopee
dev folds when the data is here (fold 1, folds 1-2, all four), the mean number of listings a
random listing has at lexical cosine >= 0.6 (the INB threshold), >= 0.75 and >= 0.9, the wrong
ones among those >= 0.75, and its true duplicates: exact cosine of ``--queries`` sampled
listings against the whole catalog, the job's lexical vectors (char 2-4-grams, idf fitted on the
catalog, 1024-d projection). Final line per catalog:
``density catalog=<name> n=<listings> ge060=<mean> ge075=<mean> ge090=<mean> wrong_ge075=<mean>``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from listing_dedup.config import load_config  # noqa: E402
from listing_dedup.embed.lexical import document_frequencies, hashed_counts, idf_vector, lexical_vectors  # noqa: E402
from listing_dedup.quality import robust as R  # noqa: E402
from listing_dedup.quality.sample import generate_catalog  # noqa: E402


def density(name: str, titles: pd.Series, labels: np.ndarray, params, queries: int) -> None:
    counts = hashed_counts(titles, params)
    idf = idf_vector(*document_frequencies(counts), len(titles), params.n_features)
    x = lexical_vectors(titles, idf, params).astype(np.float32)
    q = np.random.default_rng(0).choice(len(titles), min(queries, len(titles)), replace=False)
    sims = x[q] @ x.T
    sims[np.arange(len(q)), q] = -1.0  # not itself
    same = labels[q][:, None] == labels[None, :]
    same[np.arange(len(q)), q] = False

    def mean(mask) -> float:
        return float(mask.sum(axis=1).mean())

    print(
        f"density catalog={name} n={len(titles)} ge060={mean(sims >= 0.6):.1f} ge075={mean(sims >= 0.75):.2f} "
        f"ge090={mean(sims >= 0.9):.2f} wrong_ge075={mean((sims >= 0.75) & ~same):.2f} "
        f"true_duplicates={mean(same):.2f}",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--products", default="3000,10000,33000,100000")
    ap.add_argument("--growth", default="categories,lines")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--csv", default=str(ROOT.parent / "shared" / "data" / "shopee" / "listings_dev.csv"))
    args = ap.parse_args()
    params = load_config([str(ROOT / "conf" / "local.yaml")]).embed.lexical.params()
    if Path(args.csv).exists():
        dev = R.labelled_listings(pd.read_csv(args.csv, dtype=str), 1000)
        fold = dev["fold"].astype(int)
        for name, df in (("shopee_fold1", dev[fold == 1]), ("shopee_folds12", dev[fold <= 2]), ("shopee_all", dev)):
            df = df.reset_index(drop=True)
            density(name, df["title"], df["label_group"].to_numpy(), params, args.queries)
    for growth in args.growth.split(","):
        for p in (int(v) for v in args.products.split(",")):
            s = generate_catalog(p, seed=7, with_bad_rows=False, growth=growth)
            df = s.listings.merge(s.truth, on="posting_id")
            density(f"generated_{growth}_{p}p", df["title"], df["label_group"].to_numpy(), params, args.queries)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
