"""Threshold sweeps on a labelled split: pure functions over neighbour lists.

``knn`` (row numbers) and ``exact_neighbours`` (listing ids) give each listing's top-k (exact
inner product, faiss flat index) for validation-sized data on one machine; the job's own Spark
search gives the same rows at scale. ``sweep`` scores every (threshold, min2_threshold) pair with the row-wise F1 of
:mod:`listing_dedup.quality.metrics`, applying exactly the job's edge rules (:mod:`listing_dedup.graph.edges`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from listing_dedup.graph.edges import select_edges_pandas
from listing_dedup.quality.metrics import row_scores


def knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k (self excluded) as directed rows sorted by src then score desc."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    kk = min(k + 1, len(x))
    s, i = index.search(x, kk)
    src = np.repeat(np.arange(len(x)), kk)
    dst, sc = i.reshape(-1), s.reshape(-1)
    ok = (dst >= 0) & (dst != src)
    src, dst, sc = src[ok], dst[ok], sc[ok]
    return top_k_sorted(src, dst, sc, k)


def top_k_sorted(src: np.ndarray, dst: np.ndarray, sc: np.ndarray, k: int):
    """The pairs ordered src asc, score desc, dst asc (the job's min2 tie rule), at most ``k`` a src."""
    o = np.lexsort((dst, -sc.astype(np.float64), src))
    src, dst, sc = src[o], dst[o], sc[o]
    first = np.r_[True, src[1:] != src[:-1]]
    rank = np.arange(len(src)) - np.maximum.accumulate(np.where(first, np.arange(len(src)), 0))
    keep = rank < k
    return src[keep], dst[keep], sc[keep]


def exact_neighbours(emb: np.ndarray, ids: Sequence[str], k: int) -> pd.DataFrame:
    """Top-``k`` neighbours of every row among all rows (self excluded): ``src, dst, score``
    (listing ids; :func:`knn` with the ids put back)."""
    src, dst, sc = knn(emb, k)
    ids_arr = np.asarray(ids, dtype=object)
    return pd.DataFrame({"src": ids_arr[src], "dst": ids_arr[dst], "score": sc.astype(np.float32)})


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
