"""Connected components of the match graph: the label groups.

Vertices are listings identified by a string ``posting_id``; edges are undirected pairs of
posting_ids. Every vertex gets a group, singletons included. The group id is the smallest
``posting_id`` of the component in string order (Python ``str`` order = Unicode code point
order = Spark's binary UTF-8 order), so it is deterministic and stable: a rerun in which a
component's membership is unchanged gives it the same id.

Two implementations:

* :func:`components_numpy` - pure in-memory (numpy + scipy), the reference and the tool for
  small driver-side work.
* :func:`connected_components` - Spark DataFrames, the alternating large-star / small-star
  algorithm of Kiveris et al. 2014 ("Connected Components in MapReduce and Beyond"),
  working directly on the string ids (no id indexing, no driver-side collect).

Spark algorithm, in the representation used here: the edges are directed pairs ``(c, p)``
with ``p < c`` (child points at a smaller parent), without self-loops. One *round* is

* large-star: every edge ``(c, p)`` becomes ``(c, m(p))`` where ``m(p)`` is the smallest
  of ``p`` and ``p``'s parents (a node's larger neighbours are re-attached to its smallest
  neighbour);
* small-star: for every node ``u`` with parents, ``m`` = its smallest parent; emit
  ``(u, m)`` and ``(q, m)`` for each other parent ``q`` of ``u``.

Both steps preserve connectivity. The edge set is a fixed point of both steps exactly when
it is a forest of stars: no parent has a parent itself and no child has two parents. Each
star's centre is then the smallest id of its component (every child is larger than its
parent), so ``group_id = parent`` for children and ``group_id = posting_id`` otherwise.

A round costs two shuffles (by node for large-star, which also drops duplicate edges, and
by child for small-star). It flags the output of every child whose neighbourhood it
rewrote (large-star: the parent had a parent; small-star: the child had two distinct
parents). Convergence = a round with no flagged row, found by counting flagged rows of the
materialised round output (a narrow scan). Such a round proves its input was a forest of
stars, so the count of rounds includes one final confirming round; no edge-set diff and no
driver-side collect are needed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from listing_dedup.errors import InputError
from listing_dedup.frames import _cut_lineage, _has_checkpoint_dir

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

logger = logging.getLogger(__name__)

__all__ = ["components_numpy", "components_on_driver", "connected_components"]


# --------------------------------------------------------------------------- pure core


def components_numpy(ids: Sequence[str], src: Sequence[str], dst: Sequence[str]) -> np.ndarray:
    """Group id of every entry of ``ids``: the smallest id (string order) of its component.

    ``src``/``dst`` are the endpoints of undirected edges (same length). Duplicate edges,
    both directions and self-loops are fine. Edges with an endpoint that is not in ``ids``
    or that is ``None`` are dropped (the same rule as :func:`connected_components`). ``ids``
    must be strings and may repeat; the result is aligned with ``ids`` (an object array of
    ``str``, same length).
    """
    ids_arr = np.asarray(list(ids), dtype=object)
    src_arr = np.asarray(list(src), dtype=object)
    dst_arr = np.asarray(list(dst), dtype=object)
    if src_arr.shape != dst_arr.shape:
        raise ValueError(f"src and dst differ in length: {len(src_arr)} != {len(dst_arr)}")
    if ids_arr.size == 0:
        return np.empty(0, dtype=object)

    # Sorted unique ids: index order is string order, so "min index" = "min id".
    uniq, inverse = np.unique(ids_arr, return_inverse=True)
    n = uniq.size

    def _index(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(uniq, values)
        pos_c = np.minimum(pos, n - 1)
        known = (pos < n) & (uniq[pos_c] == values) if values.size else np.zeros(0, dtype=bool)
        return pos_c, known

    # Null endpoints (None) are unknown too, as in Spark; they cannot be compared with str.
    present = np.array([a is not None and b is not None for a, b in zip(src_arr, dst_arr)], dtype=bool)
    src_arr, dst_arr = src_arr[present], dst_arr[present]
    s, s_ok = _index(src_arr)
    d, d_ok = _index(dst_arr)
    keep = s_ok & d_ok
    s, d = s[keep], d[keep]

    return uniq[component_codes(n, s, d)][inverse.reshape(-1)]


def edge_codes(ids: np.ndarray, src: Any, dst: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The edges ``src``-``dst`` (posting ids) on integer vertices: each end's position in the
    sorted ``ids`` (hash lookups, no string comparisons), for the edges whose two ends are in
    ``ids``; and that mask over the input edges (to align their other columns). With vertices
    numbered in id order, the smallest vertex of a piece is its smallest posting_id (Python's
    string order is Spark's: UTF-8 bytes sort as code points)."""
    import pandas as pd

    s = pd.Categorical(src, categories=ids).codes.astype(np.int64)
    d = pd.Categorical(dst, categories=ids).codes.astype(np.int64)
    known = (s >= 0) & (d >= 0)
    return s[known], d[known], known


