import numpy as np
import pandas as pd
import pytest
from listing_dedup.search.phash_match import (
    Banding,
    band_edges,
    band_keys,
    choose_banding,
    hash_ints,
    phash_pairs,
    phash_pairs_pandas,
    smallest_shared_key,
)


def _catalog(n_groups=60, seed=0):
    """Groups of near-identical hashes (0-8 flipped bits from a base) plus random singletons."""
    rng = np.random.default_rng(seed)
    ids, hexes = [], []
    for g in range(n_groups):
        base = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        for m in range(int(rng.integers(1, 5))):
            flips = rng.choice(64, size=int(rng.integers(0, 9)), replace=False)
            v = base
            for f in flips:
                v ^= 1 << int(f)
            ids.append(f"g{g:03d}_{m}")
            hexes.append(f"{v:016x}")
    return ids, hexes


def _brute(ids, hexes, max_bits):
    v = hash_ints(pd.Series(hexes))
    out = set()
    for i in range(len(v)):
        for j in range(len(v)):
            if i != j and bin(int(v[i]) ^ int(v[j])).count("1") <= max_bits:
                out.add((ids[i], ids[j]))
    return out


def test_bands_cover_all_bits_once():
    for m in (0, 3, 6, 10):
        e = band_edges(m)
        assert len(e) == m + 1 and e[0][0] == 0 and e[-1][1] == 64
        assert all(a < b for a, b in e) and all(e[i][1] == e[i + 1][0] for i in range(m))


def test_band_keys_of_equal_hashes_are_equal_and_bands_are_tagged():
    k = band_keys(hash_ints(pd.Series(["ffffffffffffffff", "ffffffffffffffff", "0000000000000000"])), Banding(4, 0))
    assert (k[0] == k[1]).all()
    assert len(set(k[2].tolist())) == 4  # band number is part of the key: all-zero bands differ


@pytest.mark.parametrize("max_bits", [0, 2, 5, 8])
def test_pairs_equal_brute_force(max_bits):
    ids, hexes = _catalog()
    got, skipped = phash_pairs_pandas(ids, hexes, max_bits, max_bucket=1000)
    assert skipped == 0
    assert set(zip(got["src"], got["dst"], strict=True)) == _brute(ids, hexes, max_bits)
    assert not got.duplicated(["src", "dst"]).any()
    v = dict(zip(ids, hash_ints(pd.Series(hexes)), strict=True))
    bits = [bin(int(v[a]) ^ int(v[b])).count("1") for a, b in zip(got["src"], got["dst"], strict=True)]
    assert got["bits"].tolist() == bits
    np.testing.assert_allclose(got["score"], 1 - got["bits"] / 64, atol=1e-6)


def test_oversized_block_is_skipped_and_counted():
    ids = [f"p{i}" for i in range(6)] + ["q0", "q1"]
    hexes = ["0000000000000000"] * 6 + ["123456789abcdef0", "123456789abcdef1"]
    got, skipped = phash_pairs_pandas(ids, hexes, 0, max_bucket=5)
    # q0 and q1 differ in one bit: not within 0 bits, so no pair at all
    assert skipped == 6 and got.empty
    got, skipped = phash_pairs_pandas(ids, hexes, 1, max_bucket=5)
    assert skipped == 6 and set(zip(got["src"], got["dst"], strict=True)) == {("q0", "q1"), ("q1", "q0")}


def test_spark_equals_pandas(spark):
    ids, hexes = _catalog(seed=3)
    blanks = [f"blank{i}" for i in range(5)]
    ids += blanks + ["nohash"]
    hexes += ["0000000000000000"] * 5 + [None]
    df = spark.createDataFrame(pd.DataFrame({"posting_id": ids, "phash": hexes})).repartition(3)
    pairs, skipped = phash_pairs(df, 4, max_bucket=4)  # groups hold at most 4 listings
    got = pairs.toPandas()
    ref, n_skipped = phash_pairs_pandas(ids[:-1], hexes[:-1], 4, max_bucket=4)
    assert sorted(skipped.toPandas()["posting_id"]) == blanks and n_skipped == 5
    assert not got["src"].str.startswith("blank").any()
    key = ["src", "dst"]
    pd.testing.assert_frame_equal(
        got.sort_values(key, ignore_index=True)[["src", "dst", "bits"]],
        ref.sort_values(key, ignore_index=True)[["src", "dst", "bits"]],
        check_dtype=False,
    )


# -- wide bands with bit-flip keys (the banding for large catalogs) -------------------------


def _keyset(hexes, banding):
    return [set(row.tolist()) for row in band_keys(hash_ints(pd.Series(hexes)), banding)]


