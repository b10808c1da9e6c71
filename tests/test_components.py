"""Connected components: the numpy core and the Spark large-star / small-star job.

Expected groups always come from networkx and/or scipy.sparse.csgraph, never from the code
under test. Graphs are small (a few hundred vertices) but include the worst case for
label propagation (paths of length 200, in sorted, reversed and shuffled id order).
"""

from __future__ import annotations

import logging
import random
import re

import networkx as nx
import numpy as np
import pytest
from listing_dedup.errors import InputError
from listing_dedup.graph.components import components_numpy, components_on_driver, connected_components
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as scipy_cc

LOGGER = "listing_dedup.graph.components"


# --------------------------------------------------------------------------- references


def expected_nx(ids, src, dst) -> dict[str, tuple[str, int]]:
    """posting_id -> (min id of its component, component size), by networkx.

    Edges with an endpoint outside ``ids`` are ignored (the documented contract)."""
    known = set(ids)
    g = nx.Graph()
    g.add_nodes_from(known)
    g.add_edges_from((s, d) for s, d in zip(src, dst) if s in known and d in known)
    out = {}
    for comp in nx.connected_components(g):
        gid, size = min(comp), len(comp)
        out.update({v: (gid, size) for v in comp})
    return out


def expected_scipy(ids, src, dst) -> dict[str, tuple[str, int]]:
    """The same by scipy.sparse.csgraph, with its own (dict) id indexing."""
    uniq = sorted(set(ids))
    index = {v: i for i, v in enumerate(uniq)}
    pairs = [(index[s], index[d]) for s, d in zip(src, dst) if s in index and d in index]
    rows = np.array([p[0] for p in pairs], dtype=np.int64)
    cols = np.array([p[1] for p in pairs], dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(len(uniq), len(uniq)))
    _, labels = scipy_cc(graph, directed=False)
    members: dict[int, list[str]] = {}
    for v, lab in zip(uniq, labels):
        members.setdefault(int(lab), []).append(v)
    return {v: (min(ms), len(ms)) for ms in members.values() for v in ms}


# --------------------------------------------------------------------------- graphs


def path(ids):
    return list(ids[:-1]), list(ids[1:])