def component_codes(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Component label of vertices ``0..n-1`` under the undirected integer edges ``src``-``dst``:
    the smallest vertex of its component (so, with vertices numbered in id order, the smallest
    id). Duplicate edges, both directions and self-loops are fine."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as _cc

    if n == 0:
        return np.empty(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
    _, comp = _cc(graph, directed=False)
    comp_min = np.full(comp.max() + 1, n, dtype=np.int64)
    np.minimum.at(comp_min, comp, np.arange(n))
    return comp_min[comp]


# --------------------------------------------------------------------------- Spark


def _require_string_columns(df: DataFrame, names: Sequence[str], what: str) -> None:
    from pyspark.sql.types import StringType

    fields = {f.name: f.dataType for f in df.schema.fields}
    for name in names:
        if name not in fields:
            raise InputError(f"{what} has no column '{name}' (columns: {sorted(fields)})")
        if not isinstance(fields[name], StringType):
            raise InputError(f"{what} column '{name}' must be a string, got {fields[name].simpleString()}")


def _star_round(e: DataFrame) -> DataFrame:
    """One large-star + small-star round on the edges ``e(c, p)``, ``p < c``.

    ``e`` may hold duplicate rows (the previous round's output is not de-duplicated; this
    round does it for free inside its first shuffle). Two shuffles: by node for large-star,
    by child for small-star.

    Returns ``(c, p, changed)``; ``changed`` is true on everything emitted for a child whose
    neighbourhood this round rewrote, so no row is flagged exactly when ``e`` already was
    a forest of stars (the round was the identity).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    # Large-star, keyed by node k: every edge (x -> k) with x a child of k becomes
    # (x, m(k)), m(k) = min(k, smallest parent of k). One row per edge end:
    #   to_k  = True : x is a child of k (the edge to rewrite)
    #   to_k  = False: x is a parent of k (candidate for m(k))
    ends = e.select(F.col("p").alias("k"), F.col("c").alias("x"), F.lit(True).alias("to_k")).unionByName(
        e.select(F.col("c").alias("k"), F.col("p").alias("x"), F.lit(False).alias("to_k"))
    )
    by_node = Window.partitionBy("k")
    ends = (
        ends.repartition("k")  # one shuffle serves the de-duplication and the window
        .dropDuplicates(["k", "x", "to_k"])
        .select(
            "k",
            "x",
            "to_k",
            F.min(F.when(~F.col("to_k"), F.col("x"))).over(by_node).alias("mp"),
        )
    )
    large = ends.where(F.col("to_k")).select(
        F.col("x").alias("c"),
        F.coalesce("mp", "k").alias("p"),
        F.col("mp").isNotNull().alias("changed"),  # k had a parent: the edge moved
    )
    # Small-star, keyed by child u with parents P, m = min P: emit (u, m) and (q, m) for
    # q in P \ {m}; rewritten iff P has two distinct members.
    by_child = Window.partitionBy("c")
    small = large.select(
        "c",
        "p",
        F.min("p").over(by_child).alias("m"),
        (
            F.max(F.col("changed").cast("int")).over(by_child).cast("boolean")
            | (F.min("p").over(by_child) != F.max("p").over(by_child))
        ).alias("changed"),
    )
    return (
        small.select(
            F.explode(
                F.array(
                    F.struct(F.col("c").alias("c"), F.col("m").alias("p")),
                    F.struct(F.col("p").alias("c"), F.col("m").alias("p")),
                )
            ).alias("edge"),
            "changed",
        )
        .select("edge.c", "edge.p", "changed")
        .where(F.col("c") != F.col("p"))  # (m, m) from the parent m itself
    )


def connected_components(
    vertices: DataFrame,
    edges: DataFrame,
    *,
    max_iterations: int = 100,
    checkpoint_every: int = 1,
) -> DataFrame:
    """Connected components with the alternating large-star / small-star algorithm.

    ``vertices`` needs a string ``posting_id`` column (other columns are ignored; duplicate
    ids are collapsed, null ids dropped). ``edges`` needs string ``src`` and ``dst``
    columns; duplicates, both directions and self-loops are fine. **Edges with a null
    endpoint or an endpoint that is not in ``vertices`` are dropped** (two semi-joins;
    raising would cost an extra pass over the edges).

    Returns one row per distinct vertex: ``posting_id`` (string), ``group_id`` (string,
    the smallest posting_id of the component) and ``group_size`` (int, members in the
    component). The result is lazy over the last materialised edge set.

    Convergence: every round flags the edges it rewrote; after the round's edge set has
    been materialised, a count of flagged rows (a narrow scan of the materialised data)
    decides. A round that rewrites nothing proves the graph was already a forest of stars,
    so the number of rounds is the number of rewriting rounds + 1; ``max_iterations``
    bounds that total, and a graph still changing in round ``max_iterations`` raises
    :class:`RuntimeError`.

    Lineage: the edge set is checkpointed every ``checkpoint_every`` rounds (reliably if the
    SparkContext has a checkpoint directory, otherwise ``localCheckpoint``, which keeps the
    blocks on the executors: losing one fails the job) and persisted in between. The
    default 1 keeps every round's plan a leaf; larger values save one small job per round
    but each uncheckpointed round doubles the plan the next one analyses, and a last round
    that was only persisted stays persisted under the returned (lazy) result.
    """
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    _require_string_columns(vertices, ["posting_id"], "vertices")
    _require_string_columns(edges, ["src", "dst"], "edges")

    reliable = _has_checkpoint_dir(vertices)
    verts = vertices.select("posting_id").where(F.col("posting_id").isNotNull()).distinct()

    # Undirected edges -> (c, p) with p < c; known endpoints only; no loops (duplicates go
    # in the first round).
    e = _cut_lineage(
        edges.select("src", "dst")
        .where(F.col("src").isNotNull() & F.col("dst").isNotNull() & (F.col("src") != F.col("dst")))
        .join(verts.withColumnRenamed("posting_id", "src"), "src", "left_semi")
        .join(verts.withColumnRenamed("posting_id", "dst"), "dst", "left_semi")
        .select(F.greatest("src", "dst").alias("c"), F.least("src", "dst").alias("p")),
        reliable,
    )

    rounds = 0
    changed = -1
    cached: DataFrame | None = None  # persisted (not checkpointed) edge set of the last round
    while True:
        if rounds >= max_iterations:
            if cached is not None:
                cached.unpersist()
            raise RuntimeError(
                f"connected components did not converge within max_iterations={max_iterations} "
                f"iterations ({changed} edges still changing in iteration {rounds})"
            )
        nxt = _star_round(e.select("c", "p"))
        rounds += 1
        if rounds % checkpoint_every == 0:
            nxt = _cut_lineage(nxt, reliable)
        else:
            nxt = nxt.persist(StorageLevel.MEMORY_AND_DISK)
        changed = nxt.where(F.col("changed")).count()  # materialises a persisted round
        if cached is not None:
            cached.unpersist()
        cached = nxt if nxt.is_cached else None
        e = nxt
        logger.debug("connected components: iteration %d rewrote %d edges", rounds, changed)
        if changed == 0:
            break

    logger.info(
        "connected components converged after %d large/small-star iterations (the last one confirms no change)",
        rounds,
    )

    # Converged: a forest of stars, centre = component minimum. Children carry their centre;
    # each child has exactly one (the drop is a guard and shares the join's shuffle).
    centres = e.select(F.col("c").alias("posting_id"), F.col("p").alias("centre"))
    labelled = verts.join(centres.dropDuplicates(["posting_id"]), "posting_id", "left").select(
        "posting_id", F.coalesce("centre", "posting_id").alias("group_id")
    )
    return labelled.withColumn("group_size", F.count(F.lit(1)).over(Window.partitionBy("group_id")).cast("int"))


def components_on_driver(vertices: DataFrame, edges: DataFrame) -> DataFrame:
    """:func:`connected_components` for a graph small enough to hold on the driver (the caller
    decides: ``ComponentsConf.on_driver``): the vertices' ids and the edges are collected
    (Arrow), labelled with scipy on integer vertices numbered in id order, and the result comes
    back as a local DataFrame with the same rows and columns (``posting_id``, ``group_id`` = the
    smallest posting_id of the component, ``group_size`` int). The same edge rules: null ids and
    edges with an endpoint that is not a vertex are dropped."""
    import pandas as pd
    from pyspark.sql import functions as F

    _require_string_columns(vertices, ["posting_id"], "vertices")
    _require_string_columns(edges, ["src", "dst"], "edges")
    spark = vertices.sparkSession
    ids_pd = vertices.select("posting_id").where(F.col("posting_id").isNotNull()).distinct().toPandas()
    ids = np.asarray(sorted(ids_pd["posting_id"]), dtype=object)
    e = edges.select("src", "dst").where(F.col("src").isNotNull() & F.col("dst").isNotNull()).toPandas()
    s, d, _ = edge_codes(ids, e["src"], e["dst"])
    g = component_codes(len(ids), s, d)
    out = pd.DataFrame(
        {
            "posting_id": ids,
            "group_id": ids[g],
            "group_size": np.bincount(g, minlength=len(ids))[g].astype(np.int32),
        }
    )
    logger.info("connected components on the driver: %d listings, %d edges", len(ids), len(s))
    return spark.createDataFrame(out, "posting_id string, group_id string, group_size int")
