"""The review queue's ranking (lib/listing_dedup/quality/review.py), by hand-worked pairs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from listing_dedup.quality.review import review_queue


def test_queue_ranks_merges_cuts_then_uncertainty_and_leaves_decided_pairs_out():
    pairs = pd.DataFrame(
        [
            ("a", "b", 0.99, True),  # sure: last
            ("c", "a", 0.52, True),  # near the 0.5 threshold
            ("a", "c", 0.40, False),  # the same pair again: its best probability counts
            ("d", "e", 0.90, True),  # an edge the guard cut (d, e in two groups): +1
            ("f", "g", 0.95, True),  # a merge of two groups of two of last night: +1
            ("h", "i", 0.50, False),  # exactly at the threshold, but decided already
        ],
        columns=["a", "b", "probability", "edge"],
    ).assign(title_a="t")
    groups = {"a": "a", "b": "a", "c": "a", "d": "d", "e": "e", "f": "f", "g": "f", "x": "f", "y": "f"}
    prev = {"a": "a", "b": "a", "c": "a", "f": "f", "x": "f", "g": "g", "y": "g"}
    q = review_queue(pairs, groups, threshold=0.5, max_pairs=10, prev_groups=prev, decided=[("i", "h")])
    assert q[["posting_id_a", "posting_id_b", "reason"]].values.tolist() == [
        ["d", "e", "guard_cut"],  # 1 + (1 - 0.4 / 0.5) = 1.2
        ["f", "g", "new_merge"],  # 1 + (1 - 0.45 / 0.5) = 1.1
        ["a", "c", "near_threshold"],  # 1 - 0.02 / 0.5 = 0.96
        ["a", "b", "near_threshold"],  # 1 - 0.49 / 0.5 = 0.02
    ]
    got = dict(zip(zip(q["posting_id_a"], q["posting_id_b"]), q["priority"].round(3)))
    assert got == {("d", "e"): 1.2, ("f", "g"): 1.1, ("a", "c"): 0.96, ("a", "b"): 0.02}
    assert q["rank"].tolist() == [1, 2, 3, 4] and q.loc[1, "group_size_a"] == 4
    assert q.loc[2, "probability"] == 0.52 and "title_a" in q.columns
    assert len(review_queue(pairs, groups, threshold=0.5, max_pairs=2)) == 2


def test_the_spark_queue_ranks_as_the_pandas_one(spark):
    """review_queue_spark (the nightly job's) on the hand-worked pairs: the pandas ranking's rows,
    order and priorities (the pandas queue's expected values are worked by hand above)."""
    from listing_dedup.quality.review import QUEUE_COLUMNS, review_queue_spark

    rows = [
        ("a", "b", 0.99, True),
        ("c", "a", 0.52, True),
        ("a", "c", 0.40, False),
        ("d", "e", 0.90, True),
        ("f", "g", 0.95, True),
        ("h", "i", 0.50, False),
        ("y", "x", 0.10, False),
    ]
    groups = {"a": "a", "b": "a", "c": "a", "d": "d", "e": "e", "f": "f", "g": "f", "x": "f", "y": "f"}
    prev = {"a": "a", "b": "a", "c": "a", "f": "f", "x": "f", "g": "g", "y": "g"}

    def frame(d):
        return spark.createDataFrame(pd.DataFrame(list(d.items()), columns=["posting_id", "group_id"]))

    pairs = spark.createDataFrame(pd.DataFrame(rows, columns=["a", "b", "probability", "edge"]))
    got = review_queue_spark(
        pairs, frame(groups), threshold=0.5, max_pairs=4, prev_groups=frame(prev), decided=[("i", "h")]
    )
    want = review_queue(
        pd.DataFrame(rows, columns=["a", "b", "probability", "edge"]),
        groups,
        threshold=0.5,
        max_pairs=4,
        prev_groups=prev,
        decided=[("i", "h")],
    )
    assert list(got.columns) == list(QUEUE_COLUMNS)
    pd.testing.assert_frame_equal(got, want[list(QUEUE_COLUMNS)], check_dtype=False)


def _chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium (Debian: apt-get install chromium)")
def test_review_page_renders_in_headless_chromium(tmp_path):
    """The review page, rendered by headless Chromium into a screenshot: the thumbnail of a red
    image and a blue one appear side by side (the page's images render, not only its HTML)."""
    import subprocess

    from listing_dedup.ingest.images import ImageRoots
    from listing_dedup.quality.review import review_page
    from PIL import Image

    Image.new("RGB", (200, 200), (220, 20, 20)).save(tmp_path / "red.png")
    Image.new("RGB", (200, 200), (20, 20, 220)).save(tmp_path / "blue.png")
    pairs = pd.DataFrame([("a", "b", 0.5, True)], columns=["a", "b", "probability", "edge"])
    q = review_queue(pairs, {"a": "a", "b": "b"}, threshold=0.5, max_pairs=5)
    q = q.assign(title_a="red paper bag", title_b="blue paper bag", image_a="red.png", image_b="blue.png")
    q["signal_scores"] = [{"text": 0.8, "phash": 0.7}]
    html = tmp_path / "review.html"
    html.write_text(review_page(q, image_roots=ImageRoots.build(str(tmp_path))), encoding="utf-8")
    shot = tmp_path / "shot.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1000,600",
        f"--screenshot={shot}",
        html.as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    red = (img[..., 0] > 180) & (img[..., 1] < 80) & (img[..., 2] < 80)
    blue = (img[..., 2] > 180) & (img[..., 0] < 80) & (img[..., 1] < 80)
    dark = img.sum(axis=2) < 150  # the text
    assert red.sum() > 5000 and blue.sum() > 5000 and dark.sum() > 500
    # side by side: the red thumbnail left of the blue one, on the same rows
    assert np.nonzero(red)[1].max() < np.nonzero(blue)[1].min()
    assert abs(np.nonzero(red)[0].mean() - np.nonzero(blue)[0].mean()) < 5