def test_choose_banding_keeps_the_narrow_scheme_for_small_catalogs_and_widens_for_large():
    # hand arithmetic: narrow = 9 bands of 7-8 bits, no flips: a 7-bit band holds n / 128 listings;
    # the target is max_bucket / 8 = 125 listings a block
    small = choose_banding(8, 7_000, 1000)  # 7000 / 128 = 55
    assert (small.n_bands, small.radius, small.keys_per_listing) == (9, 0, 9)
    for n in (20_000, 1_000_000, 10_000_000):  # 20000 / 128 = 156 > 125: wide bands
        b = choose_banding(8, n, 1000)
        # 3 bands of 21-22 bits (8 // 3 = 2 bits a band), value + 21 or 22 flips each: 3 + 64 keys
        assert (b.n_bands, b.radius, b.keys_per_listing) == (3, 1, 67)
    assert round(choose_banding(8, 10_000_000, 1000).expected_block(10_000_000)) == 105  # 1e7 * 22 / 2**21
    b11 = choose_banding(11, 1_000_000, 1000)  # 11 // 3 = 3 > 2: needs 4 bands of 16 bits
    assert (b11.n_bands, b11.radius) == (4, 1)


def test_smallest_shared_key_is_the_minimum_of_the_key_sets():
    rng = np.random.default_rng(7)
    base = rng.integers(0, 2**63, size=300, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    other = base.copy()
    for n, flips in enumerate(rng.integers(0, 9, size=300)):  # 0-8 random flips
        for f in rng.choice(64, size=int(flips), replace=False):
            other[n] ^= np.uint64(1) << np.uint64(int(f))
    for banding in (Banding(3, 1), Banding(4, 1), Banding(9, 0)):
        got = smallest_shared_key(base, other, banding)
        ka = _keyset([f"{int(v):016x}" for v in base], banding)
        kb = _keyset([f"{int(v):016x}" for v in other], banding)
        want = [min(a & b) if a & b else np.iinfo(np.int64).max for a, b in zip(ka, kb, strict=True)]
        assert got.tolist() == want


@pytest.mark.parametrize(("banding", "max_bits"), [(Banding(3, 1), 2), (Banding(3, 1), 5), (Banding(3, 1), 8),
                                                   (Banding(4, 1), 8), (Banding(4, 1), 11)])  # fmt: skip
def test_wide_bands_equal_brute_force(banding, max_bits):
    ids, hexes = _catalog(seed=11)
    got, skipped = phash_pairs_pandas(ids, hexes, max_bits, max_bucket=1000, banding=banding)
    assert skipped == 0
    assert set(zip(got["src"], got["dst"], strict=True)) == _brute(ids, hexes, max_bits)
    assert not got.duplicated(["src", "dst"]).any()


def test_large_catalog_keeps_its_pairs_where_narrow_bands_skip_every_block():
    rng = np.random.default_rng(5)
    n = 40_000
    values = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    planted = {}
    for k in range(200):  # listing 2k and 2k+1 differ in 1-6 bits
        v = values[2 * k]
        for f in rng.choice(64, size=int(rng.integers(1, 7)), replace=False):
            v ^= np.uint64(1) << np.uint64(int(f))
        values[2 * k + 1] = v
        planted[(f"p{2 * k:05d}", f"p{2 * k + 1:05d}")] = bin(int(values[2 * k]) ^ int(v)).count("1")
    ids = [f"p{i:05d}" for i in range(n)]
    hexes = [f"{int(v):016x}" for v in values]
    # the old scheme at this size with max_bucket 200: every 7-bit block holds ~312 listings
    _, skipped_narrow = phash_pairs_pandas(ids, hexes, 8, max_bucket=200, banding=Banding(9, 0))
    assert skipped_narrow == n
    got, skipped = phash_pairs_pandas(ids, hexes, 8, max_bucket=200)
    assert skipped == 0
    found = {(a, b): int(bits) for a, b, bits in zip(got["src"], got["dst"], got["bits"], strict=True) if a < b}
    assert {p: found.get(p) for p in planted} == planted


def test_spark_wide_bands_stream_blocks_across_small_batches(spark):
    """Arrow batches of 7 rows: blocks straddle batches, an oversized block spans several."""
    ids, hexes = _catalog(seed=4)
    blanks = [f"blank{i}" for i in range(9)]
    ids += blanks + ["nohash"]
    hexes += ["0000000000000000"] * 9 + [None]
    df = spark.createDataFrame(pd.DataFrame({"posting_id": ids, "phash": hexes})).repartition(3)
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    old = spark.conf.get(key)
    spark.conf.set(key, "7")
    try:
        pairs, skipped = phash_pairs(df, 6, max_bucket=8, banding=Banding(3, 1))
        got, got_skipped = pairs.toPandas(), sorted(skipped.toPandas()["posting_id"])
    finally:
        spark.conf.set(key, old)
    ref, n_skipped = phash_pairs_pandas(ids[:-1], hexes[:-1], 6, max_bucket=8, banding=Banding(3, 1))
    assert got_skipped == blanks and n_skipped == len(blanks)
    assert not got.duplicated(["src", "dst"]).any()
    brute = {p for p in _brute(ids[:-1], hexes[:-1], 6) if not p[0].startswith("blank")}
    assert set(zip(got["src"], got["dst"], strict=True)) == brute
    key_cols = ["src", "dst"]
    pd.testing.assert_frame_equal(
        got.sort_values(key_cols, ignore_index=True)[["src", "dst", "bits"]],
        ref.sort_values(key_cols, ignore_index=True)[["src", "dst", "bits"]],
        check_dtype=False,
    )
