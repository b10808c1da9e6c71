"""images.load_image on every kind of bad image the bad-input matrix uses (pure, no Spark)."""

from __future__ import annotations

import io

import pytest
from _rel import bad_images, jpeg
from listing_dedup.ingest.images import image_root_for, load_image
from PIL import Image


def test_good_image_from_path_and_bytes(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(jpeg(1))
    r = load_image("imgs/a.jpg", str(tmp_path))
    assert r.ok and r.image.mode == "RGB" and r.image.size == (48, 48)
    # an absolute path or file:// URI is read when it lies below the root, never elsewhere
    assert load_image(str(tmp_path / "imgs" / "a.jpg"), str(tmp_path)).ok
    assert load_image(f"file://{tmp_path}/imgs/a.jpg", str(tmp_path / "imgs")).ok
    assert load_image(str(tmp_path / "imgs" / "a.jpg"), "/elsewhere").error == "image_outside_roots"
    png = io.BytesIO()
    Image.new("L", (3, 2)).save(png, format="PNG")
    r = load_image(png.getvalue())
    assert r.ok and r.image.mode == "RGB" and r.image.size == (3, 2)


@pytest.mark.parametrize("name", sorted(bad_images()))
def test_bad_images_are_reported_not_raised(tmp_path, name):
    data = bad_images()[name]
    (tmp_path / name).write_bytes(data)
    expected = "no_image" if not data else "unreadable_image"
    assert load_image(name, str(tmp_path)).error == expected
    assert load_image(data).error == expected
    assert load_image(name, str(tmp_path)).image is None


def test_missing_and_absent(tmp_path):
    assert load_image("nope.jpg", str(tmp_path)).error == "missing_image_file"
    assert load_image(str(tmp_path), str(tmp_path)).error == "missing_image_file"  # a folder is not an image file
    assert load_image(".", str(tmp_path)).error == "missing_image_file"
    assert load_image(None).error == "no_image"
    assert load_image("   ", str(tmp_path)).error == "no_image"


def test_image_root(tmp_path):
    f = tmp_path / "listings.parquet"
    f.write_bytes(b"")
    assert image_root_for(str(f)) == str(tmp_path)
    assert image_root_for(str(tmp_path)) == str(tmp_path)
    assert image_root_for(str(f), "/imgs") == "/imgs"
    assert image_root_for("s3://b/cat/listings.parquet") == "s3://b/cat"
