"""Convert the Shopee dev CSV (../shared/data) into job input: listings Parquet + truth CSV.

    python bench/prepare_shopee.py --folds 1 --out data/shopee_fold1 [--keep-image]

The image column is dropped unless --keep-image (the images themselves are not shipped).
The data stays outside the repository (data/ is git-ignored).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "shopee" / "listings_dev.csv"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", default=str(DEFAULT_CSV))
    p.add_argument("--folds", default="1", help="comma-separated folds, e.g. 1 or 2,3,4")
    p.add_argument("--out", required=True)
    p.add_argument("--keep-image", action="store_true")
    args = p.parse_args()

    folds = [int(f) for f in args.folds.split(",")]
    df = pd.read_csv(args.csv, dtype={"posting_id": str, "label_group": str, "image_phash": str, "title": str})
    df = df[df["fold"].isin(folds)].reset_index(drop=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cols = ["posting_id", "title", "image_phash"] + (["image"] if args.keep_image else [])
    df[cols].to_parquet(out / "listings.parquet", index=False)
    df[["posting_id", "label_group"]].to_csv(out / "truth.csv", index=False)
    print(f"folds {folds}: {len(df)} listings, {df['label_group'].nunique()} groups -> {out}")


if __name__ == "__main__":
    main()
