"""Sharded IVF search vs. a single global FAISS IndexIVFFlat and vs. numpy brute force.

Expected values come from numpy or from a global faiss index built the ordinary way
(``index.add``), never from the code under test.
"""

from __future__ import annotations

import faiss
import numpy as np
import pandas as pd
import pytest
from listing_dedup.config import IndexConf
from listing_dedup.search.indexer import (
    build_index,
    build_shard_index,
    load_shard_index,
    probe_lists,
    search,
    search_shard,
    train_quantizer,
)

TOL = 1e-5  # float32 inner products computed by different kernels


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _ids(n: int, prefix: str = "p") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def _df(spark, ids, x):
    pdf = pd.DataFrame({"posting_id": ids, "emb": [row for row in x.astype(np.float32)]})
    return spark.createDataFrame(pdf, schema="posting_id string, emb array<float>")


def _collect(nbrs_df) -> dict[str, list[tuple[str, float]]]:
    pdf = nbrs_df.toPandas()
    out: dict[str, list[tuple[str, float]]] = {}
    for src, g in pdf.groupby("src"):
        g = g.sort_values(["score", "dst"], ascending=[False, True])
        out[src] = list(zip(g["dst"], g["score"].astype(float)))
    return out


def _ref_from_faiss(ids, D, I, k, self_rows=True) -> dict[str, list[tuple[str, float]]]:
    """Turn a faiss (D, I) result into src -> [(dst, score)], dropping -1 and self."""
    out = {}
    for qi in range(len(I)):
        row = [(ids[j], float(s)) for s, j in zip(D[qi], I[qi]) if j >= 0 and not (self_rows and j == qi)][:k]
        if row:
            out[ids[qi]] = row
    return out


def _brute_force(x: np.ndarray, ids, k: int) -> dict[str, list[tuple[str, float]]]:
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(sims, -np.inf)
    out = {}
    for i in range(len(x)):
        order = np.lexsort((np.arange(len(x)), -sims[i]))[: min(k, len(x) - 1)]
        if len(order):
            out[ids[i]] = [(ids[j], float(sims[i, j])) for j in order]
    return out


def assert_same_topk(ours, ref, true_score, tol=TOL) -> int:
    """Same queries; per query same number of results, same scores (within tol) and the
    same neighbour ids, except that candidates tied (within tol) with the k-th score may be
    swapped. ``true_score(src, dst)`` is the numpy cosine. Returns the number of queries
    whose id sets differ (only through such ties)."""
    assert set(ours) == set(ref), (sorted(set(ours) ^ set(ref)))[:10]
    differing = 0
    for src, r in ref.items():
        o = ours[src]
        assert len(o) == len(r), (src, o, r)
        assert len({d for d, _ in o}) == len(o), f"duplicate neighbours for {src}"
        np.testing.assert_allclose([s for _, s in o], [s for _, s in r], atol=tol)
        for d, s in o:
            assert abs(s - true_score(src, d)) <= tol, (src, d, s)
        o_ids, r_ids = {d for d, _ in o}, {d for d, _ in r}
        if o_ids != r_ids:
            differing += 1
            kth = min(s for _, s in r)
            for d in o_ids ^ r_ids:
                assert abs(true_score(src, d) - kth) <= tol, (
                    f"{src}: neighbour {d} differs and is not tied with the k-th score {kth}"
                )
    return differing


# --------------------------------------------------------------------------------------
# data


N_BASE, D, N_PLANTED, N_EXACT = 1900, 32, 40, 10


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    centres = _unit(rng.standard_normal((50, D)))
    which = rng.integers(0, 50, N_BASE)
    base = _unit(centres[which] + 0.35 * rng.standard_normal((N_BASE, D)))
    src_near = rng.choice(N_BASE, N_PLANTED, replace=False)
    near = _unit(base[src_near] + 0.003 * rng.standard_normal((N_PLANTED, D)))
    src_exact = rng.choice(np.setdiff1d(np.arange(N_BASE), src_near), N_EXACT, replace=False)
    exact = base[src_exact].copy()
    x = np.concatenate([base, near, exact]).astype(np.float32)
    ids = _ids(len(x))
    planted = [(ids[int(a)], ids[N_BASE + i]) for i, a in enumerate(src_near)]
    planted += [(ids[int(a)], ids[N_BASE + N_PLANTED + i]) for i, a in enumerate(src_exact)]
    pos = {p: i for i, p in enumerate(ids)}
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    return {"x": x, "ids": ids, "planted": planted, "true": lambda a, b: float(sims[pos[a], pos[b]])}


