"""Score a committed run against known groups: the row-wise mean F1 of ``metrics`` and, beside
it, pairwise precision / recall / F1 over unordered true pairs (``*_pairwise``).

Reads the run's ``matches`` and ``clusters`` partitions through Delta (never as plain
Parquet) and a truth file (Parquet or CSV with ``posting_id,label_group``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from listing_dedup.errors import InputError
from listing_dedup.quality.metrics import pair_scores, pairs_from_groups, pairs_from_match_lists, row_scores
from listing_dedup.sink.delta import read_table


def read_truth(path: str) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise InputError(f"truth file does not exist: {path}")
    try:
        if p.is_dir() or p.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(p)
        else:
            df = pd.read_csv(p, dtype=str)
    except Exception as e:  # noqa: BLE001 - any parse failure is unusable input
        raise InputError(f"cannot read truth file {path}: {e}") from None
    missing = {"posting_id", "label_group"} - set(df.columns)
    if missing:
        raise InputError(f"truth file {path} lacks column(s): {', '.join(sorted(missing))}")
    return df[["posting_id", "label_group"]].astype(str)


def evaluate_run(warehouse: str, run_date: str, truth: pd.DataFrame) -> dict:
    matches = read_table(warehouse, "matches", run_date, columns=["posting_id", "match_ids"])
    clusters = read_table(warehouse, "clusters", run_date, columns=["posting_id", "group_id"])
    if matches.empty:
        raise InputError(f"no matches for run date {run_date} under {warehouse}")
    mp, cp = pairs_from_match_lists(matches), pairs_from_groups(clusters)
    m = row_scores(mp, matches["posting_id"], truth)
    c = row_scores(cp, clusters["posting_id"], truth)
    return {
        "run_date": run_date,
        "n": m.n,
        "matches": m.as_dict(),
        "clusters": c.as_dict(),
        "matches_pairwise": pair_scores(mp, matches["posting_id"], truth).as_dict(),
        "clusters_pairwise": pair_scores(cp, clusters["posting_id"], truth).as_dict(),
    }
