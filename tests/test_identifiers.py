"""Product codes and quantities in titles (lib/listing_dedup/embed/identifiers.py), on hand-written titles."""

import math

import numpy as np
import pytest
from listing_dedup.embed.identifiers import (
    EVIDENCE,
    code_idf,
    conflicts,
    evidence_of,
    identifiers,
    normalise_code,
    pair_evidence,
    title_codes,
    title_quantities,
)


def test_codes_are_normalised_across_separators_and_case():
    assert normalise_code("DSC-W120") == "dscw120"
    assert "dscw120" in title_codes("Sony DSC-W120 7.2MP Digital Camera")
    assert "dscw120" in title_codes("sony dsc w120 camera")  # a short word joined to the code after it
    assert "dscw120" in title_codes("SONY DSCW120 silver")
    assert title_codes("Epson Projector Lamp ELPLP12") == {"elplp12"}
    # a joined token also gives its parts that are codes themselves
    assert title_codes("Acer Iconia Tab A500-10S32u Tablet") == {"a50010s32u", "a500", "10s32u"}


def test_what_is_not_a_code():
    # numbers with units, ordinals, short tokens, plain words, years and small counts
    assert title_codes("Apple iPod nano 8GB 6th Generation 2010 ps4 4k 200W 2pcs 16-GB") == set()
    assert title_codes("punch software 17100 home suite") == {"17100"}  # 5+ digits: a part number


def test_quantities_normalised_units():
    q = title_quantities('Samsung 40in LED TV, 52" stand, 1.5L 500 ml, 16 GB, 1TB, 200W, 10.1-Inch')
    assert q["length"] == frozenset({1020.0, 1320.0, 257.0})  # 40 x 25.4 = 1016, 52 x 25.4 = 1320.8, 3 digits
    assert q["volume"] == frozenset({1500.0, 500.0})
    assert q["storage"] == frozenset({16.0, 1000.0})
    assert q["power"] == frozenset({200.0})
    assert title_quantities("102 cm TV")["length"] == frozenset({1020.0})  # = 40 in at 3 digits


def test_pair_evidence_shared_code_and_conflicts():
    tv40 = identifiers("Brand 40in Smart LED TV Series 5 XX40A550")
    tv52 = identifiers("Brand 52in Smart LED TV Series 5 XX52A650")
    tv40b = identifiers("XX40A550 brand smart tv 40 inch")
    plain = identifiers("Brand Smart LED TV Series 5")
    idf = code_idf([tv40, tv52, tv40b, plain])
    # the case: codes differ (conflict) and the screen sizes differ
    assert evidence_of(tv40, tv52, idf) == (0.0, 1.0, 1.0, 0.0)
    # one code shared by 2 of 4 listings: idf log(4 / 2); same size
    assert evidence_of(tv40, tv40b, idf) == (pytest.approx(math.log(2)), 0.0, 0.0, 0.0)
    # no code on one side: no conflict
    assert evidence_of(tv40, plain, idf) == (0.0, 0.0, 0.0, 0.0)
    ev = pair_evidence([tv40, tv52, tv40b, plain], np.array([0, 0, 0]), np.array([1, 2, 3]), idf)
    assert ev.shape == (3, len(EVIDENCE))
    assert conflicts(ev).tolist() == [True, False, False]
    assert ev[:, 4].tolist() == [1, 1, 1] and ev[:, 5].tolist() == [1, 1, 0]


def test_model_and_brand_attributes():
    a = identifiers("Apple iPod nano 8 GB Graphite", model="MC688LL/A", brand="Apple")
    b = identifiers("Apple iPod nano 8GB Charcoal", model="MC688LL/A", brand="Apple Inc.")
    c = identifiers("iPod nano 8GB", model="MC525LL/A", brand="Belkin")
    assert "mc688lla" in a.codes
    assert evidence_of(a, b, {"mc688lla": 2.0})[:2] == (2.0, 0.0)
    # different model numbers conflict; brands conflict when neither contains the other
    assert evidence_of(a, c, {}) == (0.0, 1.0, 0.0, 1.0)
    assert evidence_of(a, identifiers("x", brand=None), {})[3] == 0.0


def test_a_dotted_reference_number_is_one_code():
    # wdc_products' confident wrong pair: two watches of one line whose references differ after the
    # dot; split at every dot, both titles yielded the line's part "t120", shared: no conflict
    a = identifiers("Tissot Seastar 1000 T120.407.11.041.00 Automatic")
    b = identifiers("TISSOT SEASTAR 1000 t120.417.11.041.00")
    assert a.codes == {"t1204071104100"}
    assert b.codes == {"t1204171104100"}
    assert evidence_of(a, b, code_idf([a, b]))[:2] == (0.0, 1.0)  # a code conflict
    # the same reference written with other separators is one code
    c = identifiers("tissot seastar T120-407-11-041-00")
    assert evidence_of(a, c, code_idf([a, c]))[1] == 0.0
    # a dot before letters still splits: "No.ABC123" gives the code after it
    assert "abc123" in title_codes("Model No.ABC123 kettle")
