"""The incremental night's pure parts (search/incremental.py): the night's delta by posting_id
and content digest, and the neighbour lists' update, checked against a brute-force search of
tonight's whole catalog (numpy, not the code under test)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from listing_dedup.search.incremental import (
    listing_digest_column,
    listing_digests,
    night_delta,
    night_delta_spark,
    search_delta,
    update_neighbours,
    update_neighbours_spark,
)


def test_night_delta_by_hand():
    prev = pd.DataFrame({"posting_id": ["a", "b", "c", "d"], "digest": ["1", "2", "3", "4"]})
    cur = pd.DataFrame({"posting_id": ["a", "b", "d", "e"], "digest": ["1", "X", "4", "5"]})
    got = night_delta(prev, cur)
    assert dict(zip(got["posting_id"], got["kind"])) == {
        "a": "unchanged",
        "b": "changed",
        "c": "deleted",
        "d": "unchanged",
        "e": "added",
    }
    first = night_delta(None, cur)
    assert set(first["kind"]) == {"added"} and len(first) == 4


def test_night_delta_spark_equals_pandas(spark):
    prev = pd.DataFrame({"posting_id": list("abcdf"), "digest": ["1", "2", "3", "4", "6"]})
    cur = pd.DataFrame({"posting_id": list("abdeg"), "digest": ["1", "X", "4", "5", "7"]})
    got = night_delta_spark(spark.createDataFrame(prev), spark.createDataFrame(cur)).toPandas()
    got = got.sort_values("posting_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, night_delta(prev, cur))
    first = night_delta_spark(None, spark.createDataFrame(cur)).toPandas()
    assert set(first["kind"]) == {"added"}


def test_digest_reads_title_image_and_phash(spark):
    frame = pd.DataFrame(
        {
            "title": ["kaos polos", "kaos polos", "kaos polos", None],
            "image_digest": ["aa", "aa", None, None],
            "image_phash": ["ff00", "ff01", "ff00", "ff00"],
        }
    )
    texts = ["kaos polos\x1faa\x1fff00", "kaos polos\x1faa\x1fff01", "kaos polos\x1f\x1fff00", "\x1f\x1fff00"]
    want = [hashlib.sha256(s.encode()).hexdigest() for s in texts]
    assert listing_digests(frame).tolist() == want
    from pyspark.sql import functions as F

    df = spark.createDataFrame(frame, "title string, image_digest string, image_phash string")
    got = df.select(listing_digest_column(F.col("title"), F.col("image_digest"), F.col("image_phash")).alias("d"))
    assert [r["d"] for r in got.collect()] == want


# --------------------------------------------------------------------------- neighbour lists


def brute_lists(ids: list[str], x: np.ndarray, depth: int) -> pd.DataFrame:
    """Each listing's best ``depth`` others by inner product (numpy), ties by id."""
    s = x @ x.T
    rows = []
    for a in range(len(ids)):
        order = sorted((b for b in range(len(ids)) if b != a), key=lambda b: (-s[a, b], ids[b]))[:depth]
        rows += [(ids[a], ids[b], float(s[a, b])) for b in order]
    return pd.DataFrame(rows, columns=["src", "dst", "score"])


def all_pairs(ids, x, of: set[str]) -> pd.DataFrame:
    """Exhaustive search of the listings ``of`` against the whole catalog (self excluded)."""
    s = x @ x.T
    rows = [
        (ids[a], ids[b], float(s[a, b])) for a in range(len(ids)) if ids[a] in of for b in range(len(ids)) if a != b
    ]
    return pd.DataFrame(rows, columns=["src", "dst", "score"])


