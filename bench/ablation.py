"""Component ablation on a held-out catalog: for each combination of signals x pHash x min2 x
INB, take the setting that was best on the tuning split (the CSV ``jobs/tune.py --csv`` wrote)
and score it on the held-out catalog, so every component's contribution is measured.

    python bench/ablation.py --conf conf/local.yaml --tuned-csv data/tuned_train.csv \
        --input data/shopee_fold1/labelled.parquet [--cache-dir data/cache] [--markdown]

The held-out catalog is searched among itself (one part), with the job's own stages
(lib/listing_dedup/quality/tune.py); nothing in it is used to choose a setting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from listing_dedup.config import load_config  # noqa: E402
from listing_dedup.quality.tune import SETTING, Grid, ablation, load_split, prepare_part, sweep_parts, text_vectors  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", action="append", required=True)
    p.add_argument("--tuned-csv", required=True)
    p.add_argument("--input", required=True, help="held-out labelled Parquet")
    p.add_argument("--truth")
    p.add_argument("--cache-dir")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    cfg = load_config(args.conf)
    train = pd.read_csv(args.tuned_csv)
    for c in ("inb", "min2", "phash_bits"):
        train[c] = train[c].astype(object).where(train[c].notna(), None)
    chosen = ablation(train)
    df = load_split(args.input, args.truth, cfg.input.max_title_chars)
    part = prepare_part("heldout", df, cfg, text_vectors(df, cfg, args.cache_dir), Grid())
    rows = []
    for _, s in chosen.iterrows():
        grid = Grid(
            text_weights=(float(s["text_weight"]),),
            inb=(None if s["inb"] is None else float(s["inb"]),),
            thresholds=(float(s["threshold"]),),
            min2=(None if s["min2"] is None else float(s["min2"]),),
            phash_bits=(None if s["phash_bits"] is None else int(s["phash_bits"]),),
        )
        r = sweep_parts([part], grid).iloc[0]
        rows.append(
            {
                **{k: s[k] for k in ["signals", "uses_phash", "uses_min2", "uses_inb", *SETTING]},
                "tune_f1": s["f1"],
                "heldout_f1": r["f1"],
                "heldout_p": r["precision"],
                "heldout_r": r["recall"],
            }
        )
    out = pd.DataFrame(rows).sort_values("heldout_f1", ascending=False, ignore_index=True)
    if args.markdown:
        cols = [
            "signals",
            "uses_phash",
            "uses_min2",
            "uses_inb",
            *SETTING,
            "tune_f1",
            "heldout_f1",
            "heldout_p",
            "heldout_r",
        ]
        print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        for _, r in out.iterrows():
            cells = [
                f"{v:.3f}" if isinstance(v, float) and not np.isnan(v) else ("" if v is None else str(v))
                for v in (r[c] for c in cols)
            ]
            print("| " + " | ".join(cells) + " |")
    else:
        print(out.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
