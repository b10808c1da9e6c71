"""pHash neighbours: every pair of listings whose 64-bit perceptual hashes differ in at most
``max_bits`` bits, found without comparing all pairs.

Multi-index hashing (Norouzi et al.): cut the 64 bits into ``max_bits + 1`` bands. Two hashes
within ``max_bits`` bits of each other agree exactly on at least one band (pigeonhole), so
grouping listings by (band number, band value) puts every qualifying pair in a common block
and the search is exact. Inside a block a FAISS binary index (``IndexBinaryFlat``) range
search keeps the pairs within ``max_bits``. A pair found in several bands is kept once.

Placeholder images (a shop's logo, a blank picture) give thousands of listings the same
hash; such a hash says nothing about the product. A block larger than ``max_bucket`` is
skipped and the listings in it are counted, never silently merged.

Output rows are directed ``src, dst, bits, score`` with ``score = 1 - bits / 64`` (so the
signal lives on the same "higher is closer" scale as cosines), both directions present.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from listing_dedup.frames import empty_pairs
from listing_dedup.ingest.phash import HASH_BITS


def band_edges(max_bits: int) -> list[tuple[int, int]]:
    """``max_bits + 1`` contiguous bit ranges (start, stop) covering the 64 bits."""
    n = max_bits + 1
    cuts = np.linspace(0, HASH_BITS, n + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def hash_ints(hexes: pd.Series) -> np.ndarray:
    """uint64 value of each 16-hex hash (callers pass validated hashes)."""
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


def band_keys(values: np.ndarray, max_bits: int) -> np.ndarray:
    """int64 (n, bands): band value of each hash, tagged with its band number in the top bits."""
    out = np.empty((len(values), max_bits + 1), dtype=np.int64)
    for j, (a, b) in enumerate(band_edges(max_bits)):
        width = b - a
        shift = np.uint64(HASH_BITS - b)  # bit 0 = most significant hex digit, like hex_to_bits
        v = (values >> shift) & np.uint64((1 << width) - 1)
        out[:, j] = (np.int64(j) << np.int64(56)) | v.astype(np.int64)
    return out


def _to_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(">u8").view(np.uint8).reshape(-1, 8)


def block_pairs(ids: np.ndarray, values: np.ndarray, max_bits: int) -> pd.DataFrame:
    """All directed pairs within ``max_bits`` inside one block (FAISS binary range search)."""
    import faiss

    n = len(ids)
    if n < 2:
        return pd.DataFrame({"src": [], "dst": [], "bits": []})
    codes = np.ascontiguousarray(_to_bytes(values))
    index = faiss.IndexBinaryFlat(HASH_BITS)
    index.add(codes)
    lims, dist, labels = index.range_search(codes, max_bits + 1)  # radius is exclusive
    lims = lims.astype(np.int64)
    labels = labels.astype(np.int64)
    src = np.repeat(np.arange(n), np.diff(lims))
    keep = labels != src
    return pd.DataFrame({"src": ids[src[keep]], "dst": ids[labels[keep]], "bits": dist[keep].astype(np.int32)})


def phash_pairs_pandas(ids, hexes, max_bits: int, max_bucket: int) -> tuple[pd.DataFrame, int]:
    """Single-machine version: (pairs ``src, dst, bits, score``, listings in skipped blocks)."""
    ids = np.asarray(ids, dtype=object)
    values = hash_ints(pd.Series(hexes))
    keys = band_keys(values, max_bits)
    parts, skipped = [], set()
    for j in range(keys.shape[1]):
        order = np.argsort(keys[:, j], kind="stable")
        k = keys[order, j]
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        stops = np.r_[starts[1:], len(k)]
        for a, b in zip(starts, stops, strict=True):
            if b - a < 2:
                continue
            rows = order[a:b]
            if b - a > max_bucket:
                skipped.update(ids[rows].tolist())
                continue
            parts.append(block_pairs(ids[rows], values[rows], max_bits))
    return _finish(parts), len(skipped)


def _finish(parts: list[pd.DataFrame]) -> pd.DataFrame:
    if not parts:
        return empty_pairs(bits=True)
    out = pd.concat(parts, ignore_index=True).drop_duplicates(["src", "dst"])
    out["bits"] = out["bits"].astype(np.int32)
    out["score"] = (1.0 - out["bits"] / HASH_BITS).astype(np.float32)
    return out.sort_values(["src", "bits", "dst"], ignore_index=True)


def phash_pairs(df, max_bits: int, max_bucket: int):
    """Spark: ``df`` has ``posting_id`` and a valid ``phash`` (16 hex, nulls ignored).
    Returns (pairs DataFrame ``src, dst, bits, score``, DataFrame of skipped ``posting_id``)."""
    from pyspark.sql import functions as F

    n_bands = max_bits + 1

    def _keys(batches):
        for pdf in batches:
            keys = band_keys(hash_ints(pdf["phash"]), max_bits)
            yield pd.DataFrame(
                {
                    "posting_id": np.repeat(pdf["posting_id"].to_numpy(), n_bands),
                    "phash": np.repeat(pdf["phash"].to_numpy(), n_bands),
                    "band_key": keys.reshape(-1),
                }
            )

    keyed = (
        df.where(F.col("phash").isNotNull())
        .select("posting_id", "phash")
        .mapInPandas(_keys, "posting_id string, phash string, band_key long")
    )
    sizes = keyed.groupBy("band_key").count()
    big = sizes.where(F.col("count") > max_bucket).select("band_key")
    skipped = keyed.join(F.broadcast(big), "band_key").select("posting_id").distinct()
    small = sizes.where((F.col("count") >= 2) & (F.col("count") <= max_bucket)).select("band_key")

    def _block(pdf: pd.DataFrame) -> pd.DataFrame:
        found = block_pairs(pdf["posting_id"].to_numpy(dtype=object), hash_ints(pdf["phash"]), max_bits)
        return found.astype({"bits": np.int32})

    pairs = (
        keyed.join(small, "band_key")
        .groupBy("band_key")
        .applyInPandas(_block, "src string, dst string, bits int")
        .dropDuplicates(["src", "dst"])
        .withColumn("score", (F.lit(1.0) - F.col("bits") / F.lit(HASH_BITS)).cast("float"))
    )
    return pairs, skipped