def nights(seed: int, n: int = 150, d: int = 8):
    rng = np.random.default_rng(seed)
    ids = [f"p{i:03d}" for i in range(n)]
    x = rng.normal(size=(n, d)).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    deleted = set(rng.choice(ids, 8, replace=False))
    rest = [p for p in ids if p not in deleted]
    changed = set(rng.choice(rest, 5, replace=False))
    x2 = {p: v for p, v in zip(ids, x) if p not in deleted}
    for p in changed:
        v = rng.normal(size=d)
        x2[p] = v / np.linalg.norm(v)
    added = [f"n{i:03d}" for i in range(10)]
    for p in added:
        v = rng.normal(size=d)
        x2[p] = v / np.linalg.norm(v)
    ids2 = sorted(x2)
    return ids, x, deleted, changed, set(added), ids2, np.stack([x2[p] for p in ids2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_update_equals_a_full_search_where_exact_and_flags_the_rest(seed):
    k, depth = 5, 9
    ids, x, deleted, changed, added, ids2, x2 = nights(seed)
    old = brute_lists(ids, x, depth)
    found = all_pairs(ids2, x2, changed | added)  # an exhaustive search of the inserted listings
    got, stale = update_neighbours(old, deleted | changed, found, k=k, depth=depth)
    want = brute_lists(ids2, x2, depth)
    assert set(got["src"]) | stale == set(ids2)
    lost = set(old.loc[old["dst"].isin(deleted | changed), "src"])
    assert stale <= lost  # only a list that lost neighbours can go stale
    for src, g in got.groupby("src"):
        w = want[want["src"] == src]
        # every list is the full search's list, or an exact prefix of it of at least k
        assert g["dst"].tolist() == w["dst"].tolist()[: len(g)], src
        assert len(g) >= k
        assert np.allclose(g["score"].to_numpy(), w["score"].to_numpy()[: len(g)])
    # the inserted listings' lists are complete; a list that lost nothing keeps depth rows
    for src in changed | added | (set(ids2) - lost - changed - added):
        assert (got["src"] == src).sum() == depth
    # then the stale ones, searched again in full, complete tonight's lists
    refilled = pd.concat([got, brute_lists(ids2, x2, depth).query("src in @stale")])
    assert len(refilled) >= len(ids2) * k


def test_a_list_that_lost_more_than_its_slack_is_stale():
    # p0's list holds p1..p4 (depth 4); p1, p2, p3 are deleted: one left, k = 2 -> stale
    old = pd.DataFrame(
        {"src": ["p0"] * 4, "dst": ["p1", "p2", "p3", "p4"], "score": [0.9, 0.8, 0.7, 0.6]},
    )
    got, stale = update_neighbours(old, {"p1", "p2", "p3"}, pd.DataFrame(columns=["src", "dst", "score"]), k=2, depth=4)
    assert stale == {"p0"} and got.empty
    # with one deletion it keeps three exact neighbours
    got, stale = update_neighbours(old, {"p2"}, pd.DataFrame(columns=["src", "dst", "score"]), k=2, depth=4)
    assert stale == set() and got["dst"].tolist() == ["p1", "p3", "p4"]


def test_an_inserted_listing_enters_lists_it_beats_and_not_below_their_floor():
    old = pd.DataFrame({"src": ["a"] * 3, "dst": ["b", "c", "d"], "score": [0.9, 0.5, 0.4]})
    found = pd.DataFrame({"src": ["n", "m"], "dst": ["a", "a"], "score": [0.7, 0.3]})
    got, stale = update_neighbours(old, set(), found, k=2, depth=3)
    assert stale == set()
    assert got[got["src"] == "a"]["dst"].tolist() == ["b", "n", "c"]  # m (0.3) is below a's floor 0.4
    assert got[got["src"] == "n"]["dst"].tolist() == ["a"]


def test_update_spark_equals_pandas(spark):
    k, depth = 5, 9
    ids, x, deleted, changed, added, ids2, x2 = nights(4)
    old = brute_lists(ids, x, depth)
    found = brute_lists(ids2, x2, depth).query("src in @changed or src in @added")  # a top-depth search
    want, want_stale = update_neighbours(old, deleted | changed, found, k=k, depth=depth)
    removed = spark.createDataFrame(pd.DataFrame({"posting_id": sorted(deleted | changed)}))
    got, stale = update_neighbours_spark(
        spark.createDataFrame(old), removed, spark.createDataFrame(found), k=k, depth=depth
    )
    got = got.toPandas().sort_values(["src", "score", "dst"], ascending=[True, False, True]).reset_index(drop=True)
    assert {r["posting_id"] for r in stale.collect()} == want_stale
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_search_delta_through_the_index_equals_a_full_search(spark):
    """The delta searched through the job's index (exact: one list), the lists updated and the
    stale ones searched again: every list is an exact prefix of at least k of a full search of
    tonight's catalog, and only the delta and the stale lists were searched."""
    from listing_dedup.config.job import IndexConf
    from listing_dedup.search.indexer import build_index

    k, depth = 5, 6  # a list that loses 2 of its 6 goes stale: the re-search runs
    ids, x, deleted, changed, added, ids2, x2 = nights(5)
    old = brute_lists(ids, x, depth)
    delta = night_delta(
        pd.DataFrame({"posting_id": ids, "digest": [p + "@1" for p in ids]}),
        pd.DataFrame({"posting_id": ids2, "digest": [p + ("@2" if p in changed else "@1") for p in ids2]}),
    )
    emb = spark.createDataFrame(
        pd.DataFrame({"posting_id": ids2, "emb": [v.astype(np.float32).tolist() for v in x2]}),
        "posting_id string, emb array<float>",
    )
    index = build_index(emb, IndexConf(n_shards=2, exact_below=10**6, nprobe=1, k=depth), n_rows=len(ids2))
    try:
        lists, counts = search_delta(
            index, emb, spark.createDataFrame(old), spark.createDataFrame(delta), k=k, depth=depth,
            search_depth=len(ids2),
        )  # fmt: skip
        got = lists.toPandas()
    finally:
        index.unpersist()
    assert counts["stale"] > 0
    assert counts["searched"] == len(changed | added) + counts["stale"] < len(ids2) // 4
    want = brute_lists(ids2, x2, depth)
    assert set(got["src"]) == set(ids2) and not got.duplicated(["src", "dst"]).any()
    for src, g in got.groupby("src"):
        g = g.sort_values(["score", "dst"], ascending=[False, True])
        w = want[want["src"] == src]
        assert len(g) >= k and g["dst"].tolist() == w["dst"].tolist()[: len(g)], src


def test_the_driver_plans_fallback_frames(spark):
    """A driver-plan night that shipped only its lists' top-1 and embedded only its delta gives
    the later Spark stages the top k (search/driver_night.last_frame) and every listing's fused
    vector (vectors_frame) from its arrays when its graph falls back to Spark."""
    from listing_dedup.search.driver_night import DriverState, RoundArrays, last_frame, vectors_frame
    from listing_dedup.search.rounds import SearchRounds

    ids = np.asarray(["a", "b", "c"], dtype=object)
    nb = np.asarray([[1, 2], [0, -1], [1, 0]], dtype=np.int32)
    sc = np.asarray([[0.9, 0.5], [0.9, 0], [0.7, 0.5]], dtype=np.float32)
    vec = np.asarray([[1, 0], [0.6, 0.8], [0, 1]], dtype=np.float32)
    state = DriverState(ids, [RoundArrays(nb, sc, vec, np.zeros(3, dtype=np.int32))], depth=2)
    top1 = spark.createDataFrame([("a", "b", 0.9, 1)], "src string, dst string, score float, rank int")
    rounds = SearchRounds([top1], [], None, top1.select("src", "dst", "score"), None, driver=state, nbrs_k=1)
    last_frame(spark, rounds, 2, lambda df: df)
    got = sorted((r["src"], r["dst"], round(r["score"], 3)) for r in rounds.nbrs.collect())
    assert got == [("a", "b", 0.9), ("a", "c", 0.5), ("b", "a", 0.9), ("c", "a", 0.5), ("c", "b", 0.7)]
    assert rounds.nbrs_k == 2 and sorted(r["rank"] for r in rounds.lists[-1].collect()) == [1, 1, 1, 2, 2]
    emb = {r["posting_id"]: r["emb"] for r in vectors_frame(spark, state).collect()}
    assert emb == {"a": [1.0, 0.0], "b": [np.float32(0.6), np.float32(0.8)], "c": [0.0, 1.0]}
