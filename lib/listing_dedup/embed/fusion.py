"""Metric-layer fusion of the dense signals, and per-signal scores of searched pairs.

The fused vector of a listing is the concatenation, in a fixed signal order, of
``sqrt(w_s) * v_s`` (``v_s`` the L2-normalised vector of signal ``s``, zeros when the
listing lacks that signal; the weights sum to 1). So for two listings having every signal,
``<fused_a, fused_b> = sum_s w_s * cos_s(a, b)``: one FAISS search scores the weighted sum
of all similarities, and the fused vector has norm 1 exactly when all signals are present.
A listing missing a signal keeps a shorter vector and can only reach the weighted sum of
the signals it has -- missing evidence is never read as agreement.

``signal_scores`` recovers each signal's cosine of a pair from the two fused vectors
(block dot product divided by the block weight).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Layout:
    """Where each signal's block lies in the fused vector, and its weight."""

    signals: tuple[str, ...]
    dims: tuple[int, ...]
    weights: tuple[float, ...]

    @classmethod
    def of(cls, dims: Mapping[str, int], weights: Mapping[str, float]) -> Layout:
        sig = tuple(s for s in dims if weights.get(s, 0) > 0)
        return cls(sig, tuple(int(dims[s]) for s in sig), tuple(float(weights[s]) for s in sig))

    @property
    def dim(self) -> int:
        return sum(self.dims)

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for s, d in zip(self.signals, self.dims, strict=True):
            out[s] = slice(start, start + d)
            start += d
        return out


def fuse_blocks(blocks: Mapping[str, Sequence], layout: Layout) -> np.ndarray:
    """float32 (n, layout.dim): ``blocks[s]`` is a sequence of vectors (or None) per row."""
    n = len(next(iter(blocks.values())))
    out = np.zeros((n, layout.dim), dtype=np.float32)
    for s, sl in layout.slices().items():
        w = np.float32(np.sqrt(layout.weights[layout.signals.index(s)]))
        for i, v in enumerate(blocks[s]):
            if v is not None and len(v):
                out[i, sl] = w * np.asarray(v, dtype=np.float32)
    return out