CFG = IndexConf(n_shards=3, nlist=16, nprobe=4, k=10, train_sample=5000, seed=12, kmeans_iters=10)


@pytest.fixture(scope="module")
def built(spark, data):
    emb_df = _df(spark, data["ids"], data["x"]).cache()
    handle = build_index(emb_df, CFG)
    yield emb_df, handle
    handle.unpersist()
    emb_df.unpersist()


@pytest.fixture(scope="module")
def self_join(built):
    emb_df, handle = built
    return _collect(search(handle, emb_df, CFG.k))


# --------------------------------------------------------------------------------------
# pure core (no Spark)


def test_train_quantizer_shapes_and_one_list():
    rng = np.random.default_rng(0)
    x = _unit(rng.standard_normal((400, 12)))
    c = train_quantizer(x, 8, seed=1, niter=5)
    assert c.shape == (8, 12) and c.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-5)
    one = train_quantizer(x, 1, seed=1, niter=5)
    mean = x.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(one[0], mean / np.linalg.norm(mean), atol=1e-6)


def test_shards_by_list_equal_one_global_index_without_spark():
    rng = np.random.default_rng(3)
    x = _unit(rng.standard_normal((600, 16)))
    c = train_quantizer(x, 8, seed=2, niter=8)
    q = faiss.IndexFlatIP(16)
    q.add(c)
    glob = faiss.IndexIVFFlat(q, 16, 8, faiss.METRIC_INNER_PRODUCT)
    glob.add(x)
    glob.nprobe = 3
    gd, gi = glob.search(x, 5)
    # split by list % 3 using faiss's own assignment, search each shard, merge
    _, assign = q.search(x, 1)
    assign = assign[:, 0]
    probe = probe_lists(x, c, 3)
    parts = []
    for s in range(3):
        rows = np.flatnonzero(assign % 3 == s)
        idx = load_shard_index(build_shard_index(x[rows], assign[rows], c))
        dm, im = search_shard(idx, x, probe, 5)
        parts.append((dm, np.where(im >= 0, rows[np.maximum(im, 0)], -1)))
    dm = np.concatenate([p[0] for p in parts], axis=1)
    im = np.concatenate([p[1] for p in parts], axis=1)
    for i in range(len(x)):
        order = np.argsort(-dm[i], kind="stable")[:5]
        np.testing.assert_allclose(dm[i, order], gd[i], atol=0)
        assert set(im[i, order]) == set(gi[i]) or np.unique(gd[i]).size < 5


# --------------------------------------------------------------------------------------
# Spark


def test_build_layout(built, data):
    _, handle = built
    assert handle.nlist == 16 and handle.n_shards == 3 and handle.nprobe == 4 and handle.d == D
    assert handle.n_rows == len(data["x"]) == sum(handle.shard_sizes.values())
    # every shard holds exactly the vectors of its lists (list % n_shards); each vector's list is
    # its nearest centroid by inner product, brute force in float64 (not the module's assignment)
    sims = data["x"].astype(np.float64) @ handle.centroids.astype(np.float64).T
    top2 = np.sort(sims, axis=1)[:, -2:]
    assert np.all(top2[:, 1] - top2[:, 0] > 1e-5)  # no near-tie that float32 kernels could order otherwise
    assign = np.argmax(sims, axis=1)
    assert len(np.unique(assign)) > 3  # the vectors spread over the lists, so the shard sizes say something
    for s, n in handle.shard_sizes.items():
        assert n == int(np.sum(assign % 3 == s))


def test_sharded_search_equals_global_ivf(built, data, self_join):
    _, handle = built
    x, ids = data["x"], data["ids"]
    q = faiss.IndexFlatIP(D)
    q.add(handle.centroids)
    glob = faiss.IndexIVFFlat(q, D, handle.nlist, faiss.METRIC_INNER_PRODUCT)
    glob.add(x)
    glob.nprobe = CFG.nprobe
    gd, gi = glob.search(x, CFG.k + 1)
    ref = _ref_from_faiss(ids, gd, gi, CFG.k)
    differing = assert_same_topk(self_join, ref, data["true"])
    assert differing <= N_EXACT * 2  # only exact-duplicate ties may swap at the k-th place
    # nprobe=4 of 16 lists is approximate: the result must differ from brute force somewhere
    exact = _brute_force(x, ids, CFG.k)
    assert any({d for d, _ in self_join[s]} != {d for d, _ in exact[s]} for s in exact)


