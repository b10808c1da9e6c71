"""The stages after the search on the driver plan's arrays (docs/incremental.md, "The graph on
the driver"): a night whose lists are :class:`~listing_dedup.search.driver_night.DriverState`
arrays takes its match edges, groups and ``matches`` rows from them in numpy instead of Spark
stages over the whole catalog. Each function is the Spark stage's rule on integer vertices
(every kept listing, numbered in ``posting_id`` order, so the smallest vertex of a piece is its
smallest ``posting_id``, as Spark's string order), and gives the same rows:

* :func:`union_edges`: pipeline._union_edges (a pair found by several parts keeps its best score);
* :func:`group_codes`: the group margin (graph/guard.margin_keep), the components and the guard's
  re-cut (graph/guard.recut_codes, the driver path of split_large);
* :func:`pair_scores`: the scores graph/explain.explain_edges joins to each match edge (the last
  round's top ``k`` both ways, the pHash pairs);
* :func:`explain_undirected` + :func:`match_table`: the ``matches`` rows with their explanations
  (graph/explain.explain_pairs on the driver, then explained_match_sets' order: score desc, then
  id) as an Arrow table, which the sink stages from the driver (sink/delta.DeltaSink.stage_arrow).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

EXPLAIN_CHUNK = 8192  # match edges a batch of explain_pairs (Spark's Arrow batches are 10,000 rows)


@dataclass
class Edges:
    """Directed match edges on vertices ``0..n-1`` (both directions of each pair), sorted by
    ``(src, dst)``; ``score`` float32 as the Spark edge frame's."""

    src: np.ndarray
    dst: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.src)

    def frame(self, ids: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"src": ids[self.src], "dst": ids[self.dst], "score": self.score})

    def table(self, ids: np.ndarray) -> pa.Table:
        """:meth:`frame` as Arrow, the ids taken from one string array (no Python string objects
        converted a row: 1.9M edges at 100k)."""
        strings = pa.array(np.asarray(ids, dtype=object), pa.string())
        return pa.table(
            {
                "src": strings.take(pa.array(self.src, pa.int64())),
                "dst": strings.take(pa.array(self.dst, pa.int64())),
                "score": pa.array(np.asarray(self.score, dtype=np.float32), pa.float32()),
            }
        )


def codes_of(ids: np.ndarray, values: Any) -> np.ndarray:
    """Position of each of ``values`` in the sorted ``ids`` (-1 when absent): hash lookups."""
    return pd.Categorical(values, categories=ids).codes.astype(np.int64)


