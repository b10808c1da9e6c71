import numpy as np
import pandas as pd
import pytest
from listing_dedup.search.phash_match import band_edges, band_keys, hash_ints, phash_pairs, phash_pairs_pandas


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
    k = band_keys(hash_ints(pd.Series(["ffffffffffffffff", "ffffffffffffffff", "0000000000000000"])), 3)
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
