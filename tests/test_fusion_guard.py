import numpy as np
import pandas as pd
import pytest
from listing_dedup.config import FusionConf
from listing_dedup.embed.fusion import Layout, candidate_scores, fuse, fuse_blocks, signal_scores
from listing_dedup.errors import ConfigError
from listing_dedup.graph.components import components_numpy, connected_components
from listing_dedup.graph.guard import margin_cut, margin_keep, recut_codes, split_large, split_large_numpy


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_fused_inner_product_is_weighted_sum_of_cosines():
    rng = np.random.default_rng(0)
    t, lx = _unit(rng, 20, 8), _unit(rng, 20, 16)
    layout = Layout.of({"text": 8, "lexical": 16}, {"text": 0.3, "lexical": 0.7})
    f = fuse_blocks({"text": list(t), "lexical": list(lx)}, layout)
    assert f.shape == (20, 24)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(f @ f.T, 0.3 * (t @ t.T) + 0.7 * (lx @ lx.T), atol=1e-5)
    sc = signal_scores(f[:10], f[10:], layout)
    np.testing.assert_allclose(sc["text"], np.einsum("ij,ij->i", t[:10], t[10:]), atol=1e-5)
    np.testing.assert_allclose(sc["lexical"], np.einsum("ij,ij->i", lx[:10], lx[10:]), atol=1e-5)


def test_missing_signal_is_zero_block_and_nan_score():
    layout = Layout.of({"text": 2, "image": 2}, {"text": 0.5, "image": 0.5})
    f = fuse_blocks({"text": [[1, 0], [1, 0]], "image": [[0, 1], None]}, layout)
    assert f[1, 2:].tolist() == [0, 0]
    assert f[0] @ f[1] == pytest.approx(0.5)  # only the shared text evidence counts
    sc = signal_scores(f[:1], f[1:], layout)
    assert sc["text"][0] == pytest.approx(1.0) and np.isnan(sc["image"][0])


def test_fusion_weights_normalised_over_enabled_signals_and_validated():
    assert FusionConf(text=1, lexical=3, image=5).weights(["text", "lexical"]) == {"text": 0.25, "lexical": 0.75}
    with pytest.raises(ConfigError, match="fusion"):
        FusionConf(text=0, lexical=0).weights(["text", "lexical"])
    with pytest.raises(ConfigError, match="fusion.image"):
        FusionConf(image=-1)


def test_spark_fuse_and_candidate_scores(spark):
    rng = np.random.default_rng(1)
    t, lx = _unit(rng, 6, 4), _unit(rng, 6, 4)
    ids = [f"p{i}" for i in range(6)]
    layout = Layout.of({"text": 4, "lexical": 4}, {"text": 0.4, "lexical": 0.6})
    pdf = pd.DataFrame({"posting_id": ids, "v_text": list(t), "v_lexical": list(lx)})
    pdf.loc[5, "v_text"] = None
    fused = fuse(spark.createDataFrame(pdf), {"text": "v_text", "lexical": "v_lexical"}, layout).select(
        "posting_id", "emb"
    )
    got = fused.toPandas().set_index("posting_id").loc[ids]
    ref = fuse_blocks({"text": list(t[:5]) + [None], "lexical": list(lx)}, layout)
    np.testing.assert_allclose(np.stack(got["emb"].to_numpy()), ref, atol=1e-6)
    pairs = spark.createDataFrame(
        pd.DataFrame({"src": ["p0", "p1", "p5"], "dst": ["p1", "p0", "p0"], "score": [0.5, 0.5, 0.1]})
    )
    ph = spark.createDataFrame(pd.DataFrame({"src": ["p0"], "dst": ["p1"], "bits": [3], "score": [1 - 3 / 64]}))
    cand = candidate_scores(pairs, fused, layout, ph).toPandas().set_index(["posting_id", "candidate_id"])
    s01 = dict(cand.loc[("p0", "p1"), "signal_scores"])
    assert s01["text"] == pytest.approx(float(t[0] @ t[1]), abs=1e-5)
    assert s01["lexical"] == pytest.approx(float(lx[0] @ lx[1]), abs=1e-5)
    assert s01["phash"] == pytest.approx(1 - 3 / 64, abs=1e-6)
    assert "phash" not in dict(cand.loc[("p1", "p0"), "signal_scores"])  # pHash pairs are directed rows too
    assert set(dict(cand.loc[("p5", "p0"), "signal_scores"])) == {"lexical"}  # p5 has no text vector