def union_edges(n: int, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Edges:
    """The union of directed edge sets ``(src, dst, score)`` on vertices ``0..n-1``: one row a
    ``(src, dst)``, its best score (float32); edges with an end -1 (not a kept listing) or a
    self-loop are dropped."""
    src = np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts]) if parts else np.zeros(0, np.int64)
    dst = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts]) if parts else np.zeros(0, np.int64)
    score = np.concatenate([np.asarray(p[2], dtype=np.float32) for p in parts]) if parts else np.zeros(0, np.float32)
    ok = (src >= 0) & (dst >= 0) & (src != dst)
    src, dst, score = src[ok], dst[ok], score[ok]
    key = src * np.int64(n) + dst
    order = np.lexsort((-score.astype(np.float64), key))  # each key's best score first
    key, score = key[order], score[order]
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    key, score = key[first], score[first]
    return Edges(key // n, key % n, score.astype(np.float32))


def group_codes(
    n: int,
    edges: Edges,
    *,
    margin: float,
    guard: bool,
    base_threshold: float,
    max_group: int,
    step: float,
) -> tuple[np.ndarray, int, int]:
    """Each vertex's group (its smallest vertex) as the components stage gives it: the edges the
    group margin keeps (``margin`` > 0), their components, re-cut by the guard (``guard``: mode
    split) at rising thresholds. Returns the groups, the directed edges the margin cut and the
    guard's levels."""
    from listing_dedup.graph.components import component_codes
    from listing_dedup.graph.guard import margin_keep, recut_codes

    keep = margin_keep(edges.src, edges.dst, edges.score.astype(np.float64), margin, n) if margin > 0 else None
    s, d, sc = edges.src, edges.dst, edges.score.astype(np.float64)
    n_cut = 0
    if keep is not None:
        n_cut = int(len(keep) - keep.sum())
        s, d, sc = s[keep], d[keep], sc[keep]
    if guard:
        g, levels = recut_codes(n, s, d, sc, base_threshold=base_threshold, max_group=max_group, step=step)
        return g, n_cut, levels
    return component_codes(n, s, d), n_cut, 0


def pair_scores(
    a: np.ndarray, b: np.ndarray, rows: np.ndarray, top_ids: np.ndarray, top_scores: np.ndarray
) -> np.ndarray:
    """The search's score of each pair ``a - b`` (vertices): the best of ``b`` in ``a``'s top
    ``k`` and ``a`` in ``b``'s (as double; NaN when neither holds the other). ``rows``: each
    vertex's row of the driver arrays (-1: not embedded); ``top_ids`` / ``top_scores``: the
    last round's top ``k`` (rows, -1 none)."""
    out = np.full(len(a), np.nan)
    ra, rb = rows[a], rows[b]
    for x, y in ((ra, rb), (rb, ra)):
        ok = np.flatnonzero((x >= 0) & (y >= 0))
        for lo in range(0, len(ok), 1 << 16):
            i = ok[lo : lo + (1 << 16)]
            hit = top_ids[x[i]] == y[i][:, None]
            has = hit.any(1)
            s = np.where(has, top_scores[x[i], hit.argmax(1)].astype(np.float64), np.nan)
            out[i] = np.fmax(out[i], s)
    return out


@dataclass
class Explained:
    """The explanation columns of the undirected match edges ``a < b`` (vertices), one entry an
    edge: graph/explain.explain_pairs' ``kept_by``, ``signal_scores`` (an Arrow map array, the
    keys in its order) and ``phash_distance`` (Arrow int32, null where a pHash is missing)."""

    a: np.ndarray
    b: np.ndarray
    score: np.ndarray
    kept_by: np.ndarray
    signal_scores: pa.Array
    phash_distance: pa.Array


def vertex_phash_bits(phash: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """graph/rerank.phash_bits of the pairs ``a``, ``b`` (vertices) of ``phash`` (each vertex's
    pHash: string or None): each vertex's hash parsed once (rerank's rule: 16 hex digits, else
    missing) and the pairs' distances as one XOR and popcount, instead of two Python parses
    a pair (a million pairs at 100k). NaN where either is missing."""
    from listing_dedup.graph.rerank import _hash_value

    out = np.full(len(a), np.nan)
    if not len(a):
        return out
    parsed = [_hash_value(h) for h in phash]
    ok = np.fromiter((v is not None for v in parsed), dtype=bool, count=len(parsed))
    values = np.fromiter((v if v is not None else 0 for v in parsed), dtype=np.uint64, count=len(parsed))
    both = ok[a] & ok[b]
    out[both] = np.bitwise_count(values[a[both]] ^ values[b[both]])
    return out


def explain_undirected(
    a: np.ndarray,
    b: np.ndarray,
    score: np.ndarray,
    *,
    phash: np.ndarray,
    rows: np.ndarray,
    vectors: np.ndarray | None,
    layout: Any,
    rule: Any,
    rule_score: np.ndarray,
    phash_score: np.ndarray,
) -> Explained:
    """graph/explain.explain_pairs on the undirected match edges ``a < b`` (vertices), as
    columns: ``phash`` each vertex's pHash (string or None), ``rows`` / ``vectors`` each
    vertex's fused vector (row -1: none), ``rule_score`` / ``phash_score`` each pair's (NaN:
    none). No re-ranker and no must-link (the caller's plan has neither). The per-signal scores
    are embed/fusion.signal_scores and the fused inner product on batches of
    :data:`EXPLAIN_CHUNK` edges, as explain_pairs computes them; ``kept_by`` is
    graph/explain.kept_by called once per distinct outcome of its comparisons (the label
    depends on the score only through them); the pHash distance graph/rerank.phash_bits'."""
    from listing_dedup.embed.fusion import signal_scores
    from listing_dedup.graph.explain import kept_by

    m = len(a)
    names = list(layout.slices()) if vectors is not None and layout is not None else []
    keys = [*names, "fused", "phash"]  # explain_pairs' order (no "rerank" here)
    values = np.full((m, len(keys)), np.nan, dtype=np.float32)
    has = np.flatnonzero((rows[a] >= 0) & (rows[b] >= 0)) if names else np.zeros(0, dtype=np.int64)
    for lo in range(0, len(has), EXPLAIN_CHUNK):
        i = has[lo : lo + EXPLAIN_CHUNK]
        ea, eb = vectors[rows[a[i]]], vectors[rows[b[i]]]
        per = signal_scores(ea, eb, layout)
        for j, name in enumerate(names):
            values[i, j] = per[name]
        values[i, len(names)] = np.einsum("ij,ij->i", ea, eb)
    ph = ~np.isnan(phash_score)
    values[ph, len(names) + 1] = phash_score[ph].astype(np.float32)
    present = ~np.isnan(values)
    if len(has):
        present[has, len(names)] = True  # explain_pairs keeps "fused" even when NaN
    offsets = np.zeros(m + 1, dtype=np.int32)
    np.cumsum(present.sum(1), out=offsets[1:])
    map_keys = np.broadcast_to(np.asarray(keys, dtype=object), values.shape)[present]
    maps = pa.MapArray.from_arrays(
        pa.array(offsets), pa.array(map_keys, type=pa.string()), pa.array(values[present], type=pa.float32())
    )

    s = np.asarray(rule_score, dtype=np.float64)
    known = ~np.isnan(s)
    outcome = np.zeros(m, dtype=np.int64)
    for bit, cond in enumerate(
        (
            known,
            known & (s >= float(rule.threshold)),
            ph,
            known & (s >= float(rule.min2_threshold)),
            known & (s >= float(rule.relative_floor)),
            known & (s >= float(rule.mutual_floor)),
        )
    ):
        outcome |= cond.astype(np.int64) << bit
    uniq, first, inverse = np.unique(outcome, return_index=True, return_inverse=True)
    labels = np.asarray(
        [kept_by(rule, must=False, rule_score=s[i] if known[i] else None, phash_pair=bool(ph[i])) for i in first],
        dtype=object,
    )
    bits = vertex_phash_bits(phash, a, b)
    dist = pa.array(np.where(np.isnan(bits), 0, bits).astype(np.int32), mask=np.isnan(bits), type=pa.int32())
    return Explained(a, b, np.asarray(score, dtype=np.float32), labels[inverse], maps, dist)


def match_table(ids: np.ndarray, explained: Explained, run_id: str, schema: pa.Schema) -> pa.Table:
    """The ``matches`` rows of every vertex (``ids``, sorted) from its explained undirected
    edges, both directions, each listing's matches by score desc then id
    (graph/explain.explained_match_sets), empty arrays for a listing without matches; the
    ``run_id`` last. ``schema``: the table's Arrow schema (the caller's, from
    sink/schemas.OUTPUT_DATA_SCHEMAS: the graph stage does not import the sink)."""
    n = len(ids)
    a, b, sc = explained.a.astype(np.int64), explained.b.astype(np.int64), explained.score
    src, dst = np.concatenate([a, b]), np.concatenate([b, a])
    score = np.concatenate([sc, sc]).astype(np.float32)
    half = np.concatenate([np.arange(len(a)), np.arange(len(a))])
    order = np.lexsort((dst, -score, src))  # float32 negated exactly, as explained_match_sets' neg
    src, dst, score, half = src[order], dst[order], score[order], half[order]
    offsets = pa.array(np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))]).astype(np.int32))
    take = pa.array(half, type=pa.int64())

    def lists(values: pa.Array, field: str) -> pa.Array:
        t = schema.field(field).type
        return pa.ListArray.from_arrays(offsets, values.cast(t.value_type), type=t)

    return pa.Table.from_arrays(
        [
            pa.array(ids, type=pa.string()),
            lists(pa.array(ids[dst] if len(dst) else [], type=pa.string()), "match_ids"),
            lists(pa.array(score, type=pa.float32()), "scores"),
            lists(pa.array(explained.kept_by, type=pa.string()).take(take), "kept_by"),
            lists(explained.signal_scores.take(take), "signal_scores"),
            lists(explained.phash_distance.take(take), "phash_distance"),
            pa.array(np.full(n, run_id, dtype=object), type=pa.string()),
        ],
        schema=schema,
    )


