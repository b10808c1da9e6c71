"""pHash neighbours: every pair of listings whose 64-bit perceptual hashes differ in at most
``max_bits`` bits, found without comparing all pairs, exact, at any catalog size.

Multi-index hashing (Norouzi et al.) with bit-flip keys. The 64 bits are cut into ``B``
bands. If two hashes differ in at most ``max_bits`` bits, some band differs in at most
``r = max_bits // B`` bits (pigeonhole). Each listing emits, per band, the band's value and,
when ``r`` > 0, the values one flip away (``radius`` 1): two band values within 2 bits share
a key (the value itself, the other's value, or the midpoint of the two flips), so every
qualifying pair meets in at least one block ``(band, key)``. Inside a block the full 64-bit
distance is checked, so the result is exactly the pairs within ``max_bits``; each pair is
emitted once, by the block whose key is the smallest key the two hashes share (computed from
the two hashes alone), so no shuffle is needed to deduplicate.

The banding is chosen from the catalog size (:func:`choose_banding`): few narrow bands (the
old scheme: ``max_bits + 1`` bands, no flips, 9 keys a listing at ``max_bits`` 8) while the
blocks stay small, wider bands with flips (68-70 keys a listing) once the narrow bands'
blocks would grow past ``max_bucket / 8`` listings on uniform hashes. Past about 130k
listings the narrow bands put more than ``max_bucket`` listings in every block and every
block was skipped; wide bands keep the expected block at 5 listings at 1M and 55 at 10M
(``docs/scale.md``).

Placeholder images (a shop's logo, a blank picture) give thousands of listings the same
hash; such a hash says nothing about the product. A block larger than ``max_bucket`` is
skipped and its listings are counted (summary and ``runs`` table), never silently merged.

Output rows are directed ``src, dst, bits, score`` with ``score = 1 - bits / 64`` (so the
signal lives on the same "higher is closer" scale as cosines), both directions present.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from listing_dedup.frames import empty_pairs
from listing_dedup.ingest.phash import HASH_BITS

log = logging.getLogger(__name__)

SKEW_ROOM = 8  # choose bands whose uniform-hash block is <= max_bucket / 8: room for real skew
_TAG_SHIFT = np.int64(56)  # band number in the top bits of a key (bands are <= 32 bits wide)


@dataclass(frozen=True)
class Banding:
    """``n_bands`` contiguous bands; ``radius`` flips (0 or 1) emitted per band value."""

    n_bands: int
    radius: int

    @property
    def edges(self) -> list[tuple[int, int]]:
        return band_edges_n(self.n_bands)

    @property
    def min_width(self) -> int:
        return min(b - a for a, b in self.edges)

    @property
    def keys_per_listing(self) -> int:
        return sum(1 + self.radius * (b - a) for a, b in self.edges)

    def expected_block(self, n_rows: int) -> float:
        """Listings a block holds on uniform hashes (the narrowest band's blocks)."""
        return n_rows * (1 + self.radius * self.min_width) / 2.0**self.min_width


def band_edges_n(n_bands: int) -> list[tuple[int, int]]:
    """``n_bands`` contiguous bit ranges (start, stop) covering the 64 bits, widths within 1."""
    cuts = np.linspace(0, HASH_BITS, n_bands + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def band_edges(max_bits: int) -> list[tuple[int, int]]:
    """The narrow scheme's ``max_bits + 1`` bands."""
    return band_edges_n(max_bits + 1)


def choose_banding(max_bits: int, n_rows: int, max_bucket: int) -> Banding:
    """The banding with the fewest keys a listing whose uniform-hash block stays within
    ``max_bucket / SKEW_ROOM`` listings at ``n_rows``; if none does, the smallest blocks.

    Candidates: ``B`` bands (2..64, each at most 32 bits wide) with ``max_bits // B <= 2``
    (so radius 1 flips on both sides cover the band distance); radius 0 when the quotient is 0."""
    target = max(2.0, max_bucket / SKEW_ROOM)
    fits, rest = [], []
    for n_bands in range(2, HASH_BITS + 1):
        r = max_bits // n_bands
        if r > 2:
            continue
        b = Banding(n_bands, (r + 1) // 2)
        if max(e - s for s, e in b.edges) > 32:
            continue
        block = b.expected_block(n_rows)
        (fits if block <= target else rest).append((b.keys_per_listing, -b.min_width, block, b))
    if fits:
        return min(fits, key=lambda t: t[:2])[3]
    return min(rest, key=lambda t: (t[2], t[0]))[3]


def hash_ints(hexes: pd.Series) -> np.ndarray:
    """uint64 value of each 16-hex hash (callers pass validated hashes)."""
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


def _band_values(values: np.ndarray, a: int, b: int) -> np.ndarray:
    shift = np.uint64(HASH_BITS - b)  # bit 0 = most significant hex digit, like hex_to_bits
    return (values >> shift) & np.uint64((1 << (b - a)) - 1)


def band_keys(values: np.ndarray, banding: Banding) -> np.ndarray:
    """int64 (n, keys_per_listing): each hash's band values (and their one-bit flips), tagged
    with the band number in the top bits."""
    cols = []
    for j, (a, b) in enumerate(banding.edges):
        v = _band_values(values, a, b).astype(np.int64)
        tag = np.int64(j) << _TAG_SHIFT
        cols.append(tag | v)
        if banding.radius:
            flips = np.int64(1) << np.arange(b - a, dtype=np.int64)
            cols.extend((tag | (v[:, None] ^ flips[None, :])).T)
    return np.stack(cols, axis=1) if cols else np.empty((len(values), 0), dtype=np.int64)


def _high_bit(v: np.ndarray) -> np.ndarray:
    """The highest set bit of each value (0 for 0); values fit in 32 bits."""
    s = v.copy()
    for k in (1, 2, 4, 8, 16):
        s |= s >> np.uint64(k)
    return s ^ (s >> np.uint64(1))


def smallest_shared_key(hi: np.ndarray, hj: np.ndarray, banding: Banding) -> np.ndarray:
    """For pairs of hashes, the smallest key both emit (int64; max int64 when none)."""
    none = np.iinfo(np.int64).max
    best = np.full(len(hi), none, dtype=np.int64)
    for j, (a, b) in enumerate(banding.edges):
        va, vb = _band_values(hi, a, b), _band_values(hj, a, b)
        x = va ^ vb
        d = np.bitwise_count(x)
        if banding.radius == 0:
            key = np.where(d == 0, va, np.uint64(none))
        else:
            top = _high_bit(x)  # d == 2: x holds the two differing bits, top and low
            low = x ^ top
            key = np.where(
                d == 0,
                va ^ _high_bit(va),  # va itself, or va with its top bit cleared (the smallest flip)
                np.where(
                    d == 1,
                    np.minimum(va, vb),
                    np.where(d == 2, np.minimum(va ^ top, va ^ low), np.uint64(none)),
                ),
            )
        tagged = np.where(key == np.uint64(none), none, (np.int64(j) << _TAG_SHIFT) | key.astype(np.int64))
        best = np.minimum(best, tagged)
    return best


def _directed(ids: np.ndarray, i: np.ndarray, j: np.ndarray, bits: np.ndarray) -> pd.DataFrame:
    a, b = ids[i], ids[j]
    swap = a > b
    return pd.DataFrame({"src": np.where(swap, b, a), "dst": np.where(swap, a, b), "bits": bits.astype(np.int32)})


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and length of each run of equal values in a sorted key array."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.empty(0, dtype=np.int64)
    return starts, np.diff(np.r_[starts, len(keys)])


def _pairs_in_runs(
    keys: np.ndarray, values: np.ndarray, max_bits: int, banding: Banding | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (row i, row j, bits) within ``max_bits`` inside each run of equal ``keys``
    (sorted), vectorised over the runs: pass ``d`` pairs every row with the row ``d`` after it
    in the same run. With ``banding``, only pairs whose smallest shared key is the run's key."""
    starts, sizes = _runs(keys)
    size = np.repeat(sizes, sizes)
    pos = np.arange(len(keys)) - np.repeat(starts, sizes)
    out_i, out_j, out_b = [], [], []
    live = np.flatnonzero(size >= 2)
    for d in range(1, int(sizes.max(initial=1))):
        live = live[pos[live] + d < size[live]]
        if not len(live):
            break
        i, j = live, live + d
        bits = np.bitwise_count(values[i] ^ values[j])
        ok = bits <= max_bits
        i, j, bits = i[ok], j[ok], bits[ok]
        if banding is not None and len(i):
            own = smallest_shared_key(values[i], values[j], banding) == keys[i]
            i, j, bits = i[own], j[own], bits[own]
        out_i.append(i)
        out_j.append(j)
        out_b.append(bits.astype(np.int32))
    if not out_i:
        e = np.empty(0, dtype=np.int64)
        return e, e, np.empty(0, dtype=np.int32)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_b)


def _sorted_keys(values: np.ndarray, banding: Banding) -> tuple[np.ndarray, np.ndarray]:
    """(keys sorted, listing row of each) for every key the listings emit."""
    keys = band_keys(values, banding)
    flat = keys.reshape(-1)
    rows = np.repeat(np.arange(keys.shape[0]), keys.shape[1])
    order = np.argsort(flat, kind="stable")
    return flat[order], rows[order]


def pairs_in_sorted_blocks(
    keys: np.ndarray, rows: np.ndarray, values: np.ndarray, max_bits: int, max_bucket: int, banding: Banding
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Over complete blocks (``keys`` sorted, ``rows`` the listing of each key, ``values`` the
    listings' hashes): (i, j, bits) of each pair, once, and the rows in skipped blocks."""
    starts, sizes = _runs(keys)
    big = np.repeat(sizes > max_bucket, sizes)
    skipped = np.unique(rows[big])
    k, r = keys[~big], rows[~big]
    i, j, bits = _pairs_in_runs(k, values[r], max_bits, banding)
    return r[i], r[j], bits, skipped


def phash_pairs_pandas(ids, hexes, max_bits: int, max_bucket: int, banding: Banding | None = None):
    """Single-machine version: (pairs ``src, dst, bits, score``, listings in skipped blocks).
    ``banding`` overrides :func:`choose_banding` (tests)."""
    ids = np.asarray(ids, dtype=object)
    values = hash_ints(pd.Series(hexes))
    banding = banding or choose_banding(max_bits, len(ids), max_bucket)
    keys, rows = _sorted_keys(values, banding)
    i, j, bits, skipped = pairs_in_sorted_blocks(keys, rows, values, max_bits, max_bucket, banding)
    return _finish([_directed(ids, i, j, bits)]), len(skipped)


def phash_pairs_delta(
    ids,
    hexes,
    inserted,
    prev_pairs: pd.DataFrame,
    removed,
    removed_hexes,
    max_bits: int,
    max_bucket: int,
    banding: Banding,
) -> tuple[pd.DataFrame, int]:
    """Tonight's pHash pairs from yesterday's and the night's delta, equal to
    :func:`phash_pairs_pandas` of tonight's listings with the same ``banding`` (the pairs within
    ``max_bits`` whose owning block, the one of their smallest shared key, is not skipped).

    ``ids`` / ``hexes``: tonight's listings with a hash; ``inserted``: those of them whose hash
    is new tonight (added, changed); ``prev_pairs``: yesterday's pairs ``src, dst, bits``
    (each once, ``src < dst``); ``removed``: the ids whose old version left (deleted, changed),
    ``removed_hexes`` their old hashes (those that had one). A block changes only when a key of
    an inserted hash or of a removed one falls in it (the set ``K``): yesterday's pairs owned by
    another block, between listings that stay, are kept as they are; the blocks of ``K`` are
    searched again whole (so a block that grew past ``max_bucket``, or fell under it, gets
    tonight's verdict). The pairs searched: those of ``|K|`` blocks, not the catalog's.

    Returns (pairs ``src, dst, bits, score`` both directions, sorted as :func:`_finish`, the
    number of listings in skipped blocks: every block's size is counted, a sort of the keys)."""
    ids = np.asarray(ids, dtype=object)
    values = hash_ints(pd.Series(hexes, dtype=object))
    keys = band_keys(values, banding)
    # a hash lookup (np.isin sorts the object ids: Python comparisons, seconds at 100k)
    ins = pd.Series(ids, dtype=object).isin(set(inserted)).to_numpy(dtype=bool)
    old_keys = band_keys(hash_ints(pd.Series(list(removed_hexes), dtype=object)), banding)
    touched = np.unique(np.concatenate([keys[ins].reshape(-1), old_keys.reshape(-1)]))
    flat = keys.reshape(-1)
    rows = np.repeat(np.arange(keys.shape[0]), keys.shape[1])
    order = np.argsort(flat, kind="stable")
    flat, rows = flat[order], rows[order]
    starts, sizes = _runs(flat)
    skipped = np.unique(rows[np.repeat(sizes > max_bucket, sizes)])
    in_k = np.isin(flat, touched)
    i, j, bits, _ = pairs_in_sorted_blocks(flat[in_k], rows[in_k], values, max_bits, max_bucket, banding)
    fresh = _directed(ids, i, j, bits)
    gone = set(removed)
    prev = prev_pairs[["src", "dst", "bits"]]
    prev = prev[~prev["src"].isin(gone) & ~prev["dst"].isin(gone)]
    where = pd.Series(np.arange(len(ids)), index=pd.Index(ids))
    a, b = where.reindex(prev["src"]).to_numpy(), where.reindex(prev["dst"]).to_numpy()
    alive = ~(np.isnan(a) | np.isnan(b)) if len(prev) else np.zeros(0, dtype=bool)
    prev, a, b = prev[alive], a[alive].astype(np.int64), b[alive].astype(np.int64)
    owner = smallest_shared_key(values[a], values[b], banding)
    prev = prev[~np.isin(owner, touched)]
    return _finish([prev, fresh]), len(skipped)


def _both_directions(one: pd.DataFrame) -> pd.DataFrame:
    rev = one.rename(columns={"src": "dst", "dst": "src"})[["src", "dst", "bits"]]
    return pd.concat([one, rev], ignore_index=True)


def _finish(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return empty_pairs(bits=True)
    out = _both_directions(pd.concat(parts, ignore_index=True))
    out["bits"] = out["bits"].astype(np.int32)
    out["score"] = (1.0 - out["bits"] / HASH_BITS).astype(np.float32)
    return out.sort_values(["src", "bits", "dst"], ignore_index=True)


def _block_stream(batches, max_bits: int, max_bucket: int, banding: Banding):
    """mapInPandas over a partition sorted by ``band_key``: blocks may straddle Arrow batches,
    so the last (maybe incomplete) block of a batch is carried to the next. A block past
    ``max_bucket`` stops being held: its listings stream out as skipped. Memory: one batch
    plus one block of at most ``max_bucket`` rows."""
    carry = None  # rows of the open block
    over_key, over_seen = None, set()  # the open block once it is over max_bucket

    def emit(pdf: pd.DataFrame, complete_to: int):
        part = pdf.iloc[:complete_to]
        if not len(part):
            return None
        keys = part["band_key"].to_numpy(dtype=np.int64)
        values = part["h"].to_numpy(dtype=np.int64).view(np.uint64)
        ids = part["posting_id"].to_numpy(dtype=object)
        rows = np.arange(len(part))
        i, j, bits, skipped = pairs_in_sorted_blocks(keys, rows, values, max_bits, max_bucket, banding)
        pairs = _directed(ids, i, j, bits).assign(skipped=None)
        sk = pd.DataFrame({"src": ids[skipped], "dst": None, "bits": 0, "skipped": ids[skipped]})
        return pd.concat([pairs, sk], ignore_index=True)

    for pdf in batches:
        if not len(pdf):
            continue
        if over_key is not None:  # still inside an oversized block: stream its ids out
            same = pdf["band_key"].to_numpy() == over_key
            n_same = int(np.argmin(same)) if not same.all() else len(pdf)
            new = [x for x in pdf["posting_id"].iloc[:n_same] if x not in over_seen]
            over_seen.update(new)
            if new:
                yield pd.DataFrame({"src": new, "dst": None, "bits": 0, "skipped": new})
            pdf = pdf.iloc[n_same:]
            if not len(pdf):
                continue
            over_key, over_seen = None, set()
        if carry is not None:
            pdf = pd.concat([carry, pdf], ignore_index=True)
            carry = None
        keys = pdf["band_key"].to_numpy(dtype=np.int64)
        last = keys[-1]
        tail_start = int(np.searchsorted(keys, last, side="left"))
        out = emit(pdf, tail_start)
        if out is not None and len(out):
            yield out
        tail = pdf.iloc[tail_start:]
        if len(tail) > max_bucket:
            over_key, over_seen = int(last), set(tail["posting_id"])
            ids = sorted(over_seen)
            yield pd.DataFrame({"src": ids, "dst": None, "bits": 0, "skipped": ids})
        else:
            carry = tail.reset_index(drop=True)
    if carry is not None:
        out = emit(carry, len(carry))
        if out is not None and len(out):
            yield out


def phash_pairs(df, max_bits: int, max_bucket: int, n_rows: int | None = None, banding: Banding | None = None):
    """Spark: ``df`` has ``posting_id`` and a valid ``phash`` (16 hex, nulls ignored).
    Returns (pairs DataFrame ``src, dst, bits, score``, DataFrame of skipped ``posting_id``),
    both from one :func:`phash_found` frame (persist that one and :func:`split_found` it to
    compute the shuffle once)."""
    return split_found(phash_found(df, max_bits, max_bucket, n_rows, banding))


def phash_found(df, max_bits: int, max_bucket: int, n_rows: int | None = None, banding: Banding | None = None):
    """The one pass: rows ``src, dst, bits`` (each pair once, ``src < dst``) and rows
    ``skipped`` (a listing of a block over ``max_bucket``; ``dst`` null).
    ``n_rows`` (the listings with a hash; counted when not given) chooses the banding.

    One shuffle of ``keys_per_listing`` small rows a listing (id, 64-bit hash, key),
    partitioned by key and sorted within partitions; each partition streams its blocks in
    bounded memory, and each pair leaves its own block only (no deduplicating shuffle)."""
    from pyspark.sql import functions as F

    src = df.where(F.col("phash").isNotNull()).select("posting_id", "phash")
    if banding is None:
        if n_rows is None:
            n_rows = src.count()
        banding = choose_banding(max_bits, n_rows, max_bucket)
        log.info("pHash pairs within %d bits: %s", max_bits, banding_summary(banding, n_rows))
    per = banding.keys_per_listing

    def _keys(batches):
        for pdf in batches:
            values = hash_ints(pdf["phash"])
            keys = band_keys(values, banding)
            yield pd.DataFrame(
                {
                    "posting_id": np.repeat(pdf["posting_id"].to_numpy(), per),
                    "h": np.repeat(values.view(np.int64), per),
                    "band_key": keys.reshape(-1),
                }
            )

    keyed = src.mapInPandas(_keys, "posting_id string, h long, band_key long")
    n_parts = int(keyed.sparkSession.conf.get("spark.sql.shuffle.partitions"))
    found = (
        keyed.repartition(n_parts, "band_key")
        .sortWithinPartitions("band_key", "posting_id")
        .mapInPandas(
            lambda it: _block_stream(it, max_bits, max_bucket, banding),
            "src string, dst string, bits int, skipped string",
        )
    )
    return found


def split_found(found):
    """(pairs both directions with ``score``, distinct skipped ``posting_id``) of :func:`phash_pairs`'s frame."""
    from pyspark.sql import functions as F

    one = found.where(F.col("dst").isNotNull()).select("src", "dst", "bits")
    pairs = one.unionByName(one.select(F.col("dst").alias("src"), F.col("src").alias("dst"), "bits")).withColumn(
        "score", (F.lit(1.0) - F.col("bits") / F.lit(HASH_BITS)).cast("float")
    )
    skipped = found.where(F.col("skipped").isNotNull()).select(F.col("skipped").alias("posting_id")).distinct()
    return pairs, skipped


def banding_summary(banding: Banding, n_rows: int) -> str:
    """One log line: the banding chosen and its expected block at this size."""
    return (
        f"{banding.n_bands} bands (>= {banding.min_width} bits), radius {banding.radius}, "
        f"{banding.keys_per_listing} keys a listing, ~{math.ceil(banding.expected_block(n_rows))} a block"
    )
