"""Property test of ingest's row validation core (ingest/rows.validate_rows, what the reader's
pandas UDF runs), without Spark: generated listing rows (unicode titles, odd ids, malformed
pHashes, odd image paths: ``..``, absolute paths, symbolic links, URIs with options, bytes)
never raise, every row is kept or rejected with a known reason, and no file outside the image
root is ever opened."""

from __future__ import annotations

import os
import unicodedata
from unittest import mock

import pandas as pd
import pytest
from _rel import jpeg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from listing_dedup.ingest import images
from listing_dedup.ingest.images import IMAGE_ERRORS, ImageRoots
from listing_dedup.ingest.rows import RowRules, validate_rows

MAX_BYTES = 4096
BLANK_CATEGORIES = {"Zs", "Zl", "Zp", "Cc", "Cf"}
ROW_REASONS = {"null_posting_id", "no_title_no_image", "malformed_image_phash"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("prop")
    root, outside = base / "root", base / "outside"
    (root / "imgs" / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "imgs" / "good.jpg").write_bytes(jpeg(3))
    (root / "imgs" / "bad.jpg").write_bytes(b"not an image at all")
    (root / "imgs" / "big.jpg").write_bytes(b"\xff" * (MAX_BYTES + 1))
    (outside / "secret.jpg").write_bytes(jpeg(4))
    (root / "link.jpg").symlink_to(outside / "secret.jpg")
    (root / "imgs" / "dirlink").symlink_to(outside, target_is_directory=True)
    return str(root), str(outside)


def _paths(root: str, outside: str):
    segments = st.sampled_from(["..", ".", "", "imgs", "sub", "good.jpg", "bad.jpg", "big.jpg", "link.jpg", "dirlink"])
    relative = st.lists(segments | st.text(max_size=8), min_size=1, max_size=6).map("/".join)
    prefixes = st.sampled_from(["", "/", f"{root}/", f"file://{root}/", f"{outside}/", f"file://{outside}/", "  "])
    fixed = st.sampled_from(
        [
            "imgs/good.jpg",
            f"{root}/imgs/good.jpg",
            f"{outside}/secret.jpg",
            f"{root}/../outside/secret.jpg",
            "imgs/dirlink/secret.jpg",
            "/etc/passwd",
            "../../../../../../etc/passwd",
            "s3://internal-bucket/secret.jpg?endpoint_override=127.0.0.1:1&scheme=http",
            "http://127.0.0.1:1/x.jpg",
            "hdfs://127.0.0.1:1/x.jpg",
            "file://otherhost/etc/passwd",
            "imgs/good.jpg?x=1",
            "imgs/good.jpg\x00.png",
            "a" * 300 + "/" + "b" * 300,
        ]
    )
    uris = st.builds(
        lambda scheme, host, path, query: f"{scheme}://{host}/{path}{query}",
        st.sampled_from(["s3", "gs", "hdfs", "http", "file", "abfss", "x"]),
        st.sampled_from(["bucket", "127.0.0.1:1", "", "[::1", "user:pw@host"]),
        relative,
        st.sampled_from(["", "?endpoint_override=127.0.0.1:1&scheme=http", "#f", "?"]),
    )
    blobs = st.sampled_from([jpeg(5), b"", b"\x89PNG\r\n", b"\xff" * (MAX_BYTES + 1)]) | st.binary(max_size=64)
    return st.none() | fixed | uris | st.text() | blobs | st.builds(lambda p, r: p + r, prefixes, relative)


ids = (
    st.none() | st.text() | st.sampled_from(["\t", "\n", "\u00a0", " ", "\u200b", "\ufeff", "\x00", "p1", " p1\u3000"])
)
titles = st.none() | st.text() | st.sampled_from(["", " \t ", "Kaos \\xe2\\x9c\\x85 Murah", "\\xff\\xfe", "x" * 2000])
phashes = (
    st.none()
    | st.text(max_size=20)
    | st.text(alphabet="0123456789abcdefABCDEF \t", min_size=14, max_size=18)
    | st.sampled_from(["94974F937D4C2433", " af3f9460c2838f0f ", "af3f9460c2838f0f\n", "g" * 16, "\u0661" * 16])
)


def _blank_id(value) -> bool:
    """The oracle: nothing but whitespace, separators, control and format characters (an
    unassigned or private-use code point is a character of the id)."""
    return value is None or all(c.isspace() or unicodedata.category(c) in BLANK_CATEGORIES for c in value)


def test_validation_core_on_generated_rows(tree):
    root, outside = tree
    real_root = os.path.realpath(root)
    rules = RowRules(max_title_chars=1000, images=ImageRoots.build(root, max_bytes=MAX_BYTES))
    read = images._read_bytes
    seen = {"opened": 0, "outside": 0}

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(ids, titles, _paths(root, outside), phashes), max_size=6))
    def check(rows):
        opened: list[str] = []

        def spy(loc, max_bytes):
            opened.append(loc.path)
            return read(loc, max_bytes)

        frame = pd.DataFrame(rows, columns=["posting_id", "title", "image", "image_phash"], dtype=object)
        with mock.patch.object(images, "_read_bytes", spy):
            out = validate_rows(frame["posting_id"], frame["title"], frame["image"], frame["image_phash"], rules)

        assert len(out) == len(rows) and list(out.index) == list(frame.index)
        for (pid, _title, image, _phash), (_, row) in zip(rows, out.iterrows(), strict=True):
            reason, error = row["reason"], row["image_error"]
            assert reason is None or reason in ROW_REASONS | set(IMAGE_ERRORS) - {"no_image"}
            assert error is None or error in IMAGE_ERRORS
            assert (reason == "null_posting_id") == _blank_id(pid), (pid, reason)
            if reason is None:  # kept: an id, and something to match on
                assert row["posting_id"] and not _blank_id(row["posting_id"][0] + row["posting_id"][-1])
                assert row["title"] or row["image_phash"] or (image is not None and error is None)
                assert row["image_phash"] is None or (
                    len(row["image_phash"]) == 16 and set(row["image_phash"]) <= set("0123456789abcdef")
                )
                assert len(row["title"]) <= 1000
        # nothing outside the root was opened (symbolic links resolved), nor anything twice per row
        for path in opened:
            assert path == real_root or path.startswith(real_root + "/"), path
        assert len(opened) <= len(rows)
        seen["opened"] += len(opened)
        seen["outside"] += int((out["image_error"] == "image_outside_roots").sum())

    check()
    assert seen["opened"] > 0 and seen["outside"] > 0  # the examples did read files, and refused some
