"""Generated offers of many shops (lib/listing_dedup/training/offers.py): a training part of
wdc_products' shape from a labelled catalog's groups of 2+. Pure, on hand-written listings."""

import re

import numpy as np
import pandas as pd
from listing_dedup.training.offers import FILLER, SIZES, many_shops, offer

CATALOG = pd.DataFrame(
    {
        "posting_id": ["a1", "a2", "b1", "b2", "b3", "c1"],
        "title": [
            "Epson 1500 Hours 200W UHE Projector Lamp ELPLP12",
            "Epson ELPLP12 replacement lamp",
            "Sony DSC-W120 7.2MP Digital Camera",
            "sony dsc w120 camera silver",
            "Sony Cyber-shot W120 pink",
            "Draper Infrared Remote Transmitter",
        ],
        "brand": ["Epson", "Epson", "Sony", None, "Sony", "Draper"],
        "label_group": ["ga", "ga", "gb", "gb", "gb", "gc"],
    }
)


def _words(t: str) -> set[str]:
    return set(re.findall(r"[a-z]+", t.lower()))


def test_each_group_of_two_or_more_keeps_its_listings_and_gets_offers():
    out = many_shops(CATALOG, seed=1)
    assert list(out.columns) == ["posting_id", "title", "brand", "label_group"]
    assert out["posting_id"].is_unique
    # the singleton group gc has no twin: left out; ga and gb keep their own titles
    assert set(out["label_group"]) == {"ga", "gb"}
    for g in ("ga", "gb"):
        own = CATALOG.loc[CATALOG["label_group"] == g, "title"].tolist()
        got = out.loc[out["label_group"] == g, "title"].tolist()
        assert got[: len(own)] == own
        # at least one generated offer, and no more than the largest drawn size
        assert len(own) < len(got) < max(SIZES[1], len(own) + 2)
        # a generated offer's words are its group's words, the brand's and the filler's
        allowed = set().union(*(_words(t) for t in own), _words(" ".join(FILLER)), {"epson", "sony"})
        for t in got[len(own) :]:
            assert _words(t) <= allowed, t
    # seeded: the same catalog and seed give the same offers, another seed others
    pd.testing.assert_frame_equal(out, many_shops(CATALOG, seed=1))
    assert not out["title"].equals(many_shops(CATALOG, seed=2)["title"])


def test_an_offer_keeps_at_least_three_words_and_rewrites_codes_not_units():
    rng = np.random.default_rng(0)
    title = "Epson 1500 Hours 200W UHE Projector Lamp ELPLP12"
    offers = [offer(title, "Epson", rng) for _ in range(200)]
    assert all(len(o.split()) >= 3 for o in offers)
    squashed = [re.sub(r"[^0-9a-z]", "", o.lower()) for o in offers]
    # the code is dropped on some offers and kept (in any writing) on most
    with_code = sum("elplp12" in s for s in squashed)
    assert 100 < with_code < 200
    assert any("ELPLP12" in o.split() for o in offers)  # upper case
    # a hyphen put in
    assert any("-" in w and w.replace("-", "").lower() == "elplp12" for o in offers for w in o.split())
    # a number with its unit stays one quantity: "200W" may become "200 W" or "200w", never "2-00W"
    assert all(re.search(r"\b2-00", o) is None for o in offers)
