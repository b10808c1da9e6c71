"""The generated sample catalog grows past the ~4,500 products one line per brand and kind
allows (bench/scale.py makes 100k-1M listings with it) without changing the small catalogs."""

from __future__ import annotations

from collections import Counter

import pytest
from listing_dedup.quality import sample as sample_mod
from listing_dedup.quality.sample import BRANDS, KINDS, PRODUCTS_PER_LINE_SET, generate_catalog


def test_small_catalog_has_one_product_line_per_brand_and_kind():
    s = generate_catalog(300, seed=5)
    assert all(len(key) == 2 for key in sample_mod._LINES)  # (brand, kind) -> its one line
    assert s.truth["label_group"].nunique() == 300 + 1  # and the escaped-title bad row's own group
    # same seed, same catalog
    again = generate_catalog(300, seed=5)
    assert again.listings.equals(s.listings)


def test_large_catalog_grows_by_lines_and_every_product_is_distinct():
    n = 2 * PRODUCTS_PER_LINE_SET + 500  # more than the ~4,500 products of one line per brand and kind
    s = generate_catalog(n, seed=9, with_bad_rows=False, growth="lines")
    assert s.truth["label_group"].nunique() == n
    sizes = s.truth["label_group"].value_counts()
    assert sizes.min() >= 1 and sizes.max() <= 5
    assert len(s.listings) == len(s.truth) and s.listings["posting_id"].is_unique
    keys = list(sample_mod._LINES)
    assert all(len(k) == 3 for k in keys)  # (brand, kind, line index)
    per_pair = Counter((b, k) for b, k, _ in keys)
    assert max(per_pair.values()) > 1 and len(per_pair) <= len(BRANDS) * len(KINDS)
    # the lines of one brand and kind carry different names (else they would be one product line)
    names: dict[tuple, set] = {}
    for (b, k, _i), name in sample_mod._LINES.items():
        names.setdefault((b, k), set()).add(name)
    assert all(len(names[p]) == c for p, c in per_pair.items())


def test_large_catalog_grows_by_category_blocks():
    n = 2 * PRODUCTS_PER_LINE_SET + 500  # three blocks: the real brands and kinds, and two made up
    s = generate_catalog(n, seed=9, with_bad_rows=False)
    assert s.truth["label_group"].nunique() == n
    assert len(s.listings) == len(s.truth) and s.listings["posting_id"].is_unique
    made_up = sample_mod._MADE_UP
    assert {b for b, _ in made_up} == {1, 2}
    assert len(set(made_up.values())) == len(made_up)  # a made-up name belongs to one block and word
    real = {b.lower() for b in BRANDS} | {w for kind, _, _ in KINDS for w in kind.split()}
    assert not {w for name in made_up.values() for w in name.lower().split()} & real
    # a block's stand-in brands: at most one per (block, real brand), each of two made-up words
    brands = {name for (_, word), name in made_up.items() if word in BRANDS}
    assert len(brands) <= 2 * len(BRANDS) and all(len(name.split()) == 2 for name in brands)
    titles = s.listings.merge(s.truth, on="posting_id")
    # about two thirds of the products (blocks 1 and 2) carry a made-up brand in their titles
    brand_of = titles.assign(made=titles["title"].str.lower().apply(lambda t: any(b.lower() in t for b in brands)))
    share = brand_of.groupby("label_group")["made"].max().mean()
    assert 0.55 < share < 0.8


def test_growth_is_checked():
    with pytest.raises(ValueError, match="growth"):
        generate_catalog(10, growth="sideways")


def test_made_up_names_never_run_out():
    """A 1M-listing catalog has ~112 blocks x ~49 kind words: more than the 5,202 one-word names
    of 2-3 syllables. Once they are all taken a name grows by a syllable (the first 1M run hung)."""
    import itertools
    import random

    syl = sample_mod._SYLLABLES
    every_short = {"".join(p).lower() for n in (2, 3) for p in itertools.product(syl, repeat=n)}
    sample_mod._MADE_UP.clear()
    sample_mod._TAKEN.clear()
    sample_mod._TAKEN.update(every_short)
    name = sample_mod._made_up(random.Random(0), 1, "lipstick", 1)
    assert name.lower() not in every_short and len(name.split()) == 1
    assert sample_mod._made_up(random.Random(1), 1, "lipstick", 1) == name  # one name per (block, word)
    assert sample_mod._made_up(random.Random(0), 2, "lipstick", 1) != name