def random_graph(rng: random.Random, n: int, m: int, prefix: str):
    """n vertices with unpadded numeric suffixes (string order != numeric order), m random
    edges plus duplicates, reversed copies and self-loops."""
    ids = [f"{prefix}{i}" for i in range(n)]
    src, dst = [], []
    for _ in range(m):
        a, b = rng.choice(ids), rng.choice(ids)
        src.append(a)
        dst.append(b)
    k = len(src)
    for i in rng.sample(range(k), k // 5):  # reversed duplicates
        src.append(dst[i])
        dst.append(src[i])
    for i in rng.sample(range(k), k // 10):  # exact duplicates
        src.append(src[i])
        dst.append(dst[i])
    for v in rng.sample(ids, 5):  # self-loops
        src.append(v)
        dst.append(v)
    return ids, src, dst


def zoo_graph(seed: int = 7):
    """Many shapes in one vertex set (disjoint id spaces), run as one Spark job."""
    rng = random.Random(seed)
    ids: list[str] = []
    src: list[str] = []
    dst: list[str] = []

    def add(vs, s, d):
        ids.extend(vs)
        src.extend(s)
        dst.extend(d)

    # Paths of 200: sorted order, reversed order, shuffled unpadded labels.
    a = [f"a{i:03d}" for i in range(200)]
    add(a, *path(a))
    b = [f"b{i:03d}" for i in range(200)]
    add(b, *path(b[::-1]))
    c = [f"c{i}" for i in range(200)]
    c_order = c[:]
    rng.shuffle(c_order)
    add(c, *path(c_order))
    # Star whose centre is the largest id, star whose centre is the smallest.
    d = [f"d{i:02d}" for i in range(40)]
    add(d, [d[-1]] * 39, d[:-1])
    e = [f"e{i:02d}" for i in range(40)]
    add(e, e[1:], [e[0]] * 39)
    # A cycle and a complete graph K6.
    f = [f"f{i}" for i in range(30)]
    add(f, f, f[1:] + f[:1])
    k = [f"k{i}" for i in range(6)]
    ks = [(x, y) for x in k for y in k if x < y]
    add(k, [x for x, _ in ks], [y for _, y in ks])
    # Sparse random part (several components, singletons).
    r_ids, r_src, r_dst = random_graph(rng, 150, 90, "r")
    add(r_ids, r_src, r_dst)
    # Singletons, one with a self-loop; non-ASCII ids (code point order).
    s = [f"s{i}" for i in range(50)]
    add(s, ["s3"], ["s3"])
    u = ["\u00e9t\u00e9", "Zeta", "zeta", "\u00c5ngstr\u00f6m", "\u65e5\u672c"]
    add(u, ["zeta", u[4], "Zeta", u[0]], [u[0], "zeta", u[3], "Zeta"])
    # Duplicates, reversed copies and self-loops over the whole thing.
    n_edges = len(src)
    for i in rng.sample(range(n_edges), 60):
        src.append(dst[i])
        dst.append(src[i])
    for i in rng.sample(range(n_edges), 30):
        src.append(src[i])
        dst.append(dst[i])
    for v in rng.sample(ids, 20):
        src.append(v)
        dst.append(v)
    # Shuffle the edge list so nothing depends on input order.
    order = list(range(len(src)))
    rng.shuffle(order)
    return ids, [src[i] for i in order], [dst[i] for i in order]


# --------------------------------------------------------------------------- Spark helpers


def run_spark(spark, ids, src, dst, where="spark", **kwargs) -> dict[str, tuple[str, int]]:
    """The Spark rounds (``where="spark"``) or the driver path the job takes for small graphs
    (``"driver"``: components_on_driver), on DataFrames of ``ids`` and the edges."""
    from pyspark.sql.types import IntegerType, StringType

    vertices = spark.createDataFrame([(v,) for v in ids], "posting_id string")
    edges = spark.createDataFrame(list(zip(src, dst)), "src string, dst string")
    out = connected_components(vertices, edges, **kwargs) if where == "spark" else components_on_driver(vertices, edges)
    types = {f.name: f.dataType for f in out.schema.fields}
    assert list(types) == ["posting_id", "group_id", "group_size"]
    assert isinstance(types["posting_id"], StringType)
    assert isinstance(types["group_id"], StringType)
    assert isinstance(types["group_size"], IntegerType)
    rows = out.collect()
    got = {r.posting_id: (r.group_id, r.group_size) for r in rows}
    assert len(got) == len(rows), "one row per vertex"
    return got


def iterations_logged(caplog) -> int:
    msgs = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    counts = [int(m) for msg in msgs for m in re.findall(r"after (\d+) ", msg)]
    assert counts, f"no iteration count logged: {msgs}"
    return counts[-1]


# --------------------------------------------------------------------------- references agree


def test_references_agree_with_each_other():
    ids, src, dst = zoo_graph()
    assert expected_nx(ids, src, dst) == expected_scipy(ids, src, dst)


# --------------------------------------------------------------------------- numpy core


@pytest.mark.parametrize("seed", range(12))
def test_numpy_core_random_graphs(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 300)
    ids, src, dst = random_graph(rng, n, rng.randint(0, 2 * n), "v")
    rng.shuffle(ids)
    want = expected_nx(ids, src, dst)
    got = components_numpy(ids, src, dst)
    assert len(got) == len(ids)
    assert list(got) == [want[v][0] for v in ids]


def test_numpy_core_zoo_and_paths():
    ids, src, dst = zoo_graph()
    want = expected_scipy(ids, src, dst)
    got = components_numpy(ids, src, dst)
    assert list(got) == [want[v][0] for v in ids]
    # The path labelled backwards and a path of 2000 (still instant in numpy).
    long = [f"p{i}" for i in range(2000)]
    got = components_numpy(long, *path(long[::-1]))
    assert set(got) == {"p0"}


def test_numpy_core_edge_cases():
    # Empty input.
    got = components_numpy([], [], [])
    assert isinstance(got, np.ndarray) and got.shape == (0,)
    # No vertices but edges: nothing to label.
    assert components_numpy([], ["a"], ["b"]).shape == (0,)
    # No edges: every vertex is its own group.
    assert list(components_numpy(["b", "a", "c"], [], [])) == ["b", "a", "c"]
    # Unknown endpoints are dropped; duplicate ids keep their position; self-loops are fine.
    got = components_numpy(["b", "a", "c", "b", "d"], ["b", "c", "x", "d"], ["a", "zz", "d", "d"])
    assert list(got) == ["a", "a", "c", "a", "d"]
    # Null endpoints are dropped like unknown ones.
    assert list(components_numpy(["a", "b"], ["a", None], [None, "b"])) == ["a", "b"]
    # String order, not numeric order: "p10" < "p9".
    assert list(components_numpy(["p9", "p10"], ["p9"], ["p10"])) == ["p10", "p10"]
    assert all(isinstance(g, str) for g in got)
    with pytest.raises(ValueError, match="length"):
        components_numpy(["a"], ["a", "b"], ["a"])


# --------------------------------------------------------------------------- Spark


def test_spark_zoo_matches_networkx_and_scipy(spark, caplog):
    ids, src, dst = zoo_graph()
    want = expected_nx(ids, src, dst)
    assert want == expected_scipy(ids, src, dst)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        got = run_spark(spark, ids, src, dst)
    assert got == want
    # Sanity of the fixture itself: the long paths are single components.
    assert got["a150"] == ("a000", 200)
    assert got["b007"] == ("b000", 200)
    assert got["c77"] == ("c0", 200)
    assert got["s3"] == ("s3", 1)
    assert got["\u65e5\u672c"] == ("Zeta", 5)  # code point order: "Z" < "z" < "\u00c5" < ...
    # O(log^2 n) rounds, not O(n) like label propagation on a path of 200.
    assert 2 <= iterations_logged(caplog) <= 20


@pytest.mark.parametrize(
    "seed, n, m, checkpoint_every",
    [(1, 300, 120, 1), (2, 300, 280, 1), (3, 250, 500, 3)],
)
def test_spark_random_graphs(spark, caplog, seed, n, m, checkpoint_every):
    rng = random.Random(seed)
    ids, src, dst = random_graph(rng, n, m, "x")
    want = expected_scipy(ids, src, dst)
    assert want == expected_nx(ids, src, dst)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        got = run_spark(spark, ids, src, dst, checkpoint_every=checkpoint_every)
    assert got == want
    assert iterations_logged(caplog) <= 20


@pytest.mark.parametrize("seed, n, m", [(4, 300, 280), (5, 200, 600)])
def test_driver_path_random_graphs(spark, seed, n, m):
    rng = random.Random(seed)
    ids, src, dst = random_graph(rng, n, m, "x")
    assert run_spark(spark, ids, src, dst, where="driver") == expected_nx(ids, src, dst)


def test_driver_path_zoo_and_edge_rules(spark):
    ids, src, dst = zoo_graph()
    assert run_spark(spark, ids, src, dst, where="driver") == expected_nx(ids, src, dst)
    # the same rules as the Spark rounds: unknown endpoints, null edges, loops, repeated ids
    ids = ["a", "b", "c", "d", "b", "a"]
    src = ["a", "b", "zz", "c", None, "d"]
    dst = ["b", "yy", "c", None, "d", "d"]
    assert run_spark(spark, ids, src, dst, where="driver") == {
        "a": ("a", 2),
        "b": ("a", 2),
        "c": ("c", 1),
        "d": ("d", 1),
    }
    assert run_spark(spark, [], ["a"], ["b"], where="driver") == {}
    assert run_spark(spark, ["v1", "v0"], [], [], where="driver") == {"v0": ("v0", 1), "v1": ("v1", 1)}


def test_spark_no_edges_all_singletons(spark, caplog):
    ids = [f"v{i}" for i in range(20)]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        got = run_spark(spark, ids, [], [])
    assert got == {v: (v, 1) for v in ids}
    assert iterations_logged(caplog) == 1  # the confirming round only


def test_spark_empty_vertex_set(spark):
    assert run_spark(spark, [], [], []) == {}
    # Edges without vertices are dropped, not invented into vertices.
    assert run_spark(spark, [], ["a", "b"], ["b", "c"]) == {}


def test_spark_drops_unknown_endpoints_and_duplicate_vertices(spark):
    ids = ["a", "b", "c", "d", "b", "a"]
    src = ["a", "b", "zz", "c", None, "d"]
    dst = ["b", "yy", "c", None, "d", "d"]
    got = run_spark(spark, ids, src, dst)
    # Only a-b survives: zz, yy are unknown, the null edges and the d-d loop add nothing.
    assert got == {"a": ("a", 2), "b": ("a", 2), "c": ("c", 1), "d": ("d", 1)}
    assert got == expected_nx(ids, src, dst)


def test_spark_group_ids_stable_across_reruns(spark):
    rng = random.Random(11)
    ids, src, dst = random_graph(rng, 120, 80, "q")
    first = run_spark(spark, ids, src, dst)
    # Rerun: vertices in another order, edges reversed and shuffled, an extra redundant edge
    # inside an existing component, plus a brand-new component. Memberships of the old
    # components are unchanged, so their ids must be too.
    ids2 = ids[::-1] + ["new1", "new0"]
    pairs = list(zip(dst, src)) + [("new1", "new0")]
    big = max(set(first.values()), key=lambda t: t[1])[0]
    members = sorted(v for v, (g, _) in first.items() if g == big)
    pairs.append((members[-1], members[0]))
    rng.shuffle(pairs)
    second = run_spark(spark, ids2, [p[0] for p in pairs], [p[1] for p in pairs])
    assert {v: second[v] for v in ids} == first
    assert second["new1"] == ("new0", 2)
    assert second == expected_nx(ids2, [p[0] for p in pairs], [p[1] for p in pairs])


def test_spark_raises_when_not_converged(spark):
    ids = [f"a{i:03d}" for i in range(64)]
    with pytest.raises(RuntimeError, match=r"max_iterations=2\b"):
        run_spark(spark, ids, *path(ids), max_iterations=2)


def test_spark_rejects_bad_input(spark):
    v = spark.createDataFrame([("a",)], "posting_id string")
    e = spark.createDataFrame([("a", "a")], "src string, dst string")
    with pytest.raises(InputError, match="posting_id"):
        connected_components(spark.createDataFrame([("a",)], "id string"), e)
    with pytest.raises(InputError, match="dst"):
        connected_components(v, spark.createDataFrame([("a",)], "src string"))
    with pytest.raises(InputError, match="string"):
        connected_components(v, spark.createDataFrame([(1, 2)], "src long, dst long"))
    with pytest.raises(ValueError, match="max_iterations"):
        connected_components(v, e, max_iterations=0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        connected_components(v, e, checkpoint_every=0)