def _chain_graph():
    # two real groups of 4 (strong edges 0.95) joined by one weak edge (0.81) into a chain of 8,
    # plus a separate small pair joined at 0.82 that must stay untouched
    e = [
        ("a1", "a2", 0.95),
        ("a2", "a3", 0.95),
        ("a3", "a4", 0.95),
        ("b1", "b2", 0.95),
        ("b2", "b3", 0.95),
        ("b3", "b4", 0.95),
        ("a4", "b1", 0.81),
        ("c1", "c2", 0.82),
    ]
    ids = sorted({x for a, b, _ in e for x in (a, b)} | {"z"})
    src = [a for a, b, _ in e] + [b for a, b, _ in e]
    dst = [b for a, b, _ in e] + [a for a, b, _ in e]
    sc = [s for *_, s in e] * 2
    return ids, src, dst, sc


def test_guard_numpy_splits_only_oversized_components():
    ids, src, dst, sc = _chain_graph()
    plain = components_numpy(ids, src, dst)
    assert len(set(plain[[ids.index(x) for x in ("a1", "b4")]])) == 1  # chained
    g = dict(zip(ids, split_large_numpy(ids, src, dst, sc, base_threshold=0.8, max_group=5, step=0.05), strict=True))
    assert {g[x] for x in ("a1", "a2", "a3", "a4")} == {"a1"}
    assert {g[x] for x in ("b1", "b2", "b3", "b4")} == {"b1"}
    assert g["c1"] == g["c2"] == "c1" and g["z"] == "z"  # small components untouched even below 0.85


def test_recut_codes_levels_by_hand():
    # a-b 0.81, b-c 0.86, c-d 0.91 (vertices 0-3), max_group 1, from 0.8 by 0.05: at 0.85 {a} {b,c,d};
    # at 0.90 {b} {c,d}; at 0.95 every vertex alone; 3 levels
    g, levels = recut_codes(4, [0, 1, 2], [1, 2, 3], [0.81, 0.86, 0.91], base_threshold=0.8, max_group=1, step=0.05)
    assert g.tolist() == [0, 1, 2, 3] and levels == 3
    # max_group 3: only the first level cuts {a,b,c,d} into {a} and {b,c,d}
    g, levels = recut_codes(4, [0, 1, 2], [1, 2, 3], [0.81, 0.86, 0.91], base_threshold=0.8, max_group=3, step=0.05)
    assert g.tolist() == [0, 1, 1, 1] and levels == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recut_codes_equals_the_reference(seed):
    rng = np.random.default_rng(seed)
    n, m = 300, 700
    ids = [f"v{i:04d}" for i in range(n)]  # zero-padded: integer order = string order
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    sc = rng.choice([0.81, 0.84, 0.87, 0.9, 0.93, 0.97], m)
    ref = split_large_numpy(
        ids, [ids[i] for i in a], [ids[i] for i in b], sc, base_threshold=0.8, max_group=6, step=0.03
    )
    g, levels = recut_codes(n, a, b, sc, base_threshold=0.8, max_group=6, step=0.03)
    assert [ids[i] for i in g] == list(ref)
    assert levels >= 1 and np.bincount(g).max() <= 6 or levels == 7  # 0.8 + 7 x 0.03 > 1: some stay large