@dataclass
class DriverGraph:
    """A driver-plan night's graph on the driver: every kept listing (``ids``, sorted), its
    pHash (string or None) and row of the driver arrays (``rows``, -1: not embedded), the
    match edges, the pHash pairs' scores (``ph``: directed, vertices) and, once the components
    stage ran, each vertex's group (its smallest vertex)."""

    ids: np.ndarray
    phash: np.ndarray
    rows: np.ndarray
    edges: Edges
    ph: Edges
    groups: np.ndarray | None = None

    def edge_frame(self) -> pd.DataFrame:
        return self.edges.frame(self.ids)

    def edge_table(self) -> pa.Table:
        """:meth:`edge_frame` as Arrow (what the edges stage hands Spark)."""
        return self.edges.table(self.ids)

    def group_frame(self) -> pd.DataFrame:
        """``posting_id, group_id, group_size`` (the components stage's rows)."""
        g = self.groups
        return pd.DataFrame(
            {
                "posting_id": self.ids,
                "group_id": self.ids[g],
                "group_size": np.bincount(g, minlength=len(self.ids))[g].astype(np.int32),
            }
        )

    def explained(self, top_ids: np.ndarray, top_scores: np.ndarray, vectors: Any, layout: Any, rule: Any):
        """:func:`explain_undirected` of the match edges: the rule's score each pair's in the
        last round's top ``k`` (``top_ids`` / ``top_scores``), its pHash pair's score."""
        und = self.edges.src < self.edges.dst
        a, b, s = self.edges.src[und], self.edges.dst[und], self.edges.score[und]
        n = np.int64(len(self.ids))
        ph_und = self.ph.src < self.ph.dst
        ph_key = self.ph.src[ph_und] * n + self.ph.dst[ph_und]
        ph_score = pd.Series(self.ph.score[ph_und].astype(np.float64), index=ph_key)
        ph = ph_score.reindex(a * n + b).to_numpy(dtype=np.float64) if len(ph_key) else np.full(len(a), np.nan)
        return explain_undirected(
            a,
            b,
            s,
            phash=self.phash,
            rows=self.rows,
            vectors=vectors,
            layout=layout,
            rule=rule,
            rule_score=pair_scores(a, b, self.rows, top_ids, top_scores),
            phash_score=ph,
        )
