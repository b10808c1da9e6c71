"""Perceptual hashes: bit packing, Hamming distances, filling missing hashes, real images."""

from __future__ import annotations

import io
from collections import Counter

import imagehash
import numpy as np
import pandas as pd
import pytest
from conftest import require_module
from listing_dedup.ingest.phash import hamming, hex_to_bits, inspect_images, phash_hex
from PIL import Image


def _png_bytes(seed: int, size=(96, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1] // 8, size[0] // 8, 3)) * 255).astype(np.uint8)
    im = Image.fromarray(arr).resize(size, Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_hex_to_bits_packs_bytes_in_hex_order():
    bits = hex_to_bits(pd.Series(["8000000000000001", "00ff00ff00ff00ff", "94974F937D4C2433"]))
    assert bits.dtype == np.uint8 and bits.shape == (3, 8)
    assert bits[0].tolist() == [128, 0, 0, 0, 0, 0, 0, 1]
    assert bits[1].tolist() == [0, 255] * 4
    assert bits[2].tolist() == [0x94, 0x97, 0x4F, 0x93, 0x7D, 0x4C, 0x24, 0x33]


@pytest.mark.parametrize("bad", ["123", "zz00000000000000", None, "0000000000000000ff"])
def test_hex_to_bits_rejects_malformed(bad):
    with pytest.raises(ValueError, match="row 1"):
        hex_to_bits(["0000000000000000", bad])


def test_hamming_counts_differing_bits():
    assert hamming("ffffffffffffffff", "0000000000000000") == 64
    assert hamming("8000000000000001", "0000000000000000") == 2
    assert hamming("94974f937d4c2433", "94974f937d4c2433") == 0
    d = hamming(["0000000000000000", "000000000000000f", "f0f0f0f0f0f0f0f0"], "0000000000000000")
    assert d.tolist() == [0, 4, 32]
    with pytest.raises(ValueError, match="cannot pair"):
        hamming(["0" * 16] * 2, ["0" * 16] * 3)


def test_hamming_agrees_with_faiss_binary_index():
    faiss = require_module("faiss")  # faiss-cpu is in setup.py: a skip here, a failure under CI
    rng = np.random.default_rng(7)
    hexes = ["".join(rng.choice(list("0123456789abcdef"), 16)) for _ in range(40)]
    bits = hex_to_bits(hexes)
    index = faiss.IndexBinaryFlat(64)
    index.add(bits)
    dist, ids = index.search(bits[:5], 40)
    for q in range(5):
        ours = hamming(bits[ids[q]], bits[q : q + 1])
        assert ours.tolist() == dist[q].tolist()


def test_phash_hex_is_imagehash_phash():
    im = Image.open(io.BytesIO(_png_bytes(1)))
    h = phash_hex(im)
    assert len(h) == 16 and h == h.lower()
    assert imagehash.hex_to_hash(h) == imagehash.phash(im)


def test_inspect_images_decodes_once_keeps_given_hashes_and_reports_failures(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = _png_bytes(2)
    images = pd.Series([good, "nope.jpg", "broken.jpg", None, "nope.jpg", "", good], dtype=object)
    given = pd.Series(
        [None, None, None, "ffffffffffffffff", "0123456789abcdef", None, " 00000000000000ff "], dtype=object
    )
    out = inspect_images(images, given, str(tmp_path))
    assert out["phash"].tolist() == [
        str(imagehash.phash(Image.open(io.BytesIO(good)))),
        None,
        None,
        "ffffffffffffffff",  # no image: the given hash stays
        "0123456789abcdef",  # given hash kept, the image is still checked (below)
        None,
        "00000000000000ff",  # a given hash wins over the computed one
    ]
    assert out["error"].tolist() == [
        None,
        "missing_image_file",
        "unreadable_image",
        None,
        "missing_image_file",
        None,
        None,
    ]


def test_reader_fills_missing_phash_from_the_image(spark, tmp_path):
    from listing_dedup.config import InputConf
    from listing_dedup.ingest.reader import validate

    a, b = _png_bytes(3), _png_bytes(4)
    (tmp_path / "a.png").write_bytes(a)
    rows = [
        ("p1", "t1", "a.png", None),
        ("p2", "t2", "a.png", "ffffffffffffffff"),
        ("p3", "t3", "missing.png", None),
        ("p4", "t4", None, None),
        ("p5", "", "a.png", None),  # no title: kept on its image alone
    ]
    df = spark.createDataFrame(rows, "posting_id string, title string, image string, image_phash string")
    ing = validate(df, InputConf(), image_root=str(tmp_path))
    out = ing.kept.toPandas().set_index("posting_id")
    want_a = str(imagehash.phash(Image.open(io.BytesIO(a))))
    assert out["image_phash"].to_dict() == {
        "p1": want_a,
        "p2": "ffffffffffffffff",
        "p3": None,
        "p4": None,
        "p5": want_a,
    }
    assert out["image_error"].to_dict() == {"p1": None, "p2": None, "p3": "missing_image_file", "p4": None, "p5": None}
    assert ing.rejects.count() == 0
    for d in ing.cached:
        d.unpersist()

    binary = spark.createDataFrame(
        [("q1", "t", bytearray(b)), ("q2", "t", bytearray(b"junk"))], "posting_id string, title string, image binary"
    )
    got = validate(binary, InputConf()).kept.toPandas().set_index("posting_id")
    assert got.loc["q1", "image_phash"] == str(imagehash.phash(Image.open(io.BytesIO(b))))
    assert got.loc["q2", "image_phash"] is None and got.loc["q2", "image_error"] == "unreadable_image"


def test_real_images_reproduce_csv_phash_within_2_bits(shared_data):
    csv = pd.read_csv(shared_data / "shopee" / "listings_dev.csv", dtype=str)
    folder = shared_data / "shopee" / "images"
    files = sorted(p.name for p in folder.glob("*.jpg"))
    assert len(files) == 23
    ref = csv.drop_duplicates("image").set_index("image").loc[files, "image_phash"]
    out = inspect_images(pd.Series(files), pd.Series([None] * len(files)), str(folder))
    assert out["error"].isna().all()
    diffs = hamming(out["phash"].tolist(), ref.tolist())
    print("bit differences vs CSV image_phash:", dict(sorted(Counter(diffs.tolist()).items())))
    assert diffs.max() <= 2, dict(zip(files, diffs.tolist(), strict=True))
    assert (diffs == 0).sum() >= 20  # almost all reproduce exactly
