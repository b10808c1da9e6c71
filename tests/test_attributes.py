"""The optional listing attributes (issue 30): brand, model / modelno, category, price and
description read when present, a bad value nulled and counted (never a reject), carried into the
re-ranker's candidate frame and its attribute features. Pure pandas, except the reader's run."""

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from listing_dedup.config import InputConf
from listing_dedup.errors import InputError
from listing_dedup.graph.rerank import (
    ATTR_FEATURES,
    ATTRIBUTE_FEATURE_SET,
    FRAME_COLUMNS,
    ID_FEATURES,
    IDENTIFIER_FEATURE_SET,
    candidate_frame,
    frame_attributes,
    pair_features,
)
from listing_dedup.ingest.reader import nulled_attributes, read_listings
from listing_dedup.ingest.rows import parse_price, validate_attributes
from listing_dedup.quality.robust import labelled_listings


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("17.97", (17.97, False)),
        ("$1,409.99", (1409.99, False)),
        ("€134,00", (134.0, False)),
        ("737,00", (737.0, False)),
        ("12,345", (12345.0, False)),
        ("69.71 gbp", (69.71, False)),
        ("$17.40 (AUD)", (17.4, False)),
        ("3.99E1", (39.9, False)),
        ("0", (0.0, False)),
        (12, (12.0, False)),
        (None, (None, False)),
        ("  ", (None, False)),
        ("call us", (None, True)),
        ("-5", (None, True)),
        ("10-20", (None, True)),
        ("1.234.567", (None, True)),
        (float("inf"), (None, True)),
        (-1.5, (None, True)),
    ],
)
def test_parse_price_by_hand(value, want):
    got = parse_price(value)
    assert got[1] == want[1]
    assert got[0] == pytest.approx(want[0]) if want[0] is not None else got[0] is None


def test_validate_attributes_cleans_text_and_nulls_bad_prices():
    idx = pd.Index([10, 11, 12])
    cleaned, nulled = validate_attributes(
        {
            "brand": pd.Series(["  Epson ", None, "x" * 300], index=idx),
            "model": pd.Series([35199, "ELPLP12", "   "], index=idx),
            "price": pd.Series(["$438.84", "call us", None], index=idx),
        }
    )
    assert list(cleaned.index) == [10, 11, 12] and list(cleaned.columns) == ["brand", "model", "price"]
    assert cleaned["brand"].tolist()[:2] == ["Epson", None] and len(cleaned.loc[12, "brand"]) == 200
    assert cleaned["model"].tolist() == ["35199", "ELPLP12", None]
    assert cleaned.loc[10, "price"] == pytest.approx(438.84) and math.isnan(cleaned.loc[11, "price"])
    assert nulled.tolist() == [None, "price", None]  # a blank price is absent, not bad


def _frame(rows):
    base = dict.fromkeys(FRAME_COLUMNS, 0.0)
    return pd.DataFrame([{**base, "phash_src": None, "phash_dst": None, **r} for r in rows])


def test_attribute_features_by_hand():
    f = _frame(
        [
            # brands equal up to case/punctuation; the model of one side found in the other's title
            dict(
                title_src="Epson lamp",
                title_dst="Epson projector lamp ELPLP12",
                brand_src="Epson",
                brand_dst="EPSON",
                model_src="ELP-LP12",
                model_dst=None,
                price_src=100.0,
                price_dst=200.0,
            ),
            # brands differ; models both given and different
            dict(
                title_src="3M footrest",
                title_dst="3M footrest",
                brand_src="3M",
                brand_dst="Fellowes",
                model_src="FR530CB",
                model_dst="FR531CB",
                price_src=None,
                price_dst=5.0,
            ),
            # one brand alone, found in the other title; one model alone, not in the other title
            dict(
                title_src="Adobe Premiere Pro CS3",
                title_dst="premiere pro cs3 upgrade",
                brand_src=None,
                brand_dst="adobe",
                model_src="PPRO3UPG",
                model_dst=None,
                price_src=0.0,
                price_dst=9.0,
            ),
        ]
    )
    x = pd.DataFrame(pair_features(f, ATTRIBUTE_FEATURE_SET), columns=ATTRIBUTE_FEATURE_SET)
    assert x["brand_agree"].tolist() == [1.0, 0.0, 1.0]
    assert x["model_agree"].tolist() == [1.0, 0.0, 0.5]
    assert "price_ratio" not in ATTRIBUTE_FEATURE_SET  # read, not a feature: prices without their currency
    # the model attribute joins the codes: ELP-LP12 = the title's ELPLP12 (the attribute set only)
    assert x.loc[0, "code_shared"] == 1.0 and x.loc[0, "code_shared_len"] == len("elplp12")
    assert x.loc[1, "code_conflict"] == 1.0
    old = pd.DataFrame(pair_features(f, IDENTIFIER_FEATURE_SET), columns=IDENTIFIER_FEATURE_SET)
    assert old.loc[0, "code_shared"] == 0.0 and old.loc[1, "code_conflict"] == 0.0  # titles alone, as trained
    np.testing.assert_array_equal(x.drop(columns=[*ID_FEATURES, *ATTR_FEATURES]), old.drop(columns=list(ID_FEATURES)))
    # a frame without attribute columns: the attribute features are NaN, the codes the titles'
    bare = f.drop(columns=[c for c in f.columns if c.startswith(("brand_", "model_", "price_"))])
    y = pd.DataFrame(pair_features(bare, ATTRIBUTE_FEATURE_SET), columns=ATTRIBUTE_FEATURE_SET)
    assert y[list(ATTR_FEATURES)].isna().all(axis=None)
    assert y[list(ID_FEATURES)].equals(old[list(ID_FEATURES)])


