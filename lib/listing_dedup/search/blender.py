"""Iterative neighbourhood blending (INB).

One round replaces every embedding by ``normalize(E_i + sum_j s_ij * E_j)`` over the
neighbours j of i with ``s_ij >= threshold``; the caller then searches again. Listings
without such neighbours keep their embedding. On Spark this is a join of the neighbour
pairs with the embeddings and a grouped weighted sum: nothing goes to the driver.
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


def _weighted_sum(pdf: pd.DataFrame) -> pd.DataFrame:
    vecs = np.stack(pdf["emb"].to_numpy()).astype(np.float64)
    v = (pdf["w"].to_numpy(dtype=np.float64)[:, None] * vecs).sum(axis=0)
    norm = np.linalg.norm(v)
    if norm > 0:
        v = v / norm
    return pd.DataFrame({"posting_id": [pdf["posting_id"].iloc[0]], "emb": [v.astype(np.float32)]})


def blend(emb_df, neighbours_df, threshold: float):
    """One INB round on Spark.

    ``emb_df``: posting_id, emb (array<float>, normalised). ``neighbours_df``: src, dst, score
    (each listing's neighbours, self excluded). Returns posting_id, emb (new, normalised).
    """
    from pyspark.sql import functions as F

    pairs = neighbours_df.where(F.col("score") >= F.lit(float(threshold))).select(
        F.col("src").alias("posting_id"), F.col("dst"), F.col("score").cast("double").alias("w")
    )
    nbr_vecs = pairs.join(emb_df.select(F.col("posting_id").alias("dst"), "emb"), on="dst").select(
        "posting_id", "w", "emb"
    )
    own = emb_df.select("posting_id", F.lit(1.0).alias("w"), "emb")
    return (
        own.unionByName(nbr_vecs)
        .groupBy("posting_id")
        .applyInPandas(_weighted_sum, schema="posting_id string, emb array<float>")
    )
