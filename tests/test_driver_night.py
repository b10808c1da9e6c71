"""The driver plan of an incremental night (search/driver_night.py): its list update against the
pandas reference (search/incremental.update_neighbours), and a whole night's rounds against a
full night computed by brute force (numpy top-k, search/blender.blend_numpy for INB) on the same
catalog: an exact index (one list) and the inserted listings' search reaching every listing, so
the two must agree. No Spark."""

from __future__ import annotations

import numpy as np
import pandas as pd
from listing_dedup.search.blender import blend_numpy
from listing_dedup.search.driver_night import (
    DriverState,
    RoundArrays,
    _list_order,
    driver_rounds,
    has_state,
    layout_of,
    load_state,
    prune_states,
    read_npy,
    reverse_rows,
    save_state,
    scan_probed,
    update_lists,
    write_npy,
)
from listing_dedup.search.incremental import update_neighbours
from listing_dedup.search.indexer import assign_lists, list_layout, probe_lists, scan_lists

K, DEPTH, T = 4, 6, 0.6


def catalog(seed: int, n: int = 150, d: int = 6, n_centres: int = 35):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_centres, d))
    x = centres[rng.integers(0, n_centres, n)] + 0.35 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return rng, centres, x.astype(np.float32)


def brute(x: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best ``depth`` other rows (score desc, then row), -1 / -inf padded."""
    s = (x.astype(np.float64) @ x.astype(np.float64).T).astype(np.float32)
    np.fill_diagonal(s, -np.inf)
    n = len(x)
    ids = np.full((n, depth), -1, dtype=np.int32)
    sc = np.full((n, depth), -np.inf, dtype=np.float32)
    for i in range(n):
        o = np.lexsort((np.arange(n), -s[i]))[: min(depth, n - 1)]
        ids[i, : len(o)], sc[i, : len(o)] = o, s[i, o]
    return ids, sc


def full_night(x: np.ndarray) -> list[RoundArrays]:
    """Round 0 and one INB round by brute force (the reference of a full night)."""
    i0, s0 = brute(x, DEPTH)
    ok = (i0[:, :K] >= 0) & (s0[:, :K].astype(np.float64) >= T)
    src = np.repeat(np.arange(len(x)), ok.sum(1))
    x1 = blend_numpy(x, src, i0[:, :K][ok], s0[:, :K][ok])
    i1, s1 = brute(x1, DEPTH)
    one = np.zeros(len(x), dtype=np.int32)  # one IVF list: every vector in list 0
    return [RoundArrays(i0, s0, x, one), RoundArrays(i1, s1, x1, one)]


def night_two(seed: int, n_deleted: int = 5):
    """Yesterday's catalog and tonight's: ``n_deleted`` deleted, 4 changed (a new vector), 6 added."""
    rng, centres, x = catalog(seed)
    ids = np.array([f"p{i:03d}" for i in range(len(x))])
    tonight = dict(zip(ids.tolist(), x))
    deleted = rng.choice(ids, n_deleted, replace=False)
    for p in deleted:
        del tonight[p]
    changed = rng.choice(sorted(tonight), 4, replace=False)
    new = {}
    for p in [*changed, *(f"n{i:02d}" for i in range(6))]:
        v = centres[rng.integers(0, len(centres))] + 0.35 * rng.normal(size=x.shape[1])
        new[p] = (v / np.linalg.norm(v)).astype(np.float32)
    tonight.update(new)
    return ids, x, tonight, set(deleted) | set(changed), new


def test_update_lists_equals_the_pandas_reference():
    """Yesterday's lists, tonight's removed and inserted listings and the inserted ones' search:
    the array update gives the reference's lists (rows and scores) and the same stale lists."""
    n_stale = 0
    for seed in (1, 2, 3):
        ids, x, tonight, removed, new = night_two(seed, n_deleted=25)
        prev_i, prev_s = brute(x, DEPTH)
        now_ids = np.array(sorted(tonight))
        xn = np.stack([tonight[p] for p in now_ids])
        inserted = np.isin(now_ids, list(new))
        # the inserted listings' search against tonight's catalog, at a reach of DEPTH (the ANN
        # plan's: not exhaustive, so the floor rule and stale lists are exercised)
        all_i, all_s = brute(xn, DEPTH)
        f_i, f_s = all_i[inserted], all_s[inserted]
        # yesterday's lists in tonight's rows (-2: a neighbour gone tonight)
        where = {p: i for i, p in enumerate(now_ids)}
        p_i = np.full((len(now_ids), DEPTH), -1, dtype=np.int32)
        p_s = np.full((len(now_ids), DEPTH), -np.inf, dtype=np.float32)
        for r, p in enumerate(ids):
            if p in where and p not in new:
                p_i[where[p]] = [where.get(ids[j], -2) if j >= 0 else -1 for j in prev_i[r]]
                p_s[where[p]] = prev_s[r]
        got_i, got_s, stale, _ = update_lists(p_i, p_s, inserted, f_i, f_s, k=K, depth=DEPTH)

        lists = pd.DataFrame(
            [(ids[r], ids[j], prev_s[r, c]) for r in range(len(ids)) for c, j in enumerate(prev_i[r]) if j >= 0],
            columns=["src", "dst", "score"],
        )
        found = pd.DataFrame(
            [
                (now_ids[r], now_ids[j], all_s[r, c])
                for r in np.flatnonzero(inserted)
                for c, j in enumerate(all_i[r])
                if j >= 0
            ],
            columns=["src", "dst", "score"],
        )
        gone = removed | {p for p in ids if p not in tonight}
        want, want_stale = update_neighbours(lists, gone, found, k=K, depth=DEPTH)
        assert {now_ids[s] for s in stale} == want_stale
        n_stale += len(want_stale)
        rows = [
            (now_ids[r], now_ids[j], float(got_s[r, c]))
            for r in range(len(now_ids))
            if now_ids[r] not in want_stale
            for c, j in enumerate(got_i[r])
            if j >= 0
        ]
        mine = pd.DataFrame(rows, columns=["src", "dst", "score"])
        key = ["src", "dst"]
        pd.testing.assert_frame_equal(
            mine.sort_values(key).reset_index(drop=True),
            want.assign(score=want["score"].astype(float)).sort_values(key).reset_index(drop=True),
        )
    assert n_stale, "the cases exercise stale lists"


def test_a_driver_night_equals_a_full_night_of_its_catalog():
    """Yesterday's full night, tonight's delta through driver_rounds with an exhaustive reach:
    tonight's lists of both rounds and the blended vectors are those of a full night of
    tonight's catalog (brute force), and only part of the catalog was searched and blended."""
    ids, x, tonight, removed, new = night_two(4)
    prev = DriverState(ids, full_night(x), DEPTH)
    now_ids = np.array(sorted(tonight))
    xn = np.stack([tonight[p] for p in now_ids])
    got = driver_rounds(
        prev,
        removed=removed | {p for p in ids if p not in tonight},
        new_ids=list(new),
        new_vectors=np.stack(list(new.values())),
        centroids=np.ones((1, x.shape[1]), dtype=np.float32) / np.sqrt(x.shape[1]),
        nprobe=1,
        k=K,
        depth=DEPTH,
        thresholds=(T,),
        search_depth=len(now_ids),
    )
    want = full_night(xn)
    assert list(got.ids) == list(now_ids)
    for r in (0, 1):
        g, w = got.rounds[r], want[r]
        # each list is a prefix of the full night's (the slack past k is spent by deletions), at least k long
        held = g.ids >= 0
        assert (held.sum(1) >= K).all() and (held[:, :-1] >= held[:, 1:]).all()
        np.testing.assert_array_equal(np.where(held, g.ids, -1), np.where(held, w.ids, -1))
        np.testing.assert_allclose(np.where(held, g.scores, 0), np.where(held, w.scores, 0), rtol=0, atol=2e-6)
        np.testing.assert_allclose(g.vectors, w.vectors, rtol=0, atol=2e-6)
    assert got.counts["searched"] < len(now_ids) // 4
    assert 0 < got.counts["blended1"] < len(now_ids)


def test_the_state_files_round_trip_and_a_partial_folder_is_no_state(tmp_path):
    ids, x, *_ = night_two(5)
    state = DriverState(ids, full_night(x), DEPTH)
    wh = str(tmp_path)
    save_state(wh, "2026-07-01", "run1", state)
    back = load_state(wh, "2026-07-01", "run1")
    assert list(back.ids) == list(ids) and back.depth == DEPTH
    for a, b in zip(back.rounds, state.rounds, strict=True):
        for f in ("ids", "scores", "vectors", "assign"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert has_state(wh, "2026-07-01", "run1") and not has_state(wh, "2026-07-01", "run2")
    save_state(wh, "2026-07-02", "run3", state)
    (tmp_path / "_state/lists/2026-07-02/run3/meta.json").unlink()  # a crash before the folder was complete
    assert not has_state(wh, "2026-07-02", "run3")
    prune_states(wh, "2026-07-02")
    assert not has_state(wh, "2026-07-01", "run1")


def test_the_state_files_are_the_bytes_np_save_writes(tmp_path):
    """write_npy streams the array's own memory after the header: the file is np.save's, byte
    for byte (a state written before reads the same), and read_npy gives the array back."""
    rng = np.random.default_rng(3)
    arrays = {
        "vectors": rng.random((7, 5), dtype=np.float32),
        "ids": np.array(["a", "bb", "ccc"]),
        "slice": np.arange(24, dtype=np.int64).reshape(4, 6)[:, 1:4],  # not contiguous
        "fortran": np.asfortranarray(rng.random((3, 4))),
        "empty": np.zeros((0, 5), np.int32),
        "scalar_rows": np.array([1.5, -0.0, np.inf], np.float64),
    }
    for name, a in arrays.items():
        ref = tmp_path / f"{name}.ref.npy"
        np.save(ref, np.ascontiguousarray(a), allow_pickle=False)
        write_npy(str(tmp_path / f"sub/{name}.npy"), a)
        assert (tmp_path / f"sub/{name}.npy").read_bytes() == ref.read_bytes(), name
        back = read_npy(str(tmp_path / f"sub/{name}.npy"))
        assert back.dtype == a.dtype and back.flags.writeable
        np.testing.assert_array_equal(back, a)


def test_scan_probed_is_scan_lists():
    """The driver's scan of many queries at once gives indexer.scan_lists's result (the Spark
    search's scan): several IVF lists, a few probed a query, k larger than some lists."""
    rng, _, x = catalog(6, n=400, d=8)
    centroids = x[rng.choice(len(x), 9, replace=False)]
    lists = np.argmax(x @ centroids.T, axis=1)
    order, offsets = list_layout(lists, len(centroids))
    stored = np.ascontiguousarray(x[order])
    q = x[rng.choice(len(x), 60, replace=False)]
    probe = probe_lists(q, centroids, 3)
    for k in (5, 40, 200):  # 200: more than some queries' probed rows (padded columns)
        want_s, want_i = scan_lists(q, probe, stored, offsets, k)
        got_s, got_i = scan_probed(q, probe, stored, offsets, k)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_s, want_s)


def test_list_order_is_the_three_key_lexsort():
    """The list update's entry order (src, then score desc, then dst; stable) from two one-key
    sorts equals np.lexsort's: ties in score and in all three keys, -0.0 and 0.0, -inf, negative
    ids."""
    rng = np.random.default_rng(3)
    few = np.array([-0.0, 0.0, 0.5, -0.5, 0.25, 1.0, -np.inf, 1 / 3], dtype=np.float32)
    for t in range(20):
        m = 3000
        src, dst = rng.integers(0, 40, m), rng.integers(-3, 200, m)
        sc = rng.choice(few, m) if t % 2 else rng.standard_normal(m).astype(np.float32)
        np.testing.assert_array_equal(_list_order(src, dst, sc), np.lexsort((dst, -sc, src)))


def test_the_rules_read_the_same_edges_from_the_prefix():
    """The driver plan's rule rows (rule_prefix) give select_edges_match the edges of the whole
    top k, for the threshold, relative, mutual and min2 rules."""
    from listing_dedup.config import MatchConf
    from listing_dedup.graph.edges import select_edges_match
    from listing_dedup.search.driver_night import rule_prefix

    ids, x, *_ = night_two(8)
    state = DriverState(ids, full_night(x), DEPTH)
    last = state.rounds[-1]
    ok = last.ids[:, :K] >= 0
    whole = pd.DataFrame(
        {
            "src": ids[np.repeat(np.arange(len(ids)), ok.sum(1))],
            "dst": ids[last.ids[:, :K][ok]],
            "score": last.scores[:, :K][ok],
        }
    )
    rules = [
        MatchConf(threshold=0.9),
        MatchConf(threshold=0.95, relative=True, relative_rank=3, relative_margin=0.02, relative_floor=0.5),
        MatchConf(threshold=0.97, mutual_rank=2, mutual_floor=0.6),
        MatchConf(threshold=0.97, min2=True, min2_threshold=0.7),
    ]
    for rule in rules:
        prefix = rule_prefix(state, K, rule)
        assert len(prefix) < len(whole)
        want = select_edges_match(whole, rule)
        assert len(want)
        pd.testing.assert_frame_equal(select_edges_match(prefix, rule), want)


# --------------------------------------------------------------------------------------
# the graph on the driver (graph/driver_graph.py): the Spark stages' rules on vertices


def _graph(seed: int, n: int = 60, m: int = 260):
    rng = np.random.default_rng(seed)
    ids = np.asarray(sorted(f"p{i:03d}" for i in rng.choice(1000, n, replace=False)), dtype=object)
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    s = rng.choice(np.linspace(0.5, 1.0, 11), m).astype(np.float32)  # ties between parts
    return rng, ids, a, b, s


def test_union_edges_keeps_each_pairs_best_score_as_the_spark_union():
    from listing_dedup.graph.driver_graph import union_edges

    rng, ids, a, b, s = _graph(1)
    c, d = rng.integers(-1, len(ids), 80), rng.integers(0, len(ids), 80)  # -1: not a kept listing
    t = rng.random(80).astype(np.float32)
    got = union_edges(len(ids), [(np.r_[a, b], np.r_[b, a], np.r_[s, s]), (np.r_[c, d], np.r_[d, c], np.r_[t, t])])
    ref = pd.DataFrame({"src": np.r_[a, b, c, d], "dst": np.r_[b, a, d, c], "score": np.r_[s, s, t, t]})
    ref = ref[(ref["src"] >= 0) & (ref["dst"] >= 0) & (ref["src"] != ref["dst"])]
    ref = ref.groupby(["src", "dst"], as_index=False)["score"].max().sort_values(["src", "dst"])
    assert got.src.tolist() == ref["src"].tolist() and got.dst.tolist() == ref["dst"].tolist()
    assert got.score.dtype == np.float32 and np.array_equal(got.score, ref["score"].to_numpy(np.float32))


def test_group_codes_are_the_margin_components_and_guard_of_the_spark_stages():
    """The group margin (margin_keep), the components and the guard's re-cut on vertices give
    the guard's reference groups (graph/guard.split_large_numpy on the margin's edges)."""
    from listing_dedup.graph.driver_graph import group_codes, union_edges
    from listing_dedup.graph.guard import margin_keep, split_large_numpy

    for seed in range(3):
        rng, ids, a, b, s = _graph(seed, m=120)
        e = union_edges(len(ids), [(np.r_[a, b], np.r_[b, a], np.r_[s, s])])
        for margin, guard, max_group in ((0.0, False, 50), (0.1, True, 4), (0.0, True, 3)):
            g, n_cut, levels = group_codes(
                len(ids), e, margin=margin, guard=guard, base_threshold=0.5, max_group=max_group, step=0.05
            )
            keep = margin_keep(e.src, e.dst, e.score.astype(np.float64), margin, len(ids))
            assert n_cut == (~keep).sum() and n_cut % 2 == 0
            big = max_group if guard else len(ids) + 1
            ref = split_large_numpy(
                ids, ids[e.src[keep]], ids[e.dst[keep]], e.score[keep], base_threshold=0.5, max_group=big, step=0.05
            )
            assert ids[g].tolist() == list(ref)
            assert levels == 0 or guard


def test_pair_scores_read_both_lists_top_k():
    from listing_dedup.graph.driver_graph import pair_scores

    rng = np.random.default_rng(3)
    n, k = 30, 4
    rows = np.where(rng.random(n) < 0.8, rng.permutation(n), -1)  # -1: a listing without a vector
    top = np.full((n, k), -1, dtype=np.int32)
    sc = np.zeros((n, k), dtype=np.float32)
    for r in range(n):
        m = rng.integers(0, k + 1)
        top[r, :m] = rng.choice(n, m, replace=False)
        sc[r, :m] = np.sort(rng.random(m))[::-1]
    a, b = rng.integers(0, n, 200), rng.integers(0, n, 200)
    got = pair_scores(a, b, rows, top, sc)
    for x, y, v in zip(a, b, got):
        found = [
            float(sc[rows[p], j])
            for p, q in ((x, y), (y, x))
            if rows[p] >= 0 and rows[q] >= 0
            for j in range(k)
            if top[rows[p], j] == rows[q]
        ]
        assert (np.isnan(v) and not found) or v == max(found)


def test_match_table_is_explained_match_sets_order_and_schema():
    """Each listing's matches by score desc, then id, both directions of each pair, its
    explanations aligned; empty arrays for a listing without matches; the table's schema."""
    import pyarrow as pa
    from listing_dedup.graph.driver_graph import Explained, match_table
    from listing_dedup.sink.schemas import OUTPUT_DATA_SCHEMAS, normalize_arrow_schema

    ids = np.asarray(["a", "b", "c", "d", "e"], dtype=object)
    maps = [[("lexical", 0.9), ("fused", 0.9)], [("fused", 0.95), ("phash", 1.0)], [], [("phash", 0.9)]]
    explained = Explained(
        np.asarray([0, 0, 1, 0]),
        np.asarray([1, 2, 2, 3]),
        np.asarray([0.9, 0.95, 0.9, 0.9], dtype=np.float32),
        np.asarray(["threshold", "threshold+phash", "relative", "phash"], dtype=object),
        pa.array(maps, type=pa.map_(pa.string(), pa.float32())),
        pa.array([None, 0, None, 6], type=pa.int32()),
    )
    t = match_table(ids, explained, "r1", normalize_arrow_schema(OUTPUT_DATA_SCHEMAS["matches"]))
    assert t.schema == normalize_arrow_schema(OUTPUT_DATA_SCHEMAS["matches"])
    rows = {r["posting_id"]: r for r in t.to_pylist()}
    assert rows["a"]["match_ids"] == ["c", "b", "d"]  # 0.95, then 0.9 by id
    assert rows["a"]["kept_by"] == ["threshold+phash", "threshold", "phash"]
    assert rows["a"]["phash_distance"] == [0, None, 6]
    assert rows["a"]["signal_scores"][0] == [("fused", 0.949999988079071), ("phash", 1.0)]
    assert rows["c"]["match_ids"] == ["a", "b"] and rows["c"]["kept_by"] == ["threshold+phash", "relative"]
    assert rows["d"]["match_ids"] == ["a"] and rows["d"]["signal_scores"] == [[("phash", 0.8999999761581421)]]
    assert rows["e"]["match_ids"] == [] and rows["e"]["scores"] == [] and rows["e"]["kept_by"] == []
    assert {r["run_id"] for r in rows.values()} == {"r1"}


def test_vertex_phash_bits_is_rerank_phash_bits():
    from listing_dedup.graph.driver_graph import vertex_phash_bits
    from listing_dedup.graph.rerank import phash_bits

    rng = np.random.default_rng(5)
    hexes = [f"{int(v):016x}" for v in rng.integers(0, 2**63, 40, dtype=np.int64)]
    hexes += ["ffffffffffffffff", "FFFF0000ffff0000", "0000000000000000", None, float("nan"), "xyz", "abc", "12345"]
    hexes += ["0123456789abcdefg", " 0123456789abcdef"]
    phash = np.asarray(hexes, dtype=object)
    a, b = rng.integers(0, len(phash), 500), rng.integers(0, len(phash), 500)
    want = phash_bits(phash[a].tolist(), phash[b].tolist())
    np.testing.assert_array_equal(vertex_phash_bits(phash, a, b), want)
    assert np.isnan(want).any() and (want == 64).any() or (want > 40).any()
    assert vertex_phash_bits(phash, a[:0], b[:0]).shape == (0,)


def test_the_edge_table_is_the_edge_frame(spark):
    """Edges.table (the ids taken from one Arrow string array) holds Edges.frame's rows, and
    to_frame makes the same Spark frame of either (the edges stage hands it the table)."""
    import pyarrow as pa
    from listing_dedup.graph.driver_graph import union_edges
    from listing_dedup.search.driver_night import to_frame

    rng = np.random.default_rng(11)
    ids = np.asarray(sorted(f"p{i}" for i in rng.permutation(40)), dtype=object)
    e = union_edges(len(ids), [(rng.integers(0, 40, 300), rng.integers(0, 40, 300), rng.random(300))])
    table, frame = e.table(ids), e.frame(ids)
    assert table.equals(pa.Table.from_pandas(frame, preserve_index=False).cast(table.schema))
    assert table.schema == pa.schema([("src", pa.string()), ("dst", pa.string()), ("score", pa.float32())])
    schema = "src string, dst string, score float"
    a, b = to_frame(spark, frame, schema), to_frame(spark, table, schema)
    assert a.schema == b.schema and a.rdd.getNumPartitions() == b.rdd.getNumPartitions()
    assert a.collect() == b.collect()
    assert e.table(ids[:0]).num_rows == 0 if len(e) == 0 else union_edges(3, []).table(ids[:3]).num_rows == 0


def test_explain_undirected_is_explain_pairs():
    """The columnar explanations equal graph/explain.explain_pairs (the Spark layer's pure core)
    on the same edges: labels, per-signal scores (as the table's float32), pHash distances."""
    from listing_dedup.embed.fusion import Layout
    from listing_dedup.graph.driver_graph import explain_undirected
    from listing_dedup.graph.explain import EdgeRule, explain_pairs

    rng = np.random.default_rng(7)
    n, m = 40, 300
    layout = Layout.of({"text": 3, "lexical": 5}, {"text": 0.2, "lexical": 0.8})
    vectors = rng.normal(size=(30, layout.dim)).astype(np.float32)
    vectors[3, :3] = 0  # a listing without the text signal
    rows = np.where(np.arange(n) < 30, np.arange(n), -1)  # 10 listings without a vector
    hexes = [f"{rng.integers(0, 1 << 62):016x}" for _ in range(n)]
    phash = np.asarray([h if i % 7 else None for i, h in enumerate(hexes)], dtype=object)
    phash[5] = "not-a-hash"
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    score = rng.random(m).astype(np.float32)
    rule_score = np.where(rng.random(m) < 0.2, np.nan, rng.choice([0.2, 0.35, 0.61, 0.9, 0.95], m))
    ph_score = np.where(rng.random(m) < 0.6, np.nan, rng.random(m))
    for rule in (
        EdgeRule(None, 0.9, relative=True, relative_floor=0.3, mutual_rank=2, mutual_floor=0.6, union=("text",)),
        EdgeRule("reranker:m", 0.5, min2=True, min2_threshold=0.3),
    ):
        got = explain_undirected(
            a, b, score, phash=phash, rows=rows, vectors=vectors, layout=layout, rule=rule,
            rule_score=rule_score, phash_score=ph_score,
        )  # fmt: skip
        ref = explain_pairs(
            pd.DataFrame(
                {
                    "src": a,
                    "dst": b,
                    "score": score,
                    "_must": False,
                    "_rule": rule_score,
                    "_rr": np.nan,
                    "_ph": ph_score,
                    "_ha": phash[a],
                    "_hb": phash[b],
                    "_ea": [vectors[rows[x]] if rows[x] >= 0 else None for x in a],
                    "_eb": [vectors[rows[x]] if rows[x] >= 0 else None for x in b],
                }
            ),  # fmt: skip
            rule,
            layout,
        )
        assert got.kept_by.tolist() == ref["kept_by"].tolist()
        want = [[(k, float(np.float32(v))) for k, v in d.items()] for d in ref["signal_scores"]]
        assert got.signal_scores.to_pylist() == want
        assert got.phash_distance.to_pylist() == [None if pd.isna(v) else int(v) for v in ref["phash_distance"]]


def test_stage_arrow_commits_the_driver_rows(tmp_path):
    """DeltaSink.stage_arrow: the executors' file writer on the driver; committed, the rows read back."""
    import pyarrow as pa
    from listing_dedup.sink.delta import DeltaSink, read_table

    sink = DeltaSink(str(tmp_path))
    data = pa.table({"posting_id": ["a", "b"], "group_id": ["a", "a"], "group_size": pa.array([2, 2], pa.int32())})
    staged = sink.stage_arrow(data, "clusters", "2026-07-01")
    assert staged.rows == 2 and len(staged.files) == 1
    assert read_table(str(tmp_path), "clusters", "2026-07-01").empty if sink.table_exists("clusters") else True
    sink.commit(staged)
    got = read_table(str(tmp_path), "clusters", "2026-07-01").sort_values("posting_id")
    assert got["group_id"].tolist() == ["a", "a"] and got["group_size"].tolist() == [2, 2]


def test_the_rule_on_vertex_labels_keeps_the_edges_of_the_ids():
    """The driver graph runs the threshold rule on integer labels in posting_id order
    (rule_prefix(labels=...)): the same edges as on the posting_ids, ties by id included."""
    from listing_dedup.config import MatchConf
    from listing_dedup.graph.edges import select_edges_match
    from listing_dedup.search.driver_night import rule_prefix

    rng = np.random.default_rng(11)
    n, depth = 80, 6
    ids = np.asarray(sorted(f"id{v}" for v in rng.choice(10_000, n, replace=False)), dtype=object)
    nb = np.stack([rng.choice(np.delete(np.arange(n), i), depth, replace=False) for i in range(n)]).astype(np.int32)
    sc = np.sort(rng.choice(np.linspace(0.3, 1.0, 15), (n, depth)), axis=1)[:, ::-1].astype(np.float32)  # ties
    state = DriverState(ids, [RoundArrays(nb, sc, np.zeros((n, 2), np.float32), np.zeros(n, np.int32))], depth)
    labels = np.arange(n) * 3 + 5  # increasing: the ids' order
    rule = MatchConf(threshold=0.9, relative=True, relative_rank=2, relative_margin=0.05, relative_floor=0.3,
                     mutual_rank=2, mutual_floor=0.6)  # fmt: skip
    by_id = select_edges_match(rule_prefix(state, 4, rule), rule)
    by_label = select_edges_match(rule_prefix(state, 4, rule, labels=labels), rule)
    back = {v: i for v, i in zip(labels, ids)}
    assert len(by_id) > 20
    assert by_id["src"].tolist() == [back[v] for v in by_label["src"]]
    assert by_id["dst"].tolist() == [back[v] for v in by_label["dst"]]
    assert by_id["score"].tolist() == by_label["score"].tolist()


def ivf_night(x: np.ndarray, centroids: np.ndarray, nprobe: int) -> list[RoundArrays]:
    """A full night on an IVF index by brute force: each listing's best ``DEPTH`` among the
    listings stored in the ``nprobe`` lists it probes (FAISS's probe and assignment), round 0
    and one INB round, with each round's probed lists kept as the state keeps them."""
    out = []
    for r in (0, 1):
        assign = assign_lists(x, centroids).astype(np.int32)
        probes = probe_lists(x, centroids, nprobe).astype(np.int16)
        s = (x.astype(np.float64) @ x.astype(np.float64).T).astype(np.float32)
        scans = (assign[None, :, None] == probes[:, None, :]).any(2)  # row u scans listing v
        s = np.where(scans, s, -np.inf)
        np.fill_diagonal(s, -np.inf)
        ids = np.full((len(x), DEPTH), -1, dtype=np.int32)
        sc = np.full((len(x), DEPTH), -np.inf, dtype=np.float32)
        for i in range(len(x)):
            o = np.lexsort((np.arange(len(x)), -s[i]))[:DEPTH]
            o = o[np.isfinite(s[i, o])]
            ids[i, : len(o)], sc[i, : len(o)] = o, s[i, o]
        out.append(RoundArrays(ids, sc, x, assign, probes))
        if r == 0:
            ok = (ids[:, :K] >= 0) & (sc[:, :K].astype(np.float64) >= T)
            x = blend_numpy(x, np.repeat(np.arange(len(x)), ok.sum(1)), ids[:, :K][ok], sc[:, :K][ok])
    return out


def assert_lists_of_a_full_night(g: RoundArrays, w: RoundArrays) -> None:
    """A round's lists ``g`` hold at least ``K`` (or all of the full night's ``w``) and every
    list they hold is the full night's."""
    held = g.ids >= 0
    assert (held.sum(1) >= np.minimum(K, (w.ids >= 0).sum(1))).all()
    np.testing.assert_array_equal(np.where(held, g.ids, -1), np.where(held, w.ids, -1))


def test_an_inserted_listing_enters_the_lists_that_probe_it():
    """On an IVF index (8 lists, 2 probed) a listing's search does not scan what scans it: an
    inserted listing must enter the lists of the listings that probe its list (the reverse
    probe), not the lists its own search returned. Tonight's lists of both rounds through
    driver_rounds equal a full night's on the same index (brute force over each listing's probed
    lists), with yesterday's probed lists from the state or, from a state that kept none,
    computed; before the reverse probe (lists filled from the inserted listings' own search)
    lists differed from the full night's."""
    ids, x, tonight, removed, new = night_two(6)
    rng = np.random.default_rng(6)
    centroids = rng.normal(size=(8, x.shape[1])).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    now_ids = np.array(sorted(tonight))
    want = ivf_night(np.stack([tonight[p] for p in now_ids]), centroids, 2)
    yesterday = ivf_night(x, centroids, 2)
    without = [RoundArrays(r.ids, r.scores, r.vectors, r.assign) for r in yesterday]
    for prev_rounds in (yesterday, without):
        got = driver_rounds(
            DriverState(ids, prev_rounds, DEPTH),
            removed=removed | {p for p in ids if p not in tonight},
            new_ids=list(new),
            new_vectors=np.stack(list(new.values())),
            centroids=centroids,
            nprobe=2,
            k=K,
            depth=DEPTH,
            thresholds=(T,),
        )
        assert list(got.ids) == list(now_ids)
        for r in (0, 1):
            g, w = got.rounds[r], want[r]
            assert_lists_of_a_full_night(g, w)
            held = g.ids >= 0
            np.testing.assert_allclose(np.where(held, g.scores, 0), np.where(held, w.scores, 0), rtol=0, atol=2e-6)
            np.testing.assert_array_equal(g.probes, w.probes)
        assert got.counts["searched"] < len(now_ids) // 4


def test_a_list_that_lost_neighbours_keeps_its_floor_the_next_night():
    """Two nights on the IVF index, each through driver_rounds: night 2's deletions leave lists
    shorter than ``depth`` that did not hold every listing they scan; night 3 must not take them
    for complete (any inserted listing entering them whatever its score, never searched again
    under ``k``): night 3's lists equal a full night's of its catalog. Before complete_rows a list
    shorter than ``depth`` was taken for complete."""
    rng, centres, x = catalog(7, n=200)
    centroids = centres[:8].astype(np.float32) / np.linalg.norm(centres[:8], axis=1, keepdims=True).astype(np.float32)
    ids = np.array([f"p{i:03d}" for i in range(len(x))])
    state = DriverState(ids, ivf_night(x, centroids, 2), DEPTH)
    catalog_now = dict(zip(ids.tolist(), x))
    for night in (2, 3):
        deleted = set(rng.choice(sorted(catalog_now), 30 if night == 2 else 4, replace=False))
        for p in deleted:
            del catalog_now[p]
        new = {}
        for i in range(6):
            v = centres[rng.integers(0, len(centres))] + 0.35 * rng.normal(size=x.shape[1])
            new[f"n{night}_{i}"] = (v / np.linalg.norm(v)).astype(np.float32)
        catalog_now.update(new)
        kw = dict(centroids=centroids, nprobe=2, k=K, depth=DEPTH, thresholds=(T,))
        state = driver_rounds(state, removed=deleted, new_ids=list(new), new_vectors=np.stack(list(new.values())), **kw)
    now_ids = np.array(sorted(catalog_now))
    want = ivf_night(np.stack([catalog_now[p] for p in now_ids]), centroids, 2)
    assert list(state.ids) == list(now_ids)
    for r in (0, 1):
        assert_lists_of_a_full_night(state.rounds[r], want[r])


def test_reverse_rows_by_list_and_by_block_are_the_brute_force_pairs():
    """reverse_rows' two ways give every (u, v) with v inserted, u not, v's list among u's
    probed lists and s(u, v) >= need[u], and no other pair (brute force over all pairs)."""
    rng, _, x = catalog(8, n=300)
    centroids = x[rng.choice(len(x), 12, replace=False)]
    assign = assign_lists(x, centroids).astype(np.int32)
    probes = probe_lists(x, centroids, 3).astype(np.int16)
    inserted = np.zeros(len(x), dtype=bool)
    inserted[rng.choice(len(x), 40, replace=False)] = True
    need = rng.uniform(-0.5, 0.9, len(x)).astype(np.float32)
    need[rng.choice(len(x), 30, replace=False)] = -np.inf
    s = x @ x.T
    scans = (assign[None, :, None] == probes[:, None, :]).any(2)
    want_u, want_v = np.nonzero(scans & ~inserted[:, None] & inserted[None, :] & (s >= need[:, None]))
    want = set(zip(want_u.tolist(), want_v.tolist()))
    assert len(want) > 100
    layout = layout_of(x, assign, len(centroids))
    for by in ("list", "block"):
        u, v, sc = reverse_rows(layout, probes, assign, inserted, need, x, by=by)
        assert set(zip(u.tolist(), v.tolist())) == want and len(u) == len(want)
        np.testing.assert_allclose(sc, s[u, v], rtol=0, atol=2e-6)
