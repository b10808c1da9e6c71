import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from listing_dedup.config import InputConf
from listing_dedup.errors import InputError
from listing_dedup.ingest.reader import read_input, read_listings


def write_parquet(path, rows, schema=None):
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path)
    return str(path)


ROWS = [
    {"posting_id": "p1", "title": "Paper  Bag Victoria Secret", "image_phash": "94974F937D4C2433", "shop": "A"},
    {"posting_id": None, "title": "no id", "image_phash": None, "shop": "B"},
    {"posting_id": "  ", "title": "blank id", "image_phash": None, "shop": "C"},
    {"posting_id": "p2", "title": "   ", "image_phash": None, "shop": "D"},  # nothing to match on
    {"posting_id": "p3", "title": "", "image_phash": "af3f9460c2838f0f", "shop": "E"},  # phash only: kept
    {"posting_id": "p4", "title": "bad hash", "image_phash": "xyz", "shop": "F"},
    {"posting_id": "p5", "title": "short hash", "image_phash": "abc123", "shop": "G"},
    {"posting_id": "p1", "title": "second p1", "image_phash": None, "shop": "H"},  # duplicate
    {"posting_id": "p6", "title": "Kaos \\xe2\\x9c\\x85 Murah", "image_phash": "", "shop": "I"},
    {"posting_id": "p7", "title": None, "image_phash": None, "shop": "J"},
    {"posting_id": "p4", "title": "valid p4 after an invalid p4", "image_phash": None, "shop": "K"},
]


def test_validation_rules_and_accounting(spark, tmp_path):
    path = write_parquet(tmp_path / "in.parquet", ROWS)
    ing = read_listings(spark, path, InputConf())
    kept = ing.kept.toPandas().set_index("posting_id")
    rej = ing.rejects.toPandas()
    assert ing.rows_in() == len(ROWS) == len(kept) + len(rej)

    assert sorted(kept.index) == ["p1", "p3", "p4", "p6"]
    assert kept.loc["p1", "title"] == "Paper Bag Victoria Secret"
    assert kept.loc["p1", "image_phash"] == "94974f937d4c2433"
    assert kept.loc["p6", "title"] == "Kaos \u2705 Murah"
    assert kept.loc["p6", "image_phash"] is None  # empty hash = no hash
    assert kept.loc["p4", "title"] == "valid p4 after an invalid p4"
    assert kept.loc["p3", "title"] == ""

    reasons = sorted(zip(rej["posting_id"].fillna("<null>"), rej["reason"]))
    assert reasons == [
        ("  ", "null_posting_id"),
        ("<null>", "null_posting_id"),
        ("p1", "duplicate_posting_id"),
        ("p2", "no_title_no_image"),
        ("p4", "malformed_image_phash"),
        ("p5", "malformed_image_phash"),
        ("p7", "no_title_no_image"),
    ]
    # raw keeps every input column, including ones the job does not use
    dup = rej[rej["reason"] == "duplicate_posting_id"].iloc[0]
    assert json.loads(dup["raw"]) == {"posting_id": "p1", "title": "second p1", "shop": "H"}


def test_missing_path_and_columns(spark, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_input(spark, str(tmp_path / "nope.parquet"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputError, match="no .parquet files"):
        read_input(spark, str(tmp_path / "empty_dir"))
    path = write_parquet(tmp_path / "x.parquet", [{"id": "a", "title": "t"}])
    with pytest.raises(InputError, match="missing required column 'posting_id'"):
        read_listings(spark, path, InputConf())


def test_wrong_column_type(spark, tmp_path):
    path = write_parquet(tmp_path / "x.parquet", [{"posting_id": 1, "title": "t"}])
    with pytest.raises(InputError, match="'posting_id' has type bigint, expected string"):
        read_listings(spark, path, InputConf())


def test_not_parquet(spark, tmp_path):
    p = tmp_path / "listings.parquet"
    p.write_text("posting_id,title\na,b\n")
    with pytest.raises(InputError, match="cannot read input Parquet"):
        read_listings(spark, str(p), InputConf()).kept.count()


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_binary_image_counts_as_image(spark, tmp_path):
    schema = pa.schema([("posting_id", pa.string()), ("title", pa.string()), ("image", pa.binary())])
    rows = [
        {"posting_id": "a", "title": "", "image": _png()},  # image only: kept
        {"posting_id": "b", "title": "", "image": b""},
        {"posting_id": "c", "title": "", "image": b"\xff\xd8jpeg"},  # not a decodable image, no title
        {"posting_id": "d", "title": "has a title", "image": b"\xff\xd8jpeg"},  # kept, image flagged
    ]
    path = write_parquet(tmp_path / "b.parquet", rows, schema)
    ing = read_listings(spark, path, InputConf())
    kept = {r.posting_id: r.image_error for r in ing.kept.collect()}
    assert kept == {"a": None, "d": "unreadable_image"}
    assert sorted((r.posting_id, r.reason) for r in ing.rejects.collect()) == [
        ("b", "no_title_no_image"),
        ("c", "unreadable_image"),
    ]


def test_long_titles_are_cut(spark, tmp_path):
    path = write_parquet(tmp_path / "l.parquet", [{"posting_id": "a", "title": "y" * 100_000}])
    ing = read_listings(spark, path, InputConf(max_title_chars=500))
    assert len(ing.kept.first()["title"]) == 500
    assert ing.rejects.count() == 0


def test_empty_input(spark, tmp_path):
    schema = pa.schema([("posting_id", pa.string()), ("title", pa.string())])
    path = write_parquet(tmp_path / "e.parquet", [], schema)
    ing = read_listings(spark, path, InputConf())
    assert (ing.rows_in(), ing.kept.count(), ing.rejects.count()) == (0, 0, 0)


def test_folder_input(spark, tmp_path):
    d = tmp_path / "folder"
    d.mkdir()
    write_parquet(d / "part-0.parquet", [{"posting_id": "a", "title": "x"}])
    write_parquet(d / "part-1.parquet", [{"posting_id": "b", "title": "y"}])
    ing = read_listings(spark, str(d), InputConf())
    assert sorted(r.posting_id for r in ing.kept.collect()) == ["a", "b"]
    assert pd.isna(ing.kept.first()["image"])