def signal_scores(a: np.ndarray, b: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """Per-signal cosine of row pairs (a[i], b[i]) from fused vectors; NaN where either side
    lacks the signal (all-zero block)."""
    out = {}
    for (s, sl), w in zip(layout.slices().items(), layout.weights, strict=True):
        xa, xb = a[:, sl], b[:, sl]
        dot = np.einsum("ij,ij->i", xa, xb) / w
        present = (np.abs(xa).sum(1) > 0) & (np.abs(xb).sum(1) > 0)
        out[s] = np.where(present, dot, np.nan).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------
# Spark layer


def fuse(df, columns: Mapping[str, str], layout: Layout, out_col: str = "emb", transforms=None):
    """``df`` with ``out_col`` = fused vector of the signal columns (``columns[s]`` per signal).

    ``transforms[s]`` (optional) turns the batch of column ``columns[s]`` (a pandas Series) into
    that signal's vectors (float32, one row each) inside the same Python pass, e.g. the lexical
    projection of cached n-gram counts: the vectors are then never sent back to the JVM on their
    own. One Arrow pass (``mapInArrow``): the vector columns are read from and the fused vectors
    written to flat float buffers, not one numpy array a row (on 31.8k listings of 1,408 floats the
    per-row conversion alone cost ~2 s); the floats are :func:`fuse_blocks`'."""
    from pyspark.sql import types as T

    names = [columns[s] for s in layout.signals]
    transforms = dict(transforms or {})
    slices = layout.slices()
    weights = {s: np.float32(np.sqrt(w)) for s, w in zip(layout.signals, layout.weights, strict=True)}
    keep = [f.name for f in df.schema.fields if f.name != out_col]
    schema = T.StructType([df.schema[c] for c in keep] + [T.StructField(out_col, T.ArrayType(T.FloatType()))])

    def _fuse(batches):
        import pyarrow as pa

        for rb in batches:
            n = rb.num_rows
            out = np.zeros((n, layout.dim), dtype=np.float32)
            for s, name in zip(layout.signals, names, strict=True):
                col = rb.column(name)
                sl = slices[s]
                if s in transforms:
                    vecs = np.asarray(transforms[s](col.to_pandas()), dtype=np.float32).reshape(n, -1)
                    out[:, sl] = weights[s] * vecs
                else:
                    out[:, sl] = _scaled_block(col, sl.stop - sl.start, weights[s], name)
            offsets = pa.array(np.arange(0, (n + 1) * layout.dim, layout.dim, dtype=np.int32))
            emb = pa.ListArray.from_arrays(offsets, pa.array(out.reshape(-1)))
            yield pa.RecordBatch.from_arrays([rb.column(c) for c in keep] + [emb], names=[*keep, out_col])

    return df.mapInArrow(_fuse, schema)


def _scaled_block(col, dim: int, weight, name: str) -> np.ndarray:
    """``weight * v`` for each row's vector of an Arrow list column; zeros where the row has none
    (null or empty)."""
    n = len(col)
    block = np.zeros((n, dim), dtype=np.float32)
    lengths = col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(lengths > 0)
    if len(rows) == 0:
        return block
    if not (lengths[rows] == dim).all():
        bad = int(lengths[rows][lengths[rows] != dim][0])
        raise ValueError(f"column {name}: a vector of {bad} values where the layout expects {dim}")
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    block[rows] = weight * flat.reshape(len(rows), dim)
    return block


def candidate_scores(pairs, fused, layout: Layout, phash_pairs=None, rerank_scores=None):
    """``pairs`` (src, dst, score) joined with the fused vectors of both ends: adds
    ``signal_scores`` map<string,float> (cosine per dense signal present on both sides,
    ``phash`` = 1 - bits/64 when the pair is within the pHash radius, and ``rerank`` = the
    re-ranker's probability when ``rerank_scores`` (src, dst, score) is given)."""
    from pyspark.sql import functions as F

    a = fused.select(F.col("posting_id").alias("src"), F.col("emb").alias("_ea"))
    b = fused.select(F.col("posting_id").alias("dst"), F.col("emb").alias("_eb"))
    joined = pairs.join(a, "src").join(b, "dst")
    if phash_pairs is not None:
        joined = joined.join(phash_pairs.select("src", "dst", F.col("score").alias("_ph")), ["src", "dst"], "left")
    else:
        joined = joined.withColumn("_ph", F.lit(None).cast("float"))
    if rerank_scores is not None:
        joined = joined.join(rerank_scores.select("src", "dst", F.col("score").alias("_rr")), ["src", "dst"], "left")
    else:
        joined = joined.withColumn("_rr", F.lit(None).cast("float"))

    def _scores(batches):
        for pdf in batches:
            if pdf.empty:
                continue
            sc = signal_scores(np.stack(pdf["_ea"].to_numpy()), np.stack(pdf["_eb"].to_numpy()), layout)
            maps = []
            for i in range(len(pdf)):
                m = {s: float(v[i]) for s, v in sc.items() if not np.isnan(v[i])}
                ph = pdf["_ph"].iat[i]
                if ph is not None and not pd.isna(ph):
                    m["phash"] = float(ph)
                rr = pdf["_rr"].iat[i]
                if rr is not None and not pd.isna(rr):
                    m["rerank"] = float(rr)
                maps.append(m)
            yield pd.DataFrame(
                {
                    "posting_id": pdf["src"],
                    "candidate_id": pdf["dst"],
                    "score": pdf["score"].astype(np.float32),
                    "signal_scores": maps,
                }
            )

    return joined.mapInPandas(
        _scores, "posting_id string, candidate_id string, score float, signal_scores map<string,float>"
    )
