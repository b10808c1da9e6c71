"""Row-wise mean F1 / precision / recall, exactly as the reference work defines it.

For each listing i: T_i is the set of posting_ids in its true group (itself included),
P_i the predicted set (itself included), and F1_i = 2|T_i & P_i| / (|T_i| + |P_i|).
Precision_i = |T_i & P_i| / |P_i|, recall_i = |T_i & P_i| / |T_i|. Report the means over
all evaluated listings.

Evaluated listings are those present both in the prediction and in the truth. True groups
are restricted to evaluated listings (a listing that was never scored cannot be found).
Vectorised with pandas: O(number of predicted pairs), no n x n matrix.

Pairwise precision / recall / F1 (:func:`pair_scores`, the entity-resolution literature's
metric) count unordered pairs instead: the true pairs are the pairs of evaluated listings in one
true group, the predicted pairs the distinct unordered pairs predicted from an evaluated listing;
precision = correct / predicted, recall = correct / true. Unlike the row-wise mean, a listing
predicted alone earns nothing here, so a catalog of singletons cannot flatter it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Scores:
    f1: float
    precision: float
    recall: float
    n: int

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "n"}


def _truth_series(truth: pd.DataFrame) -> pd.Series:
    t = truth[["posting_id", "label_group"]].dropna().drop_duplicates("posting_id")
    return pd.Series(t["label_group"].astype(str).to_numpy(), index=t["posting_id"].astype(str).to_numpy())


def row_scores(pairs: pd.DataFrame, ids: pd.Series | list, truth: pd.DataFrame) -> Scores:
    """Score predicted pairs.

    ``pairs``: columns ``posting_id, match_id``, one row per predicted (listing, other) pair;
    the listing itself is always counted as predicted and may be omitted (self pairs are ignored).
    ``ids``: every listing that was scored (so listings with no predicted pair count too).
    ``truth``: columns ``posting_id, label_group``.
    """
    group_of = _truth_series(truth)
    ids = pd.Index(pd.Series(ids, dtype=str).unique())
    ids = ids[ids.isin(group_of.index)]
    n = len(ids)
    if n == 0:
        return Scores(f1=float("nan"), precision=float("nan"), recall=float("nan"), n=0)
    g = group_of.reindex(ids)
    true_size = g.map(g.value_counts()).to_numpy(dtype=np.float64)  # |T_i| within evaluated ids

    p = pairs[["posting_id", "match_id"]].astype(str)
    p = p[(p["posting_id"] != p["match_id"]) & p["posting_id"].isin(ids)].drop_duplicates()
    pred_extra = p.groupby("posting_id").size().reindex(ids, fill_value=0).to_numpy(dtype=np.float64)
    same = group_of.reindex(p["match_id"]).to_numpy() == group_of.reindex(p["posting_id"]).to_numpy()
    hits_extra = (
        p.assign(hit=same).groupby("posting_id")["hit"].sum().reindex(ids, fill_value=0).to_numpy(dtype=np.float64)
    )
    inter = 1.0 + hits_extra  # the listing itself is in both sets
    pred_size = 1.0 + pred_extra
    f1 = 2.0 * inter / (true_size + pred_size)
    return Scores(
        f1=float(f1.mean()),
        precision=float((inter / pred_size).mean()),
        recall=float((inter / true_size).mean()),
        n=n,
    )


@dataclass(frozen=True)
class PairScores:
    """Pairwise scores over unordered pairs; ``true``, ``predicted``, ``correct`` are pair counts
    (F1, precision or recall is 0 where its denominator is 0: nothing to find or nothing found)."""

    f1: float
    precision: float
    recall: float
    true: int
    predicted: int
    correct: int

    def as_dict(self) -> dict:
        return asdict(self)


def pair_counts_scores(true: int, predicted: int, correct: int) -> PairScores:
    """Pairwise precision / recall / F1 from the three pair counts."""
    p = correct / predicted if predicted else 0.0
    r = correct / true if true else 0.0
    f1 = 2.0 * correct / (true + predicted) if true + predicted else 0.0
    return PairScores(
        f1=float(f1),
        precision=float(p),
        recall=float(r),
        true=int(true),
        predicted=int(predicted),
        correct=int(correct),
    )


def pair_scores(pairs: pd.DataFrame, ids: pd.Series | list, truth: pd.DataFrame) -> PairScores:
    """Pairwise scores of predicted pairs (same arguments as :func:`row_scores`).

    A predicted pair counts once whichever way round it was predicted (``a -> b`` and ``b -> a``
    are one pair) when its ``posting_id`` end is evaluated; it is correct when both ends are
    evaluated and share a group. True pairs: pairs of evaluated listings sharing a group.
    """
    group_of = _truth_series(truth)
    ids = pd.Index(pd.Series(ids, dtype=str).unique())
    ids = ids[ids.isin(group_of.index)]
    group_of = group_of.reindex(ids)  # a pair is correct only between evaluated listings
    sizes = group_of.value_counts().to_numpy(dtype=np.int64)
    true = int((sizes * (sizes - 1) // 2).sum())
    p = pairs[["posting_id", "match_id"]].astype(str)
    p = p[(p["posting_id"] != p["match_id"]) & p["posting_id"].isin(ids)]
    lo = np.minimum(p["posting_id"].to_numpy(), p["match_id"].to_numpy())
    hi = np.maximum(p["posting_id"].to_numpy(), p["match_id"].to_numpy())
    u = pd.DataFrame({"a": lo, "b": hi}).drop_duplicates()
    ga, gb = group_of.reindex(u["a"]).to_numpy(), group_of.reindex(u["b"]).to_numpy()
    correct = int((pd.notna(ga) & (ga == gb)).sum())
    return pair_counts_scores(true, len(u), correct)


def pairs_from_match_lists(df: pd.DataFrame, id_col: str = "posting_id", list_col: str = "match_ids") -> pd.DataFrame:
    """Explode a (posting_id, list of ids) frame into (posting_id, match_id) pairs."""
    ex = df[[id_col, list_col]].explode(list_col).dropna(subset=[list_col])
    return ex.rename(columns={id_col: "posting_id", list_col: "match_id"})[["posting_id", "match_id"]]


def pairs_from_groups(df: pd.DataFrame, id_col: str = "posting_id", group_col: str = "group_id") -> pd.DataFrame:
    """All (member, other member) pairs of each predicted group: O(sum of squared group sizes)."""
    m = df[[id_col, group_col]].merge(df[[id_col, group_col]], on=group_col, suffixes=("", "_other"))
    m = m[m[id_col] != m[f"{id_col}_other"]]
    return m.rename(columns={id_col: "posting_id", f"{id_col}_other": "match_id"})[["posting_id", "match_id"]]
