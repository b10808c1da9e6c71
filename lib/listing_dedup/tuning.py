"""Threshold sweeps on a labelled split: pure functions over neighbour lists.

``exact_neighbours`` gives each listing's top-k (exact inner product, faiss flat index) for
validation-sized data on one machine; the job's own Spark search gives the same rows at
scale. ``sweep`` scores every (threshold, min2_threshold) pair with the row-wise F1 of
:mod:`listing_dedup.metrics`, applying exactly the job's edge rules (:mod:`listing_dedup.edges`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from listing_dedup.edges import select_edges_pandas
from listing_dedup.metrics import row_scores


def exact_neighbours(emb: np.ndarray, ids: Sequence[str], k: int) -> pd.DataFrame:
    """Top-``k`` neighbours of every row among all rows (self excluded): ``src, dst, score``."""
    import faiss

    x = np.ascontiguousarray(emb, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    kk = min(k + 1, len(x))
    scores, idx = index.search(x, kk)
    ids_arr = np.asarray(ids, dtype=object)
    src = np.repeat(np.arange(len(x)), kk)
    dst = idx.reshape(-1)
    sc = scores.reshape(-1)
    ok = (dst >= 0) & (dst != src)
    df = pd.DataFrame({"src": ids_arr[src[ok]], "dst": ids_arr[dst[ok]], "score": sc[ok].astype(np.float32)})
    # keep k per listing (a listing whose own row was not returned would otherwise keep k+1)
    return df.groupby("src", sort=False).head(k).reset_index(drop=True)


def score_edges(edges: pd.DataFrame, ids: Sequence[str], truth: pd.DataFrame) -> dict:
    pairs = edges.rename(columns={"src": "posting_id", "dst": "match_id"})
    s = row_scores(pairs, ids, truth)
    return {"f1": s.f1, "precision": s.precision, "recall": s.recall}


def sweep(
    nbrs: pd.DataFrame,
    ids: Sequence[str],
    truth: pd.DataFrame,
    thresholds: Sequence[float],
    min2_thresholds: Sequence[float | None] = (None,),
) -> pd.DataFrame:
    """Row-wise F1/precision/recall for each threshold and min2 threshold (None = min2 off).
    Rows sorted by f1 descending."""
    rows = []
    for t, m in itertools.product(thresholds, min2_thresholds):
        if m is not None and m > t:
            continue
        edges = select_edges_pandas(nbrs, t, m is not None, m if m is not None else t)
        rows.append({"threshold": t, "min2_threshold": m, **score_edges(edges, ids, truth)})
    return pd.DataFrame(rows).sort_values("f1", ascending=False, ignore_index=True)
