"""pHash pairs of an incremental night (search/phash_match.phash_pairs_delta): yesterday's pairs
and the night's delta give exactly the pairs of a search of tonight's whole catalog
(phash_pairs_pandas, the reference), blocks that cross ``max_bucket`` included. Pure numpy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from listing_dedup.search.phash_match import Banding, phash_pairs_delta, phash_pairs_pandas


def near(rng, h: int, bits: int) -> int:
    for b in rng.choice(64, bits, replace=False):
        h ^= 1 << int(b)
    return h


def catalog(rng, n=400, n_families=60):
    """Hashes in families (a product's photos: a few bits apart) and one placeholder hash shared by many."""
    roots = [int(rng.integers(0, 2**63)) for _ in range(n_families)]
    hexes = [f"{near(rng, roots[int(rng.integers(n_families))], int(rng.integers(0, 6))):016x}" for _ in range(n)]
    ids = [f"p{i:04d}" for i in range(n)]
    placeholder = f"{int(rng.integers(0, 2**63)):016x}"
    for i in range(0, 24):  # 24 listings share it: over max_bucket tonight or not, by the delta
        hexes[i * 7] = placeholder
    return dict(zip(ids, hexes)), placeholder


@pytest.mark.parametrize("banding", [Banding(9, 0), Banding(4, 1)])
@pytest.mark.parametrize("grow", [True, False])
def test_delta_pairs_equal_a_full_search_of_tonight(banding, grow):
    rng = np.random.default_rng(3 if grow else 4)
    night1, placeholder = catalog(rng)
    max_bits, max_bucket = 8, 24 if grow else 23  # the placeholder block: 24 listings yesterday
    ids1 = sorted(night1)
    prev, _ = phash_pairs_pandas(ids1, [night1[p] for p in ids1], max_bits, max_bucket, banding)
    prev = prev[prev["src"] < prev["dst"]]

    night2 = dict(night1)
    deleted = [p for p in rng.choice(ids1, 12, replace=False) if night1[p] != placeholder][:8]
    for p in deleted:
        del night2[p]
    changed = [p for p in rng.choice(sorted(night2), 10, replace=False)]
    for p in changed:
        night2[p] = (
            f"{near(rng, int(night2[p], 16), 3):016x}" if rng.random() < 0.5 else f"{int(rng.integers(0, 2**63)):016x}"
        )
    shared = [p for p in ids1 if night1[p] == placeholder]
    if grow:  # two more listings with the placeholder: its block passes max_bucket, its pairs go
        added = {"new1": placeholder, "new2": placeholder}
    else:  # two of its listings change their photo: the block falls under max_bucket, its pairs come
        added = {"new1": f"{near(rng, int(night1[ids1[5]], 16), 2):016x}"}
        for p in shared[:2]:
            night2[p] = f"{int(rng.integers(0, 2**63)):016x}"
            changed.append(p)
    night2.update(added)
    ids2 = sorted(night2)
    removed = set(deleted) | set(changed)
    got, n_skipped = phash_pairs_delta(
        ids2,
        [night2[p] for p in ids2],
        set(changed) | set(added),
        prev,
        removed,
        [night1[p] for p in sorted(removed)],
        max_bits,
        max_bucket,
        banding,
    )
    want, want_skipped = phash_pairs_pandas(ids2, [night2[p] for p in ids2], max_bits, max_bucket, banding)
    assert len(want) > 100 and n_skipped == want_skipped
    still = [p for p in ids2 if night2[p] == placeholder]
    among = want[want["src"].isin(still) & want["dst"].isin(still)]
    assert (len(among) == 0) == grow  # the placeholder's block crossed max_bucket tonight, one way or the other
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False)