@pytest.mark.parametrize("driver_max", [500_000, 0])  # re-cut on the driver / level by level on Spark
def test_guard_spark_equals_numpy(spark, driver_max):
    ids, src, dst, sc = _chain_graph()
    rng = np.random.default_rng(3)
    # add a random graph too
    extra = [f"r{i:02d}" for i in range(30)]
    for _ in range(45):
        a, b = rng.choice(extra, 2, replace=False)
        s = float(rng.choice([0.81, 0.86, 0.91, 0.96]))
        src += [a, b]
        dst += [b, a]
        sc += [s, s]
    ids = ids + extra
    ref = split_large_numpy(ids, src, dst, sc, base_threshold=0.8, max_group=4, step=0.05)
    v = spark.createDataFrame(pd.DataFrame({"posting_id": ids}))
    e = spark.createDataFrame(pd.DataFrame({"src": src, "dst": dst, "score": np.float32(sc)}))
    groups = connected_components(v, e.select("src", "dst"))
    out, levels = split_large(
        spark,
        groups,
        e,
        base_threshold=0.8,
        max_group=4,
        step=0.05,
        components_fn=connected_components,
        driver_max_vertices=driver_max,
    )
    got = out.toPandas().set_index("posting_id").loc[ids]
    assert got["group_id"].tolist() == list(ref)
    assert (got["group_size"] == got.groupby("group_id")["group_id"].transform("size")).all()
    assert levels >= 1


def test_margin_keep_by_hand():
    # a-b 0.95, b-c 0.90, c-d 0.93, e-f 0.80 (vertices 0-5). best: a b 0.95, c d 0.93, e f 0.80.
    # margin 0.04: b-c needs 0.95 - 0.04 = 0.91 > 0.90, cut; the others are their ends' best
    a, b, s = [0, 1, 2, 4], [1, 2, 3, 5], [0.95, 0.90, 0.93, 0.80]
    assert margin_keep(a, b, s, 0.04).tolist() == [True, False, True, True]
    # margin 0.05: 0.95 - 0.05 = 0.90, kept (on the boundary)
    assert margin_keep(a, b, s, 0.05).tolist() == [True, True, True, True]
    assert margin_keep(a, b, s, 0.0).all()
    # both directions listed: the same answer for each copy
    assert margin_keep(a + b, b + a, s + s, 0.04).tolist() == [True, False, True, True] * 2
    # the edge is judged by BOTH ends: c's best is 0.93 but b's best (0.95) rules b-c out
    assert margin_keep([1, 2], [2, 3], [0.90, 0.93], 0.04).tolist() == [True, True]  # without a-b


def test_guarded_groups_with_margin():
    from listing_dedup.quality import robust as R

    a, b, w = np.array([0, 1, 2, 4]), np.array([1, 2, 3, 5]), np.array([0.95, 0.90, 0.93, 0.80])
    g = R.guarded_groups(6, a, b, w, base_threshold=0.8, max_group=50, step=0.05, margin=0.04)
    assert g[0] == g[1] and g[2] == g[3] and g[4] == g[5] and len({g[0], g[2], g[4]}) == 3
    g = R.guarded_groups(6, a, b, w, base_threshold=0.8, max_group=50, step=0.05, margin=0.0)
    assert g[0] == g[1] == g[2] == g[3] and g[4] == g[5] != g[0]


def test_margin_cut_spark_equals_numpy(spark):
    rng = np.random.default_rng(5)
    n, m = 60, 150
    u, v = rng.integers(0, n, m), rng.integers(0, n, m)
    ok = u != v
    u, v = u[ok], v[ok]
    sc = rng.choice([0.80, 0.84, 0.86, 0.88, 0.9, 0.93, 0.97], len(u)).astype(np.float32)
    ids = np.array([f"v{i:03d}" for i in range(n)], dtype=object)
    src, dst, both = np.r_[u, v], np.r_[v, u], np.r_[sc, sc]
    keep = margin_keep(src, dst, both, 0.04, n)
    assert 0 < keep.sum() < len(keep)  # the case cuts some edges and keeps others
    e = spark.createDataFrame(pd.DataFrame({"src": ids[src], "dst": ids[dst], "score": both}))
    got = margin_cut(e, 0.04).toPandas()
    want = pd.DataFrame({"src": ids[src][keep], "dst": ids[dst][keep]})
    key = ["src", "dst"]
    assert got[key].sort_values(key).values.tolist() == want.sort_values(key).values.tolist()
    assert list(got.columns) == ["src", "dst", "score"]
    assert margin_cut(e, 0.0) is e
