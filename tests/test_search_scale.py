"""The search stage's scale machinery: bounded quantizer sample, quantizer reuse, shard files
and their clean-up, proximity sharding, query chunks, 8-bit codes with an exact re-score.

Expected values come from numpy (brute force, exact inner products) or from FAISS used the
ordinary way, never from the code under test."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from listing_dedup.config import IndexConf
from listing_dedup.search.indexer import (
    build_index,
    list_layout,
    probe_lists,
    scan_lists,
    search,
    shard_of_lists,
    train,
    train_quantizer,
)

D, N = 32, 3000


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    centres = _unit(rng.standard_normal((60, D)))
    base = _unit(centres[rng.integers(0, 60, N)] + 0.3 * rng.standard_normal((N, D)))
    twins = _unit(base[: N // 10] + 0.01 * rng.standard_normal((N // 10, D)))  # near-duplicates of rows 0..299
    x = np.concatenate([base, twins])
    ids = [f"p{i:05d}" for i in range(len(x))]
    return ids, x


@pytest.fixture(scope="module")
def emb_df(spark, data):
    ids, x = data
    pdf = pd.DataFrame({"posting_id": ids, "emb": list(x)})
    df = spark.createDataFrame(pdf, "posting_id string, emb array<float>").repartition(4).cache()
    yield df
    df.unpersist()


def _pairs(df) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for r in df.toPandas().itertuples():
        out.setdefault(r.src, {})[r.dst] = float(r.score)
    return out


def _truth_top(x, ids, k):
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :k]
    return {ids[i]: {ids[j]: sims[i, j] for j in top[i]} for i in range(len(ids))}, sims


def test_sample_is_bounded_in_bytes_and_lists_follow_the_sample():
    cfg = IndexConf(train_sample=1_000_000, train_bytes=2**20, points_per_list=39)
    # 1 MiB of 1408-d float32 vectors = 186 rows (1048576 / 5632); lists: 186 // 39 = 4
    assert cfg.sample_rows(10_000_000, 1408) == 186
    assert cfg.lists_for(10_000_000, 186) == 4
    # 200k rows of 384-d = 293 MiB > 256 MiB default: 174,762 rows, 4481 lists (not 12,649)
    big = IndexConf(train_sample=200_000)
    assert big.sample_rows(10_000_000, 384) == 174_762
    assert big.lists_for(10_000_000, 174_762) == 174_762 // 39
    assert IndexConf(n_shards=4, shard_rows=1_000_000).shards_for(10_000_000) == 10
    assert IndexConf(n_shards=64, shard_rows=1_000_000).shards_for(10_000_000) == 64


def test_proximity_shards_are_balanced_and_a_query_visits_fewer_shards(data):
    ids, x = data
    centroids = train_quantizer(x, 64, seed=1, niter=10)
    probe = probe_lists(x, centroids, 8)
    visits = {}
    for how in ("modulo", "proximity"):
        owner = shard_of_lists(centroids, 8, how)
        counts = np.bincount(owner, minlength=8)
        assert counts.max() - counts.min() <= 1, how  # 64 lists in 8 shards of 8
        visits[how] = np.mean([len(set(owner[p].tolist())) for p in probe])
    assert visits["proximity"] < visits["modulo"], visits


@pytest.mark.parametrize(
    ("scan", "files"),
    [
        ("blas", ["shard-00000.f32", "shard-00000.ids", "shard-00000.lists"]),
        ("faiss", ["shard-00000.faiss", "shard-00000.ids"]),
    ],
)
def test_quantizer_is_reused_and_shard_files_are_removed(spark, emb_df, scan, files):
    cfg = IndexConf(n_shards=3, nlist=16, nprobe=4, k=5, seed=2, scan=scan)
    q = train(emb_df, cfg)
    assert q.nlist == 16 and q.d == D
    handle = build_index(emb_df, cfg, quantizer=q)
    assert handle.quantizer is q
    folder = handle.folder
    assert sorted(f for f in os.listdir(folder) if f.startswith("shard-00000.")) == files
    handle.unpersist()
    assert not os.path.exists(folder)


def _same_pairs(a: dict, b: dict) -> None:
    """Same neighbours, scores equal to float32 rounding (BLAS may sum in another order when
    the query matrices have other shapes)."""
    assert {s: set(v) for s, v in a.items()} == {s: set(v) for s, v in b.items()}
    for s, v in a.items():
        for dst, score in v.items():
            assert abs(score - b[s][dst]) <= 1e-6, (s, dst, score, b[s][dst])


@pytest.mark.parametrize("scan", ["blas", "faiss"])
def test_query_chunks_give_the_same_neighbours(spark, emb_df, scan):
    one = IndexConf(n_shards=3, nlist=16, nprobe=4, k=8, seed=5, scan=scan)
    many = IndexConf(n_shards=3, nlist=16, nprobe=4, k=8, seed=5, query_chunk_rows=100, scan=scan)
    q = train(emb_df, one)
    h1, h2 = build_index(emb_df, one, quantizer=q), build_index(emb_df, many, quantizer=q)
    try:
        _same_pairs(_pairs(search(h1, emb_df)), _pairs(search(h2, emb_df)))
    finally:
        h1.unpersist()
        h2.unpersist()


@pytest.mark.parametrize("k", [1, 7, 40])
def test_scan_lists_equals_brute_force_over_the_probed_lists(k):
    rng = np.random.default_rng(k)
    d, nlist = 24, 12
    sizes = np.array([0, 1, 3, 40, 0, 7, 25, 2, 60, 0, 9, 30])  # empty lists, lists smaller than k
    lists = rng.permutation(np.repeat(np.arange(nlist), sizes))
    v = rng.standard_normal((len(lists), d)).astype(np.float32)
    x = rng.standard_normal((50, d)).astype(np.float32)
    probe = np.stack([rng.choice(nlist, 4, replace=False) for _ in range(len(x))])
    order, offsets = list_layout(lists, nlist)
    assert (np.diff(offsets) == sizes).all()
    got_s, got_i = scan_lists(x, probe, v[order], offsets, k)
    assert got_s.shape == got_i.shape == (len(x), k)
    for q in range(len(x)):
        rows = np.flatnonzero(np.isin(lists, probe[q]))  # brute force, float64, over the probed lists
        exact = x[q].astype(np.float64) @ v[rows].astype(np.float64).T
        best = rows[np.argsort(-exact, kind="stable")[:k]]
        n_found = min(k, len(rows))
        assert set(order[got_i[q, :n_found]].tolist()) == set(best.tolist()), q
        np.testing.assert_allclose(got_s[q, :n_found], np.sort(exact)[::-1][:n_found], rtol=0, atol=1e-5)
        assert (np.diff(got_s[q, :n_found]) <= 0).all()  # best first
        assert (got_i[q, n_found:] == -1).all() and np.isneginf(got_s[q, n_found:]).all()  # missing results


def test_sq8_codes_rescored_exactly_keep_recall(spark, emb_df, data):
    ids, x = data
    k = 10
    truth, sims = _truth_top(x, ids, k)
    cfg = IndexConf(n_shards=4, nlist=16, nprobe=16, k=k, seed=4, storage="sq8", rescore_factor=2)  # every list
    handle = build_index(emb_df, cfg)
    try:
        got = _pairs(search(handle, emb_df))
    finally:
        handle.unpersist()
    pos = {p: i for i, p in enumerate(ids)}
    # the scores returned are the exact inner products (re-scored on float32), not the 8-bit ones
    err = max(abs(s - sims[pos[a], pos[b]]) for a, row in got.items() for b, s in row.items())
    assert err < 1e-5
    hits = sum(len(set(got.get(a, {})) & set(row)) for a, row in truth.items())
    assert hits / (k * len(ids)) >= 0.99
    # every planted twin is its original's best neighbour
    assert all(max(got[f"p{i:05d}"], key=got[f"p{i:05d}"].get) == f"p{N + i:05d}" for i in range(N // 10))


def test_blend_streams_listings_across_small_batches(spark):
    """INB's weighted sums run over key-sorted partitions in Arrow batches; a listing's rows
    straddle batches of 5 rows here. Expected: the numpy reference blend_numpy."""
    from listing_dedup.search.blender import blend, blend_numpy

    rng = np.random.default_rng(9)
    n, d = 60, 6
    emb = _unit(rng.standard_normal((n, d)))
    pairs = sorted({(int(a), int(b)) for a, b in rng.integers(0, n, (300, 2)) if a != b})
    src, dst = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    score = rng.uniform(0.4, 1.0, len(pairs)).astype(np.float32)
    ids = [f"q{i:03d}" for i in range(n)]
    emb_df = spark.createDataFrame([(ids[i], emb[i].tolist()) for i in range(n)], "posting_id string, emb array<float>")
    nbr_df = spark.createDataFrame(
        [(ids[a], ids[b], float(w)) for a, b, w in zip(src, dst, score)], "src string, dst string, score float"
    )
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    old = spark.conf.get(key)
    spark.conf.set(key, "5")
    try:
        got = {r.posting_id: np.array(r.emb) for r in blend(emb_df, nbr_df, 0.7).collect()}
    finally:
        spark.conf.set(key, old)
    m = score >= 0.7
    want = blend_numpy(emb, src[m], dst[m], score[m])
    assert sorted(got) == ids
    for i in range(n):
        np.testing.assert_allclose(got[ids[i]], want[i], atol=1e-5)


def _layouts(spark, ids, x):
    """The same rows as two frames laid out differently: 3 partitions in one row order, 7 in the
    reverse order (as a cached and a cold run lay out their vectors)."""
    pdf = pd.DataFrame({"posting_id": ids, "emb": list(x)})
    a = spark.createDataFrame(pdf, "posting_id string, emb array<float>").repartition(3)
    b = spark.createDataFrame(pdf.iloc[::-1], "posting_id string, emb array<float>").repartition(7)
    return a, b


@pytest.mark.parametrize("train_sample", [700, 100_000])  # a sample of some rows; every row
def test_quantizer_sample_and_centroids_depend_on_the_rows_not_the_layout(spark, data, train_sample):
    """Issue 16: a cached and a cold run of the same catalog must train the same quantizer. The
    former sample (Bernoulli per partition, then the first rows) took other rows, or the same
    rows in another order (k-means draws its initial centroids by position), under another
    partitioning."""
    from listing_dedup.search.indexer import _sample_embeddings

    ids, x = data
    a, b = _layouts(spark, ids, x)
    n, m = len(ids), min(train_sample, len(ids))
    sa = _sample_embeddings(a, n, m, seed=4, min_rows=16)
    sb = _sample_embeddings(b, n, m, seed=4, min_rows=16)
    assert sa.shape == (m, D) if train_sample >= n else len(sa) <= m
    assert len(sa) >= 16
    np.testing.assert_array_equal(sa, sb)  # the same rows, in the same order
    rows = {v.tobytes() for v in x}
    assert all(v.tobytes() in rows for v in sa)  # input rows, each once
    assert len({v.tobytes() for v in sa}) == len(sa)
    cfg = IndexConf(nlist=24, train_sample=train_sample, seed=4, kmeans_iters=10)
    qa, qb = train(a, cfg), train(b, cfg)
    assert qa.sample_rows == qb.sample_rows == len(sa)
    np.testing.assert_array_equal(qa.centroids, qb.centroids)


def test_search_is_the_same_under_another_layout_even_among_exact_ties(spark, data):
    """Listings with identical vectors (the same title and photo) tie exactly: which of them fill
    a listing's k places must not depend on how the frame was partitioned. Neighbours and
    scores are compared bit for bit."""
    ids, x = data
    dup = np.repeat(x[:3], 12, axis=0)  # 3 groups of 12 identical vectors: 11 tied neighbours, k = 4
    ids2 = ids + [f"z{i:03d}" for i in range(len(dup))]
    x2 = np.concatenate([x, dup])
    a, b = _layouts(spark, ids2, x2)
    cfg = IndexConf(n_shards=3, nlist=16, nprobe=4, k=4, seed=6)
    q = train(a, cfg)
    ha, hb = build_index(a, cfg, quantizer=q), build_index(b, cfg, quantizer=q)
    try:
        pa, pb = _pairs(search(ha, a)), _pairs(search(hb, b))
    finally:
        ha.unpersist()
        hb.unpersist()
    assert pa == pb
    assert all(len(pa[f"z{i:03d}"]) == 4 for i in range(len(dup)))