def test_candidate_frame_carries_the_attributes_of_both_ends():
    final = (np.array([0, 1, 2]), np.array([1, 0, 0]), np.array([0.9, 0.9, 0.5], dtype=np.float32))
    df = pd.DataFrame(
        {
            "title": ["a", "b", "c"],
            "brand": ["B0", None, "B2"],
            "model": ["M0", "M1", None],
            "price": [1.0, np.nan, 3.0],
        }
    )
    attrs = frame_attributes(df)
    assert set(attrs) == {"brand", "model"}  # the price is not carried (not a feature)
    f = candidate_frame(final, final, df["title"].tolist(), [None] * 3, 2, attributes=attrs)
    assert f[["src", "dst", "brand_src", "brand_dst", "model_src", "model_dst"]].values.tolist() == [
        [0, 1, "B0", None, "M0", "M1"],
        [1, 0, None, "B0", "M1", "M0"],
        [2, 0, "B2", "B0", None, "M0"],
    ]
    assert "brand_src" not in candidate_frame(final, final, df["title"].tolist(), [None] * 3, 2).columns
    assert frame_attributes(df[["title"]]) is None


def test_labelled_listings_clean_the_attributes_as_the_reader_does():
    df = pd.DataFrame(
        {
            "posting_id": ["a", "b"],
            "title": ["t1", "t2"],
            "label_group": ["g", "g"],
            "brand": [" Acme ", None],
            "modelno": ["AB-12", None],
            "price": ["€1.234,50", "n/a"],
        }
    )
    out = labelled_listings(df)
    assert out["brand"].tolist() == ["Acme", None] and out["model"].tolist() == ["AB-12", None]
    assert out.loc[0, "price"] == pytest.approx(1234.5) and math.isnan(out.loc[1, "price"])


def test_reader_keeps_the_attributes_nulls_a_bad_price_and_counts_it(spark, tmp_path):
    rows = [
        {"posting_id": "p1", "title": "Epson lamp", "brand": " Epson ", "modelno": "ELPLP12", "price": "$438.84"},
        {"posting_id": "p2", "title": "3M footrest", "brand": None, "modelno": None, "price": "call us"},
        {"posting_id": None, "title": "no id", "brand": "X", "modelno": "Y", "price": "oops"},  # rejected: its id
        {"posting_id": "p3", "title": "Draper remote", "brand": "Draper", "modelno": "121066", "price": None},
    ]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    ing = read_listings(spark, str(path), InputConf())
    kept = ing.kept.toPandas().set_index("posting_id").sort_index()
    assert ing.rows_in() == len(rows) == len(kept) + ing.rejects.count()  # nothing lost, no attribute reject
    assert ing.attributes == ("brand", "model", "price")
    assert kept["brand"].tolist() == ["Epson", None, "Draper"]
    assert kept["model"].tolist() == ["ELPLP12", None, "121066"]  # modelno read as model
    assert kept.loc["p1", "price"] == pytest.approx(438.84) and kept["price"].isna().tolist() == [False, True, True]
    assert nulled_attributes(ing) == {"price_nulled": 1}  # p2's; the rejected row's bad price is not counted
    # a struct can hold no brand: exit 2 naming the column
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"posting_id": "p1", "title": "t", "brand": {"name": "Acme"}}]), bad)
    with pytest.raises(InputError, match="input column 'brand'.*struct"):
        read_listings(spark, str(bad), InputConf())
    # no attribute column: kept as before, nothing counted
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.Table.from_pylist([{"posting_id": "p1", "title": "t"}]), plain)
    ing = read_listings(spark, str(plain), InputConf())
    assert ing.kept.columns == ["posting_id", "title", "image", "image_phash", "image_error"]
    assert nulled_attributes(ing) == {}
