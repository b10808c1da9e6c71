"""Held-out quality of an embedding: exact kNN, the job's edge rules, row-wise F1.

:func:`grid_scores` scores a whole (threshold, min2) grid at once over integer-coded
neighbour arrays (milliseconds per setting); it applies exactly the rules of
:func:`listing_dedup.graph.edges.select_edges_pandas` and the metric of
:func:`listing_dedup.quality.metrics.row_scores`, which :func:`listing_dedup.quality.tuning.sweep` runs
(about a second per setting) and which the tests compare it with.

Per epoch the trainer calls :func:`sweep_best` with the coarse grid; after training,
:func:`tune` refines the threshold around the best one and tries one INB round at each
candidate threshold, the way the dedup job would run it (``inb.thresholds`` then
``match.threshold`` / ``min2``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from listing_dedup.config import TrainValidateConf
from listing_dedup.quality.tune import PairScorer, fast_edges
from listing_dedup.quality.tuning import exact_neighbours
from listing_dedup.search.blender import blend_numpy


def grid_scores(
    nbrs: pd.DataFrame,
    ids: Sequence[str],
    labels: Sequence[str],
    thresholds: Sequence[float],
    min2_thresholds: Sequence[float | None] = (None,),
) -> pd.DataFrame:
    """Row-wise F1/precision/recall of the job's edge rules (threshold, optional min2,
    symmetrise) for every (threshold, min2) pair; same output as
    :func:`listing_dedup.quality.tuning.sweep` for unique ``ids`` that all have a label."""
    ids_s = pd.Index(pd.Series(list(ids), dtype=str))
    # codes in sorted id order: "smallest dst wins a min2 tie" is the smallest code
    order = np.argsort(ids_s.to_numpy().astype(str), kind="stable")
    code = np.empty(len(ids_s), dtype=np.int64)
    code[order] = np.arange(len(ids_s))
    pos = pd.Series(code, index=ids_s)
    n = len(ids_s)
    grp = np.empty(n, dtype=np.int64)
    grp[code] = pd.factorize(pd.Series(list(labels), dtype=str))[0]

    nb = nbrs[["src", "dst", "score"]].dropna()
    nb = nb[nb["src"].isin(ids_s) & nb["dst"].isin(ids_s) & (nb["src"] != nb["dst"])]
    src = pos[nb["src"].astype(str)].to_numpy()
    dst = pos[nb["dst"].astype(str)].to_numpy()
    sc = nb["score"].to_numpy().astype(np.float32).astype(np.float64)
    # rows ordered by src, score desc, dst: each src's first row is its nearest neighbour
    # (ties: smallest dst), as :func:`listing_dedup.quality.tune.fast_edges` expects
    o = np.lexsort((dst, -sc, src))
    src, dst, sc = src[o], dst[o], sc[o]
    scorer = PairScorer(grp)
    rows = []
    for t in thresholds:
        for m in min2_thresholds:
            if m is not None and m > t:
                continue
            f1, precision, recall = scorer.score(*fast_edges(src, dst, sc, t, m))
            rows.append({"threshold": t, "min2_threshold": m, "f1": f1, "precision": precision, "recall": recall})
    return pd.DataFrame(rows).sort_values("f1", ascending=False, ignore_index=True)


def sweep_best(
    emb: np.ndarray,
    ids: np.ndarray,
    labels: np.ndarray,
    k: int,
    thresholds: Sequence[float],
    min2_thresholds: Sequence[float | None],
    nbrs: pd.DataFrame | None = None,
) -> dict:
    """Best row of the (threshold, min2) sweep: f1, precision, recall, threshold, min2_threshold."""
    if nbrs is None:
        nbrs = exact_neighbours(emb, ids, k)
    res = grid_scores(nbrs, ids, labels, thresholds, min2_thresholds)
    best = res.iloc[0].to_dict()
    m2 = best["min2_threshold"]
    best["min2_threshold"] = None if m2 is None or (isinstance(m2, float) and np.isnan(m2)) else float(m2)
    return {k_: (float(v) if isinstance(v, (np.floating, float)) else v) for k_, v in best.items()}


def inb_round(emb: np.ndarray, ids: np.ndarray, nbrs: pd.DataFrame, threshold: float) -> np.ndarray:
    """One INB round (numpy reference of the job's Spark blend) over exact neighbours."""
    pos = pd.Series(np.arange(len(ids)), index=pd.Index(ids))
    keep = nbrs[nbrs["score"].astype(np.float64) >= threshold]
    return blend_numpy(emb, pos[keep["src"]].to_numpy(), pos[keep["dst"]].to_numpy(), keep["score"].to_numpy())


def _grid(lo: float, hi: float, step: float) -> list[float]:
    n = int(round((hi - lo) / step))
    return [round(lo + i * step, 6) for i in range(n + 1)]


def tune(emb: np.ndarray, ids: np.ndarray, labels: np.ndarray, cfg: TrainValidateConf) -> dict:
    """Pick INB (none or one round), threshold and min2 for the held-out rows.

    Returns the best setting (``inb_threshold`` None = no round) and every candidate tried."""
    min2s: list[float | None] = [None, *cfg.min2_thresholds]
    nbrs0 = exact_neighbours(emb, ids, cfg.k)
    tried = []
    for inb in [None, *cfg.inb_thresholds]:
        if inb is None:
            e, nbrs = emb, nbrs0
        else:
            e = inb_round(emb, ids, nbrs0, inb)
            nbrs = exact_neighbours(e, ids, cfg.k)
        coarse = sweep_best(e, ids, labels, cfg.k, cfg.thresholds, min2s, nbrs=nbrs)
        t0 = coarse["threshold"]
        fine = _grid(max(-1.0, t0 - 4 * cfg.final_step), min(1.0, t0 + 4 * cfg.final_step), cfg.final_step)
        best = sweep_best(e, ids, labels, cfg.k, fine, min2s, nbrs=nbrs)
        best["inb_threshold"] = inb
        tried.append(best)
    best = max(tried, key=lambda r: r["f1"])
    return {"best": best, "tried": tried}
