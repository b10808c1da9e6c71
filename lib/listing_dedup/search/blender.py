"""Iterative neighbourhood blending (INB).

One round replaces every embedding by ``normalize(E_i + sum_j s_ij * E_j)`` over the
neighbours j of i with ``s_ij >= threshold``; the caller then searches again. Listings
without such neighbours keep their embedding. On Spark this is a join of the pairs above
the threshold with the embeddings, one shuffle by listing, and a weighted sum computed
over key-sorted partitions in vectorised batches (no per-listing Python call): nothing goes
to the driver. Bytes shuffled: ``n * (1 + k_t) * d * 4`` with ``k_t`` the mean number of
neighbours above the threshold (at most ``k``; docs/scale.md has the measured figure).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def blend_numpy(emb: np.ndarray, src: np.ndarray, dst: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Reference implementation over row indices: one INB round (pairs already thresholded)."""
    out = emb.astype(np.float64).copy()
    np.add.at(out, src, score[:, None].astype(np.float64) * emb[dst].astype(np.float64))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (out / norms).astype(np.float32)


def _weighted_sums(batches):
    """mapInPandas over a partition sorted by ``posting_id``: rows ``posting_id, w, emb`` of one
    listing are contiguous; the last listing of a batch is carried to the next. Memory: one
    batch plus one listing's rows (at most k + 1)."""
    carry = None
    for pdf in batches:
        if carry is not None:
            pdf = pd.concat([carry, pdf], ignore_index=True)
        if not len(pdf):
            continue
        ids = pdf["posting_id"].to_numpy(dtype=object)
        last_start = int(np.flatnonzero(ids != ids[-1])[-1]) + 1 if (ids != ids[-1]).any() else 0
        carry = pdf.iloc[last_start:].reset_index(drop=True)
        done = pdf.iloc[:last_start]
        if len(done):
            yield _sums(done)
    if carry is not None and len(carry):
        yield _sums(carry)


def _sums(pdf: pd.DataFrame) -> pd.DataFrame:
    ids = pdf["posting_id"].to_numpy(dtype=object)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    vecs = np.stack(pdf["emb"].to_numpy()).astype(np.float64)
    v = np.add.reduceat(pdf["w"].to_numpy(dtype=np.float64)[:, None] * vecs, starts, axis=0)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    v = np.where(norms > 0, v / np.where(norms > 0, norms, 1.0), v).astype(np.float32)
    return pd.DataFrame({"posting_id": ids[starts], "emb": list(v)})


def blend(emb_df, neighbours_df, threshold: float, *, only=None):
    """One INB round on Spark.

    ``emb_df``: posting_id, emb (array<float>, normalised). ``neighbours_df``: src, dst, score
    (each listing's neighbours, self excluded). Returns posting_id, emb (new, normalised).
    ``only`` (a DataFrame with ``posting_id``): blend those listings alone (an incremental
    night's, whose neighbourhood changed); their neighbours' vectors still come from ``emb_df``.
    """
    from pyspark.sql import functions as F

    pairs = neighbours_df.where(F.col("score") >= F.lit(float(threshold))).select(
        F.col("src").alias("posting_id"), F.col("dst"), F.col("score").cast("double").alias("w")
    )
    own_emb = emb_df if only is None else emb_df.join(only.select("posting_id"), "posting_id")
    if only is not None:
        pairs = pairs.join(only.select("posting_id"), "posting_id")
    nbr_vecs = pairs.join(emb_df.select(F.col("posting_id").alias("dst"), "emb"), on="dst").select(
        "posting_id", "dst", "w", "emb"
    )
    own = own_emb.select("posting_id", F.col("posting_id").alias("dst"), F.lit(1.0).alias("w"), "emb")
    # a listing's rows in dst order, not in the order the shuffle delivered them: the float64 sum
    # (and so, rarely, its float32 rounding) then depends on the rows alone
    return (
        own.unionByName(nbr_vecs)
        .repartition("posting_id")
        .sortWithinPartitions("posting_id", "dst")
        .drop("dst")
        .mapInPandas(_weighted_sums, schema="posting_id string, emb array<float>")
    )