def test_self_matches_removed_and_k_respected(self_join, data):
    assert len(self_join) == len(data["ids"])
    for src, nb in self_join.items():
        assert src not in {d for d, _ in nb}
        assert len(nb) == CFG.k
        scores = [s for _, s in nb]
        assert scores == sorted(scores, reverse=True)


def test_planted_near_duplicates_found(self_join, data):
    for a, b in data["planted"]:
        assert b in {d for d, _ in self_join[a]}, (a, b)
        assert a in {d for d, _ in self_join[b]}, (b, a)
        assert dict(self_join[a])[b] > 0.99


def test_full_probe_equals_brute_force(built, data):
    emb_df, handle = built
    ours = _collect(search(handle, emb_df, 7, nprobe=handle.nlist))
    ref = _brute_force(data["x"], data["ids"], 7)
    assert_same_topk(ours, ref, data["true"])


def test_other_query_set_equals_global_ivf(spark, built, data):
    _, handle = built
    rng = np.random.default_rng(99)
    xq = _unit(rng.standard_normal((150, D)) + 2.0 * data["x"][rng.integers(0, N_BASE, 150)])
    qids = _ids(150, prefix="q")
    # one query reuses an indexed posting_id: that listing must not list itself
    qids[0] = data["ids"][5]
    xq[0] = data["x"][5]
    ours = _collect(search(handle, _df(spark, qids, xq), 6))
    q = faiss.IndexFlatIP(D)
    q.add(handle.centroids)
    glob = faiss.IndexIVFFlat(q, D, handle.nlist, faiss.METRIC_INNER_PRODUCT)
    glob.add(data["x"])
    glob.nprobe = CFG.nprobe
    gd, gi = glob.search(xq, 7)
    ref = {}
    for i, qid in enumerate(qids):
        ref[qid] = [(data["ids"][j], float(s)) for s, j in zip(gd[i], gi[i]) if j >= 0 and data["ids"][j] != qid][:6]
    pos = {p: i for i, p in enumerate(data["ids"])}
    qpos = {p: i for i, p in enumerate(qids)}
    assert_same_topk(ours, ref, lambda a, b: float(xq[qpos[a]].astype(np.float64) @ data["x"][pos[b]]))
    assert data["ids"][5] not in {d for d, _ in ours[qids[0]]}


def test_exact_mode_one_list_with_empty_shards(spark):
    rng = np.random.default_rng(5)
    x = _unit(rng.standard_normal((300, 7)))
    x[10] = x[20]  # a duplicate vector
    ids = _ids(300)
    cfg = IndexConf(n_shards=3, nprobe=8, k=5, exact_below=10_000, seed=1)
    assert cfg.lists_for(300) == 1
    emb_df = _df(spark, ids, x)
    handle = build_index(emb_df, cfg)
    try:
        assert handle.nlist == 1 and handle.nprobe == 1 and handle.exact
        assert handle.shard_sizes == {0: 300}  # shards 1 and 2 are empty
        ours = _collect(search(handle, emb_df))
    finally:
        handle.unpersist()
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    assert_same_topk(ours, _brute_force(x, ids, 5), lambda a, b: float(sims[int(a[1:]), int(b[1:])]))
    assert ours["p00010"][0][0] == "p00020" and ours["p00010"][0][1] == pytest.approx(1.0, abs=1e-6)


def test_fewer_rows_than_k(spark):
    rng = np.random.default_rng(8)
    x = _unit(rng.standard_normal((5, 3)))
    ids = _ids(5)
    cfg = IndexConf(n_shards=4, k=10, nprobe=2)
    handle = build_index(_df(spark, ids, x), cfg)
    try:
        ours = _collect(search(handle, _df(spark, ids, x)))
        one = _collect(search(handle, _df(spark, ["lonely"], x[:1]), 3))
        # an injected first-attempt failure in the search stage is retried by Spark (the
        # session runs local[2,4]) and the result equals a clean run
        assert _collect(search(handle, _df(spark, ids, x), fail_stage="search")) == ours
        assert _collect(search(handle, _df(spark, ids, x), fail_stage="embed")) == ours
    finally:
        handle.unpersist()
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    assert_same_topk(ours, _brute_force(x, ids, 10), lambda a, b: float(sims[int(a[1:]), int(b[1:])]))
    assert all(len(v) == 4 for v in ours.values())
    # a query not in the index gets up to k results, itself being absent
    assert one["lonely"][0][0] == "p00000" and len(one["lonely"]) == 3
