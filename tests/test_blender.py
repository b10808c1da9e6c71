import numpy as np
import pytest
from listing_dedup.search.blender import blend, blend_numpy


def normalise(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_blend_numpy_by_hand():
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    # 0 <- 1 with weight 1: (1,1)/sqrt2; 1 untouched; 2 <- 0 with 0.5: (1.5,0)->(1,0)
    out = blend_numpy(emb, np.array([0, 2]), np.array([1, 0]), np.array([1.0, 0.5]))
    np.testing.assert_allclose(out, [[2**-0.5, 2**-0.5], [0, 1], [1, 0]], atol=1e-6)


def test_spark_blend_matches_reference(spark):
    rng = np.random.default_rng(3)
    n, d = 40, 8
    emb = normalise(rng.normal(size=(n, d))).astype(np.float32)
    src = rng.integers(0, n, 120)
    dst = rng.integers(0, n, 120)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    pairs = {(int(s), int(t)) for s, t in zip(src, dst)}
    src = np.array([p[0] for p in pairs])
    dst = np.array([p[1] for p in pairs])
    score = rng.uniform(0.3, 1.0, len(src)).astype(np.float32)
    threshold = 0.6
    ids = [f"id{i:03d}" for i in range(n)]

    emb_df = spark.createDataFrame([(ids[i], emb[i].tolist()) for i in range(n)], "posting_id string, emb array<float>")
    nbr_df = spark.createDataFrame(
        [(ids[s], ids[t], float(w)) for s, t, w in zip(src, dst, score)], "src string, dst string, score float"
    )
    got = {r.posting_id: np.array(r.emb) for r in blend(emb_df, nbr_df, threshold).collect()}
    assert len(got) == n

    m = score >= threshold
    expected = blend_numpy(emb, src[m], dst[m], score[m])
    for i in range(n):
        np.testing.assert_allclose(got[ids[i]], expected[i], atol=1e-5)
    # listings with no neighbour above the threshold keep their embedding
    lonely = set(range(n)) - set(src[m].tolist())
    assert lonely, "the random graph should leave some listings without strong neighbours"
    for i in lonely:
        np.testing.assert_allclose(got[ids[i]], emb[i], atol=1e-6)
    assert np.linalg.norm(np.stack(list(got.values())), axis=1) == pytest.approx(np.ones(n), abs=1e-5)
    # an incremental night blends a subset alone: the same bits as the full round for those rows
    only = [ids[i] for i in range(0, n, 3)]
    part = blend(emb_df, nbr_df, threshold, only=spark.createDataFrame([(p,) for p in only], "posting_id string"))
    part = {r.posting_id: np.array(r.emb) for r in part.collect()}
    assert sorted(part) == sorted(only)
    for p in only:
        np.testing.assert_array_equal(part[p], got[p])
