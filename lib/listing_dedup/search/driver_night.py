"""The incremental night's search rounds on the driver: the driver plan of docs/incremental.md.

An incremental night of a catalog that fits the driver (``incremental.driver_max_listings``)
keeps its match state as arrays in files, not as Delta rows, and updates them with numpy: a
handful of array operations instead of the Spark plan's dozens of small jobs
(:func:`listing_dedup.search.rounds.delta_rounds`, whose fixed cost, not its rows, was the night's
cost at 7k-30k listings: docs/benchmarks.md). The same algorithm as the Spark plan, array for
frame:

* the night's listings are the continued night's less the removed (deleted, changed) plus the
  delta's vectors (added, changed), in ``posting_id`` order; a listing's row in every array is
  its place in that order (so an index order is a ``posting_id`` order: the ties' order of the
  Spark plan, score desc then ``dst``);
* each round's lists are ``(n, depth)`` int32 neighbour rows (-1: none) and float32 scores, best
  first; the update (:func:`update_lists`) is :func:`listing_dedup.search.incremental.
  update_neighbours` (its pandas reference) on arrays: the removed leave every list, an
  inserted listing enters the lists whose listings probe its IVF list when it beats their
  weakest neighbour (:func:`reverse_rows`: the lists a full search puts it in; each listing's
  probed lists are kept like its list assignment), lists that lost more than their slack are
  searched again (*stale*);
* the search (:func:`search_rows`) probes the epoch's quantizer and scans the probed lists
  exactly (search/indexer's ``probe_lists``, and :func:`scan_probed`: ``scan_lists``'s result,
  the Spark search's own scan, for many queries at once), over every listing's vector stored
  list by list; each listing's list assignment
  is kept in the state, so only the delta is assigned;
* INB: the listings whose blended vector changes (:func:`affected_rows`, as
  ``rounds.blend_affected``) are blended again (:func:`blend_rows`: the sums of
  ``search/blender.blend`` in its order, bit for bit), the others keep yesterday's vectors.

State files (:func:`save_state`, :func:`load_state`): ``<warehouse>/_state/lists/<run_date>/
<run_id>/``, ``ids.npy`` and per round ``r<r>_ids.npy``, ``r<r>_scores.npy``,
``r<r>_vectors.npy``, ``r<r>_assign.npy``, ``r<r>_probes.npy`` (since session 6; a state without
them gets them computed); ``meta.json`` last. Written before the night's
commits and read by the next night through the ``state_log`` row that names the run: a night
that crashes before its ``state_log`` row leaves an unreferenced folder, never a changed state.
Memory: :func:`bytes_per_listing`."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from listing_dedup.search.indexer import assign_lists, list_layout, probe_lists, probed_lists

log = logging.getLogger(__name__)

STATE_DIR = "_state/lists"
_NONE = -1  # an empty slot of a list
_GONE = -2  # a neighbour that left tonight's catalog (deleted, or changed and no longer embedded)


@dataclass
class RoundArrays:
    """One search round of a night: each listing's list at ``depth`` (``ids``: rows, -1 none;
    ``scores``: float32, -inf none; best first: score desc, then row), the round's vectors and
    each vector's IVF list under the epoch's quantizer."""

    ids: np.ndarray
    scores: np.ndarray
    vectors: np.ndarray
    assign: np.ndarray
    # each vector's ``nprobe`` probed lists (int16 / int32 ``(n, nprobe)``, best first): the lists a
    # search of the listing scans, so the lists an inserted listing must enter (:func:`reverse_rows`);
    # None in a state written before they were kept (the next night computes them)
    probes: np.ndarray | None = None


@dataclass
class DriverState:
    """A night's lists and vectors on the driver: ``ids`` the sorted ``posting_id``s (row ``i``
    of every array is ``ids[i]``), ``rounds[r]`` round ``r``'s arrays (round 0: the fused vectors
    and the pre-INB lists)."""

    ids: np.ndarray
    rounds: list[RoundArrays]
    depth: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.ids)


def bytes_per_listing(d: int, depth: int, rounds: int, nprobe: int = 0) -> int:
    """What one listing costs the driver plan's state, per round: its list (``depth`` int32 rows
    and float32 scores), its vector (``d`` float32), its IVF list (int32) and its ``nprobe``
    probed lists (int16); plus its id (~16 bytes). The search also copies a round's vectors list
    by list (``4 d`` more while it runs). Lexical 1024-d, ``depth`` 66, ``nprobe`` 64, one INB
    round: 9.6 KB, so 1M listings hold ~9.6 GB."""
    return rounds * (8 * depth + 4 * d + 4 + 2 * nprobe) + 16


# --------------------------------------------------------------------------------------
# the search


@dataclass
class Layout:
    """A round's vectors stored list by list (search/indexer.list_layout): ``order`` maps a
    stored row back to a listing's row; within a list the rows keep ``posting_id`` order, as
    the Spark index's shards store them."""

    order: np.ndarray
    vectors: np.ndarray
    offsets: np.ndarray


def layout_of(vectors: np.ndarray, assign: np.ndarray, nlist: int) -> Layout:
    order, offsets = list_layout(assign, nlist)
    return Layout(order, np.ascontiguousarray(vectors[order]), offsets)


def search_rows(
    vectors: np.ndarray,
    layout: Layout,
    centroids: np.ndarray,
    nprobe: int,
    rows: np.ndarray,
    k: int,
    budget: int = 48 << 20,
    probe: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each listing of ``rows``' top ``k`` neighbours (never itself) among every listing, the
    ``nprobe`` lists nearest its vector scanned exactly: ``(ids, scores)`` of shape
    ``(len(rows), k)``, best first (score desc, then row: ``posting_id``), -1 / -inf padded. The
    Spark search's result (search/indexer.search with the same quantizer, ``nprobe`` and flat
    storage) up to exact ties at the k-th place and the scan's last float bit. The queries go in
    chunks of at most ``budget`` candidate scores (:func:`scan_probed`). ``probe``: the rows'
    probed lists where the caller has them (:func:`~listing_dedup.search.indexer.probe_lists`)."""
    rows = np.asarray(rows, dtype=np.int64)
    out_i = np.full((len(rows), k), _NONE, dtype=np.int32)
    out_s = np.full((len(rows), k), -np.inf, dtype=np.float32)
    if len(rows) == 0 or k == 0:
        return out_i, out_s
    kk = min(k + 1, len(layout.order))  # one extra: the query itself is among the results
    if probe is None:
        probe = probe_lists(np.ascontiguousarray(vectors[rows]), centroids, nprobe)
    probe = np.asarray(probe, dtype=np.int64)
    sizes = layout.offsets[probe + 1] - layout.offsets[probe]
    chunk = max(64, budget // max(1, int(sizes.sum(1).max()), kk))
    for a in range(0, len(rows), chunk):
        q = rows[a : a + chunk]
        x = np.ascontiguousarray(vectors[q])
        d_mat, i_mat = scan_probed(x, probe[a : a + chunk], layout.vectors, layout.offsets, kk)
        idx = np.where(i_mat >= 0, layout.order[np.maximum(i_mat, 0)], _NONE)
        ok = (idx >= 0) & (idx != q[:, None])
        sc = np.where(ok, d_mat, -np.inf).astype(np.float32)
        key = np.where(ok, idx, np.iinfo(np.int64).max)
        o = np.lexsort((key, -sc), axis=1)[:, :k]
        got = o.shape[1]
        out_s[a : a + len(q), :got] = np.take_along_axis(sc, o, 1)
        out_i[a : a + len(q), :got] = np.where(np.take_along_axis(ok, o, 1), np.take_along_axis(idx, o, 1), _NONE)
    return out_i, out_s


def scan_probed(
    x: np.ndarray, probe: np.ndarray, vectors: np.ndarray, offsets: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """search/indexer.scan_lists's result (each query's exact top ``k`` over its probed lists'
    rows, best first; -inf / -1 padded) for many queries at once: each probed list's scores
    (one matrix product for the queries that probe it) are written into the queries' candidate
    buffers and each query's top ``k`` is taken once at the end, instead of merged into a running
    top ``k`` list by list (that merge, ``k`` + the list's rows a query and list, was most of the
    blending rounds' search at a reach of ``4 depth``: 45 s against 6 s for 8,549 queries of the
    30k catalog). A query's buffer holds its probed lists' rows in list order, so the stored row
    of a column is found from the column alone (:func:`_columns_rows`, for the ``k`` kept): no
    buffer of row numbers (it was two thirds of the buffers' bytes). Memory: the queries times
    their probed lists' rows, float32."""
    n = len(x)
    if n == 0 or k == 0 or probe.size == 0:
        return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    probe = np.asarray(probe, dtype=np.int64)
    width = max(int((offsets[probe + 1] - offsets[probe]).sum(1).max()), k)
    buf_s = np.full((n, width), -np.inf, dtype=np.float32)
    pos = np.zeros(n, dtype=np.int64)
    for a, b, qs in probed_lists(probe, offsets):
        cols = pos[qs][:, None] + np.arange(b - a)
        buf_s[qs[:, None], cols] = x[qs] @ vectors[a:b].T
        pos[qs] += b - a
    if width > k:
        top = np.argpartition(buf_s, width - k, axis=1)[:, width - k :]
        buf_s = np.take_along_axis(buf_s, top, 1)
    else:
        top = np.broadcast_to(np.arange(width), (n, width))
    o = np.argsort(-buf_s, axis=1, kind="stable")[:, :k]
    best_s, best_c = np.take_along_axis(buf_s, o, 1), np.take_along_axis(top, o, 1)
    return best_s, np.where(np.isfinite(best_s), _columns_rows(probe, offsets, best_c), -1)


def _columns_rows(probe: np.ndarray, offsets: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The stored row of each buffer column ``cols`` (``(n, c)``) of :func:`scan_probed`: query
    ``q``'s buffer holds the rows of its probed lists in list order (``probed_lists`` visits the
    lists in order), each list's rows ``offsets[l]:offsets[l + 1]`` in turn; a column past them
    (padding) gets some row, masked by its -inf score."""
    lists = np.sort(probe, axis=1)
    sizes = offsets[lists + 1] - offsets[lists]
    ends = np.cumsum(sizes, axis=1)
    out = np.empty(cols.shape, dtype=np.int64)
    step = max(1, (1 << 24) // max(1, cols.shape[1] * lists.shape[1]))
    for a in range(0, len(cols), step):
        c, e = cols[a : a + step], ends[a : a + step]
        j = np.minimum((e[:, None, :] <= c[:, :, None]).sum(2), lists.shape[1] - 1)
        start = np.take_along_axis(e - sizes[a : a + step], j, 1)
        out[a : a + step] = offsets[np.take_along_axis(lists[a : a + step], j, 1)] + c - start
    return out


def reverse_rows(
    layout: Layout,
    probes: np.ndarray,
    assign: np.ndarray,
    inserted: np.ndarray,
    need: np.ndarray,
    vectors: np.ndarray,
    budget: int = 1 << 24,
    by: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lists the inserted listings enter, as a full search finds them: every ``(u, v,
    s(u, v))`` with ``v`` inserted, ``u`` not, ``v``'s IVF list among ``u``'s probed lists
    (``probes[u]``: a search of ``u`` scans ``v``) and ``s(u, v) >= need[u]`` (the weakest
    neighbour ``u``'s list held: below it the list is not exact; -inf for a list that held
    every listing it could). The *reverse probe*: an inserted listing's own search reaches the
    lists it probes, which are not the lists whose listings probe it (an IVF search is not
    symmetric), so inserting it into the lists its own search returned misses some (and fills
    others a full search would not). ``src, dst`` rows, float32 scores. Two ways, the same
    pairs (``by``; default: by block when the inserted listings are fewer than 4 a list):

    * ``list``: list by list of the inserted listings, the listings that probe the list (an
      inverted index of ``probes``, gathered) against its inserted ones, one matrix product:
      ``nprobe N`` rows gathered when most lists hold an inserted listing;
    * ``block``: list by list of the probing listings (``layout``: each list's rows one block,
      read in place) against the inserted listings of the lists any of its rows probes, kept
      where the row probes the inserted listing's list: few inserted listings gathered a block."""
    inserted = np.asarray(inserted, dtype=bool)
    ins_rows = np.flatnonzero(inserted)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if not len(ins_rows) or inserted.all():
        return empty
    nlist = len(layout.offsets) - 1
    i_order, i_off = list_layout(assign[ins_rows], nlist)
    ins_sorted = ins_rows[i_order]
    has = i_off[1:] > i_off[:-1]
    need = np.asarray(need, dtype=np.float32)
    if (by or ("block" if len(ins_rows) < 4 * nlist else "list")) == "block":
        return _reverse_by_block(layout, np.asarray(probes), assign, inserted, need, vectors, ins_sorted, i_off)
    # the probing listings of every list that holds an inserted one, list by list
    probes = np.asarray(probes)
    rows_u = np.flatnonzero(~inserted)
    p = probes[rows_u]
    hit = has[p]
    p_u = np.repeat(rows_u, hit.sum(1))
    p_l = p[hit].astype(np.int64)
    p_order, p_off = list_layout(p_l, nlist)
    p_u = p_u[p_order]
    out_u, out_v, out_s = [], [], []
    for lst in np.flatnonzero(has & (p_off[1:] > p_off[:-1])).tolist():
        v_rows = ins_sorted[i_off[lst] : i_off[lst + 1]]
        xv = np.ascontiguousarray(vectors[v_rows].T)
        a, b = int(p_off[lst]), int(p_off[lst + 1])
        step = max(1, budget // max(1, vectors.shape[1] * 4))
        for c0 in range(a, b, step):
            us = p_u[c0 : min(b, c0 + step)]
            sc = vectors[us] @ xv
            r, c = np.nonzero(sc >= need[us][:, None])
            out_u.append(us[r])
            out_v.append(v_rows[c].astype(np.int64))
            out_s.append(sc[r, c].astype(np.float32))
    if not out_u:
        return empty
    return np.concatenate(out_u), np.concatenate(out_v), np.concatenate(out_s)


def _reverse_by_block(layout, probes, assign, inserted, need, vectors, ins_sorted, i_off):
    """:func:`reverse_rows` block by block of the probing listings (``by="block"``)."""
    nlist = len(layout.offsets) - 1
    ins_list = np.asarray(assign[ins_sorted], dtype=np.int64)
    xi = np.ascontiguousarray(vectors[ins_sorted])
    has = i_off[1:] > i_off[:-1]
    offsets = layout.offsets
    out_u, out_v, out_s = [], [], []
    for lst in np.flatnonzero(offsets[1:] > offsets[:-1]).tolist():
        a, b = int(offsets[lst]), int(offsets[lst + 1])
        rows_u = layout.order[a:b]
        u_ok = ~inserted[rows_u]
        if not u_ok.any():
            continue
        p = probes[rows_u].astype(np.int64)
        lists = np.unique(p[u_ok])
        lists = lists[has[lists]]
        if not len(lists):
            continue
        lo, hi = i_off[lists], i_off[lists + 1]
        idx = np.repeat(lo - np.cumsum(np.r_[0, (hi - lo)[:-1]]), hi - lo) + np.arange(int((hi - lo).sum()))
        sc = layout.vectors[a:b] @ xi[idx].T
        probed = np.zeros((b - a, nlist), dtype=bool)
        probed[np.arange(b - a)[:, None], p] = True
        ok = probed[:, ins_list[idx]] & (sc >= need[rows_u][:, None]) & u_ok[:, None]
        r, c = np.nonzero(ok)
        out_u.append(rows_u[r].astype(np.int64))
        out_v.append(ins_sorted[idx[c]].astype(np.int64))
        out_s.append(sc[r, c].astype(np.float32))
    if not out_u:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(out_u), np.concatenate(out_v), np.concatenate(out_s)


def complete_rows(prev_ids: np.ndarray, probes: np.ndarray, assign: np.ndarray, inserted: np.ndarray) -> np.ndarray:
    """Bool ``(n,)``: the lists that held every listing their search scans (the listings of
    their probed lists, less the inserted and the listing itself), so that any inserted listing
    enters them whatever its score. A list shorter than ``depth`` is not necessarily one: a list
    that lost neighbours on an earlier night is shorter and holds only what scored above its
    weakest; :func:`update_lists` (``complete``) keeps such a list's floor and searches it again
    when it falls under ``k``."""
    inserted = np.asarray(inserted, dtype=bool)
    nlist = int(max(int(np.max(probes, initial=0)), int(np.max(assign, initial=0)))) + 1
    present = np.bincount(np.asarray(assign)[~inserted], minlength=nlist)
    p = np.asarray(probes, dtype=np.int64)
    region = present[p].sum(1) - (p == np.asarray(assign)[:, None]).any(1)
    held = ((prev_ids >= 0) & ~inserted[np.maximum(prev_ids, 0)]).sum(1)
    return held >= region


def _weakest(prev_ids: np.ndarray, prev_scores: np.ndarray) -> np.ndarray:
    """The weakest neighbour each list held before tonight (+inf for an empty list): below it
    the list is not exact."""
    valid = prev_ids != _NONE
    if not prev_ids.shape[1]:
        return np.full(len(prev_ids), np.inf)
    return np.where(valid, prev_scores, np.inf).min(1)


def entry_floor(prev_ids: np.ndarray, prev_scores: np.ndarray, complete: np.ndarray) -> np.ndarray:
    """The score an inserted listing must reach to enter each list (:func:`update_lists`): the
    weakest neighbour the list held before tonight, -inf for a complete list
    (:func:`complete_rows`)."""
    return np.where(complete, -np.inf, _weakest(prev_ids, prev_scores)).astype(np.float32)


# --------------------------------------------------------------------------------------
# the update


def _sorted_rows(src: np.ndarray, dst: np.ndarray, score: np.ndarray, n: int, depth: int):
    """Flat ``src, dst, score`` entries as ``(n, depth)`` lists: each src's best ``depth`` by
    score desc then dst, -1 / -inf padded; and each src's count."""
    ids = np.full((n, depth), _NONE, dtype=np.int32)
    scores = np.full((n, depth), -np.inf, dtype=np.float32)
    counts = np.zeros(n, dtype=np.int64)
    if len(src) == 0:
        return ids, scores, counts
    o = _list_order(src, dst, score)
    src, dst, score = src[o], dst[o], score[o]
    starts = np.flatnonzero(np.r_[True, src[1:] != src[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, len(src)]))
    pos = np.arange(len(src)) - first
    keep = pos < depth
    ids[src[keep], pos[keep]] = dst[keep]
    scores[src[keep], pos[keep]] = score[keep]
    counts += np.bincount(src[keep], minlength=n)[:n]
    return ids, scores, counts


def _list_order(src: np.ndarray, dst: np.ndarray, score: np.ndarray) -> np.ndarray:
    """``np.lexsort((dst, -score, src))`` (src, then score desc, then dst; stable) in two
    stable sorts of one integer key each: (score desc, dst) packed in 64 bits (the float32's
    bits made order-preserving, -0.0 as 0.0), then src. Three-key lexsort of the round's
    ``N * depth`` entries was most of the list update."""
    neg = (-np.asarray(score, dtype=np.float32)) + np.float32(0.0)  # -0.0 sorts as 0.0, as lexsort compares
    bits = neg.view(np.uint32).astype(np.uint64)
    flip = np.where(bits >> np.uint64(31), np.uint64(0xFFFFFFFF), np.uint64(0x80000000))
    low = (np.asarray(dst, dtype=np.int64) + (1 << 31)).astype(np.uint64)  # int32 ids, order kept
    key = ((bits ^ flip) << np.uint64(32)) | low
    o = np.argsort(key, kind="stable")
    return o[np.argsort(np.asarray(src)[o], kind="stable")]


def update_lists(
    prev_ids: np.ndarray,
    prev_scores: np.ndarray,
    inserted: np.ndarray,
    found_ids: np.ndarray,
    found_scores: np.ndarray,
    *,
    k: int,
    depth: int,
    reverse: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    complete: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The lists after tonight's delta (:func:`listing_dedup.search.incremental.update_neighbours`
    on arrays). ``prev_ids`` / ``prev_scores``: yesterday's lists in tonight's rows (``(n,
    depth)``; -1 none, -2 a neighbour gone tonight; the rows of inserted listings are not read);
    ``inserted``: bool ``(n,)``, the listings searched tonight (added, changed: their old
    versions leave every list); ``found_ids`` / ``found_scores``: their search's results, one
    row each in row order (``np.flatnonzero(inserted)``), best first. ``reverse``: the
    ``(src, dst, score)`` entries the inserted listings make in the other lists
    (:func:`reverse_rows`: the lists whose listings probe theirs); default: their search's
    results reversed (the lists their own search returned). ``complete``: the lists that held
    every listing they could (:func:`complete_rows`); default: those shorter than ``depth``
    (the pandas reference's rule, which takes a list that lost neighbours for one).

    Returns ``(ids, scores, stale, touched)``: tonight's lists (the inserted listings' own from
    their search; a stale list's rows are its old ones, the caller searches it again), the
    stale rows (lists that lost a neighbour and kept fewer than ``k`` exact ones) and the
    rows whose lists were rebuilt (every other list is yesterday's)."""
    n = len(inserted)
    inserted = np.asarray(inserted, dtype=bool)
    ins_rows = np.flatnonzero(inserted)
    valid = prev_ids != _NONE
    lost = valid & ((prev_ids == _GONE) | inserted[np.maximum(prev_ids, 0)] & (prev_ids >= 0))
    lost &= ~inserted[:, None]
    count = valid.sum(1)
    floor = _weakest(prev_ids, prev_scores)
    # a list that held every listing it could: any inserted one enters, and it is never stale
    full_before = count < depth if complete is None else np.asarray(complete, dtype=bool)
    if reverse is None:  # the inserted listings' rows reversed into the lists of their neighbours
        f_ok = found_ids >= 0
        b_src = found_ids[f_ok].astype(np.int64)
        b_dst = np.repeat(ins_rows, f_ok.sum(1))
        b_sc = found_scores[f_ok]
    else:  # the lists whose listings probe theirs (reverse_rows)
        b_src, b_dst, b_sc = (np.asarray(a) for a in reverse)
        b_src, b_dst, b_sc = b_src.astype(np.int64), b_dst.astype(np.int64), b_sc.astype(np.float32)
    into = ~inserted[b_src]
    b_src, b_dst, b_sc = b_src[into], b_dst[into], b_sc[into]
    enters = full_before[b_src] | (b_sc >= floor[b_src])
    b_src, b_dst, b_sc = b_src[enters], b_dst[enters], b_sc[enters]
    lost_any = lost.any(1)
    touched = lost_any.copy()
    touched[b_src] = True
    touched &= ~inserted
    rows = np.flatnonzero(touched)
    held = valid[rows] & ~lost[rows]
    src = np.concatenate([np.repeat(rows, held.sum(1)), b_src])
    dst = np.concatenate([prev_ids[rows][held].astype(np.int64), b_dst])
    sc = np.concatenate([prev_scores[rows][held], b_sc]).astype(np.float32)
    r_ids, r_sc, r_n = _sorted_rows(src, dst, sc, n, depth)
    ids = np.where(valid, prev_ids, _NONE).astype(np.int32)
    scores = np.where(valid, prev_scores, -np.inf).astype(np.float32)
    ids[rows], scores[rows] = r_ids[rows], r_sc[rows]
    stale = np.flatnonzero(lost_any & ~full_before & (r_n < k) & ~inserted)
    # the inserted listings' own lists: their search's best depth
    got = min(depth, found_ids.shape[1])
    ids[ins_rows] = _NONE
    scores[ins_rows] = -np.inf
    ids[ins_rows, :got] = found_ids[:, :got]
    scores[ins_rows, :got] = found_scores[:, :got]
    touched[ins_rows] = True
    return ids, scores, stale, touched


# --------------------------------------------------------------------------------------
# INB


def affected_rows(
    prev_ids: np.ndarray,
    prev_scores: np.ndarray,
    now_ids: np.ndarray,
    now_scores: np.ndarray,
    changed: np.ndarray,
    k: int,
    threshold: float,
) -> np.ndarray:
    """Bool ``(n,)``: the listings whose blended vector changes tonight (``rounds.blend_affected``
    on arrays): those whose vector changed (``changed``), those whose neighbours at or above
    ``threshold`` among the top ``k`` differ between yesterday's lists (``prev_*`` in tonight's
    rows, -2 a neighbour gone) and tonight's (another neighbour or another score), and those
    with such a neighbour among ``changed``. Scores are compared with the threshold in double,
    as the Spark plan does. The lists are sorted, so the rows above the threshold are a prefix
    and two prefixes hold the same pairs exactly when they are equal slot by slot."""
    t = float(threshold)
    k = min(k, prev_ids.shape[1], now_ids.shape[1])
    a_ok = (prev_ids[:, :k] != _NONE) & (prev_scores[:, :k].astype(np.float64) >= t)
    b_ok = (now_ids[:, :k] >= 0) & (now_scores[:, :k].astype(np.float64) >= t)
    a = np.where(a_ok, prev_ids[:, :k], -3)
    b = np.where(b_ok, now_ids[:, :k], -3)
    a_s = np.where(a_ok, prev_scores[:, :k], 0.0)
    b_s = np.where(b_ok, now_scores[:, :k], 0.0)
    moved = (a != b).any(1) | (a_s != b_s).any(1)
    via = (b_ok & changed[np.maximum(now_ids[:, :k], 0)]).any(1)
    return moved | via | changed


def blend_rows(
    vectors: np.ndarray,
    ids: np.ndarray,
    scores: np.ndarray,
    rows: np.ndarray,
    k: int,
    threshold: float,
    max_entries: int = 1 << 15,
) -> np.ndarray:
    """One INB round for ``rows`` alone: ``normalize(E_i + sum_j s_ij E_j)`` over the neighbours
    ``j`` of ``i`` at or above ``threshold`` among its top ``k``, float32 ``(len(rows), d)``.
    Summed as search/blender.blend sums on Spark (float64, a listing's rows in ``posting_id``
    order with itself among them, ``np.add.reduceat``), so the vectors are its bits."""
    rows = np.asarray(rows, dtype=np.int64)
    d = vectors.shape[1]
    out = np.empty((len(rows), d), dtype=np.float32)
    if not len(rows):
        return out
    kk = min(k, ids.shape[1])
    nb, ns = ids[rows, :kk], scores[rows, :kk]
    ok = (nb >= 0) & (ns.astype(np.float64) >= float(threshold))
    per = 1 + ok.sum(1)
    ends = np.cumsum(per)
    a = 0
    while a < len(rows):
        b = max(a + 1, int(np.searchsorted(ends, (ends[a - 1] if a else 0) + max_entries, side="right")))
        loc = np.arange(a, b)
        cnt = ok[a:b].sum(1)
        who = np.concatenate([loc, np.repeat(loc, cnt)])
        idx = np.concatenate([rows[a:b], nb[a:b][ok[a:b]].astype(np.int64)])
        w = np.concatenate([np.ones(b - a), ns[a:b][ok[a:b]].astype(np.float64)])
        o = np.lexsort((idx, who))
        who, idx, w = who[o], idx[o], w[o]
        starts = np.flatnonzero(np.r_[True, who[1:] != who[:-1]])
        # w times the float32 rows promoted to float64 in one pass (the same products, no float64 copy first)
        v = np.add.reduceat(np.multiply(w[:, None], vectors[idx], dtype=np.float64), starts, axis=0)
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        out[a:b] = np.where(norms > 0, v / np.where(norms > 0, norms, 1.0), v).astype(np.float32)
        a = b
    return out


# --------------------------------------------------------------------------------------
# a night


def _remap(prev_ids: np.ndarray, now_ids: np.ndarray) -> np.ndarray:
    """Each of yesterday's rows' row tonight (-1: gone)."""
    if not len(now_ids):
        return np.full(len(prev_ids), -1, dtype=np.int64)
    pos = np.searchsorted(now_ids, prev_ids)
    pos = np.minimum(pos, len(now_ids) - 1)
    return np.where(now_ids[pos] == prev_ids, pos, -1).astype(np.int64)


def _carry_lists(prev: RoundArrays, pos: np.ndarray, keep_rows: np.ndarray, n: int, depth: int):
    """Yesterday's lists in tonight's rows: the rows of ``keep_rows`` (yesterday's rows whose
    list continues) moved to ``pos``; a neighbour gone tonight is -2; other rows empty."""
    ids = np.full((n, depth), _NONE, dtype=np.int32)
    scores = np.full((n, depth), -np.inf, dtype=np.float32)
    w = min(depth, prev.ids.shape[1])
    old = prev.ids[keep_rows, :w].astype(np.int64)
    moved = np.where(old >= 0, np.where(pos[np.maximum(old, 0)] >= 0, pos[np.maximum(old, 0)], _GONE), _NONE)
    ids[pos[keep_rows], :w] = moved
    scores[pos[keep_rows], :w] = prev.scores[keep_rows, :w]
    return ids, scores


def _carry_rows(prev: np.ndarray, pos: np.ndarray, keep_rows: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, *prev.shape[1:]), dtype=prev.dtype)
    out[pos[keep_rows]] = prev[keep_rows]
    return out


@contextmanager
def _no_stage(name: str) -> Iterator[dict[str, int]]:
    yield {}


def driver_rounds(
    prev: DriverState,
    *,
    removed: Any,
    new_ids: Any,
    new_vectors: np.ndarray,
    centroids: np.ndarray,
    nprobe: int,
    k: int,
    depth: int,
    thresholds: tuple[float, ...] | list[float],
    search_depth: int | None = None,
    blend_reach: int = 4,
    stage: Any = None,
    reverse: bool = True,
) -> DriverState:
    """Tonight's rounds from yesterday's state (:func:`listing_dedup.search.rounds.delta_rounds`
    on arrays). ``removed``: the posting_ids whose old versions leave (deleted, changed);
    ``new_ids`` / ``new_vectors``: the fused vectors of the listings searched tonight (added,
    changed, embedded tonight); ``centroids``, ``nprobe``: the epoch's quantizer and the index's
    probes. An inserted listing enters the lists whose listings probe its IVF list
    (:func:`reverse_rows`, ``reverse``: the lists a full search would put it in) or, with
    ``reverse=False``, those its own search returned (before session 6: a list can miss it).
    ``search_depth`` (default ``depth``; without ``reverse`` ``blend_reach * depth`` in the
    blending rounds): the reach of an inserted listing's search. Counts as the Spark plan's
    (``searched``, ``stale``, ``touched``, ``blended1``, ``searched1``...); ``stage``: a
    ``StageTimer.stage`` the rounds are timed by (``search``, ``blend1``, ``search1``...)."""
    stage = stage or _no_stage
    new_ids = np.asarray([str(p) for p in new_ids], dtype=str)
    o = np.argsort(new_ids, kind="stable")
    new_ids, new_vectors = new_ids[o], np.asarray(new_vectors, dtype=np.float32)[o]
    removed = np.asarray(sorted({str(p) for p in removed}), dtype=str)
    kept_prev = prev.ids[~np.isin(prev.ids, removed) & ~np.isin(prev.ids, new_ids)]
    ids = np.union1d(kept_prev, new_ids).astype(str)
    n = len(ids)
    pos = _remap(prev.ids, ids)
    inserted = np.isin(ids, new_ids)
    # yesterday's rows whose list and vectors continue: present tonight and not searched again
    keep_rows = np.flatnonzero((pos >= 0) & ~inserted[np.maximum(pos, 0)])
    ins_rows = np.flatnonzero(inserted)
    nlist = len(centroids)
    counts: dict[str, int] = {}
    out: list[RoundArrays] = []

    p_type = _probe_dtype(nlist)

    def round_probes(vectors: np.ndarray, changed: np.ndarray, r: int) -> np.ndarray:
        """Each listing's probed lists: yesterday's for a vector that did not move (computed for
        every listing from a state that kept none), the changed ones' tonight's."""
        old = prev.rounds[r].probes
        if old is not None and old.shape[1] == min(nprobe, nlist):
            probes = _carry_rows(old.astype(p_type), pos, keep_rows, n)
            todo = np.flatnonzero(changed)
        else:
            probes = np.zeros((n, min(nprobe, nlist)), dtype=p_type)
            todo = np.arange(n)
        probes[todo] = probes_of(vectors[todo], centroids, nprobe)
        return probes

    def round_search(vectors, assign, changed, r) -> RoundArrays:
        suffix = str(r) if r else ""
        reach = search_depth or (depth if r == 0 or reverse else blend_reach * depth)
        p_ids, p_sc = _carry_lists(prev.rounds[r], pos, keep_rows, n, depth)
        layout = layout_of(vectors, assign, nlist)
        rows = np.flatnonzero(changed)
        probes = round_probes(vectors, changed, r)
        f_ids, f_sc = search_rows(vectors, layout, centroids, nprobe, rows, reach, probe=probes[rows])
        rev = complete = None
        if reverse:
            complete = complete_rows(p_ids, probes, assign, changed)
            rev = reverse_rows(layout, probes, assign, changed, entry_floor(p_ids, p_sc, complete), vectors)
            counts[f"reverse{suffix}"] = int(len(rev[0]))
        l_ids, l_sc, stale, touched = update_lists(
            p_ids, p_sc, changed, f_ids, f_sc, k=k, depth=depth, reverse=rev, complete=complete
        )
        if len(stale):
            s_ids, s_sc = search_rows(vectors, layout, centroids, nprobe, stale, depth, probe=probes[stale])
            l_ids[stale], l_sc[stale] = s_ids, s_sc
        counts[f"searched{suffix}"] = int(len(rows) + len(stale))
        counts[f"stale{suffix}"] = int(len(stale))
        counts[f"touched{suffix}"] = int(touched.sum())
        return RoundArrays(l_ids, l_sc, vectors, assign, probes)

    with stage("search") as c:
        v0 = _carry_rows(prev.rounds[0].vectors, pos, keep_rows, n)
        v0[ins_rows] = new_vectors
        a0 = _carry_rows(prev.rounds[0].assign, pos, keep_rows, n)
        a0[ins_rows] = assign_lists(new_vectors, centroids).astype(a0.dtype)
        out.append(round_search(v0, a0, inserted, 0))
        c.update(searched=counts["searched"], stale=counts["stale"], touched=counts["touched"])
    changed = inserted
    for r, threshold in enumerate(thresholds, start=1):
        with stage(f"blend{r}") as c:
            p_ids, p_sc = _carry_lists(prev.rounds[r - 1], pos, keep_rows, n, depth)
            now = out[-1]
            affected = affected_rows(p_ids, p_sc, now.ids, now.scores, changed, k, threshold)
            a_rows = np.flatnonzero(affected)
            vr = _carry_rows(prev.rounds[r].vectors, pos, keep_rows, n)
            vr[a_rows] = blend_rows(now.vectors, now.ids, now.scores, a_rows, k, threshold)
            ar = _carry_rows(prev.rounds[r].assign, pos, keep_rows, n)
            ar[a_rows] = assign_lists(vr[a_rows], centroids).astype(ar.dtype)
            counts[f"blended{r}"] = int(len(a_rows))
            c["blended"] = counts[f"blended{r}"]
        with stage(f"search{r}") as c:
            out.append(round_search(vr, ar, affected, r))
            c.update(searched=counts[f"searched{r}"], stale=counts[f"stale{r}"], touched=counts[f"touched{r}"])
        changed = affected
    return DriverState(ids, out, depth, counts)


def _probe_dtype(nlist: int) -> type:
    return np.int16 if nlist <= np.iinfo(np.int16).max else np.int32


def probes_of(vectors: np.ndarray, centroids: np.ndarray, nprobe: int, chunk: int = 8192) -> np.ndarray:
    """Each vector's probed IVF lists (``(n, min(nprobe, nlist))``, the smallest integer type
    that holds a list number), computed ``chunk`` rows at a time."""
    out = np.zeros((len(vectors), min(nprobe, len(centroids))), dtype=_probe_dtype(len(centroids)))
    for a in range(0, len(vectors), chunk):
        out[a : a + chunk] = probe_lists(np.ascontiguousarray(vectors[a : a + chunk]), centroids, nprobe)
    return out


def full_state(
    lists: list[pd.DataFrame],
    vectors: list[tuple[Any, np.ndarray]],
    centroids: np.ndarray,
    depth: int,
    nprobe: int | None = None,
) -> DriverState:
    """A night's state from its searched rounds (the Spark plan's, collected): ``lists[r]``
    round ``r``'s ``src, dst, score, rank`` (rank 1 = nearest; ranks past ``depth`` dropped),
    ``vectors[r]`` its ``(posting_ids, vectors)`` in any row order (every round the same
    listings); each vector's IVF list is assigned here, and with ``nprobe`` the lists a search
    of it probes (what the next night's reverse probe reads)."""
    ids = None
    rounds = []
    for df, (v_ids, v) in zip(lists, vectors, strict=True):
        v_ids = np.asarray([str(p) for p in v_ids], dtype=str)
        o = np.argsort(v_ids, kind="stable")
        if ids is None:
            ids = v_ids[o]
        elif not np.array_equal(ids, v_ids[o]):
            raise ValueError("the rounds' vectors hold different listings")
        n = len(ids)
        v = np.ascontiguousarray(np.asarray(v, dtype=np.float32)[o])
        l_ids = np.full((n, depth), _NONE, dtype=np.int32)
        l_sc = np.full((n, depth), -np.inf, dtype=np.float32)
        src = np.searchsorted(ids, df["src"].to_numpy(dtype=str))
        dst = np.searchsorted(ids, df["dst"].to_numpy(dtype=str))
        rank = df["rank"].to_numpy(dtype=np.int64) - 1
        ok = rank < depth
        l_ids[src[ok], rank[ok]] = dst[ok]
        l_sc[src[ok], rank[ok]] = df["score"].to_numpy(dtype=np.float32)[ok]
        probes = probes_of(v, centroids, nprobe) if nprobe else None
        rounds.append(RoundArrays(l_ids, l_sc, v, assign_lists(v, centroids).astype(np.int32), probes))
    return DriverState(ids if ids is not None else np.zeros(0, dtype=str), rounds, depth)


def top_k_frame(state: DriverState, r: int, k: int) -> pd.DataFrame:
    """Round ``r``'s top ``k`` as rows ``src, dst, score, rank`` (what the later stages read)."""
    rd = state.rounds[r]
    kk = min(k, rd.ids.shape[1])
    ok = rd.ids[:, :kk] >= 0
    src = np.repeat(np.arange(state.n), ok.sum(1))
    return pd.DataFrame(
        {
            "src": state.ids[src].astype(object),
            "dst": state.ids[rd.ids[:, :kk][ok]].astype(object),
            "score": rd.scores[:, :kk][ok].astype(np.float32),
            "rank": (np.nonzero(ok)[1] + 1).astype(np.int32),
        }
    )


def rule_prefix(state: DriverState, k: int, rule: Any, labels: np.ndarray | None = None) -> pd.DataFrame:
    """The rows of the last round's top ``k`` the edge rules of ``rule`` (a ``MatchConf``) read,
    ``src, dst, score``: each list's first ``rounds.rule_depth(rule)`` ranks and its rows at or
    above ``rule.threshold`` (in double): :func:`listing_dedup.search.rounds.rule_rows` on the
    arrays, for graph/edges.select_edges_match on the driver. ``labels``: each row's label
    instead of its ``posting_id`` (integers in the ids' order: the rule's ties by id hold)."""
    from listing_dedup.search.rounds import rule_depth

    rd = state.rounds[-1]
    kk = min(k, rd.ids.shape[1])
    ids, sc = rd.ids[:, :kk], rd.scores[:, :kk]
    reads = (np.arange(kk) < rule_depth(rule))[None, :] | (sc.astype(np.float64) >= float(rule.threshold))
    ok = (ids >= 0) & reads
    src = np.repeat(np.arange(state.n), ok.sum(1))
    if labels is not None:  # each row's label in an order that is the ids' (graph/driver_graph: vertices)
        return pd.DataFrame({"src": labels[src], "dst": labels[ids[ok]], "score": sc[ok]})
    return pd.DataFrame(
        {"src": state.ids[src].astype(object), "dst": state.ids[ids[ok]].astype(object), "score": sc[ok]}
    )


# --------------------------------------------------------------------------------------
# the state's files


def state_folder(warehouse: str, run_date: str, run_id: str) -> str:
    return f"{str(warehouse).rstrip('/')}/{STATE_DIR}/{run_date}/{run_id}"


def write_npy(uri: str, a: np.ndarray) -> None:
    """``a`` as the ``.npy`` file ``np.save`` writes (the same bytes: the 1.0 header of the
    C-ordered array, then its data), the data handed to the stream from the array's own
    memory: no copy of it in a buffer first (``np.save`` into a ``BytesIO``, then its
    ``getvalue()``, copied a 0.4 GB vectors array twice)."""
    from listing_dedup.search.indexer import _fs

    a = np.ascontiguousarray(a)
    if a.dtype.hasobject:
        raise ValueError("an object array has no .npy file without pickling")
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(a))
    filesystem, path = _fs(uri)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as f:
        f.write(head.getvalue())
        if a.size:
            f.write(memoryview(a.reshape(-1).view(np.uint8)))


def read_npy(uri: str) -> np.ndarray:
    """The array of a ``.npy`` file, read from the stream into the array (``np.load`` reads a
    stream by chunks): no copy of the whole file as ``bytes`` first."""
    from listing_dedup.search.indexer import _fs

    filesystem, path = _fs(uri)
    with filesystem.open_input_file(path) as f:
        return np.load(f, allow_pickle=False)


def save_state(warehouse: str, run_date: str, run_id: str, state: DriverState) -> str:
    """Write ``state`` under :func:`state_folder` (``meta.json`` last: a folder without it is
    incomplete and never read)."""
    from listing_dedup.search.indexer import _write_bytes

    folder = state_folder(warehouse, run_date, run_id)
    write_npy(f"{folder}/ids.npy", state.ids)
    for r, rd in enumerate(state.rounds):
        arrays = [("ids", rd.ids), ("scores", rd.scores), ("vectors", rd.vectors), ("assign", rd.assign)]
        if rd.probes is not None:
            arrays.append(("probes", rd.probes))
        for name, a in arrays:
            write_npy(f"{folder}/r{r}_{name}.npy", a)
    meta = {"rounds": len(state.rounds), "depth": state.depth, "n": state.n}
    meta["probes"] = all(rd.probes is not None for rd in state.rounds)
    _write_bytes(f"{folder}/meta.json", json.dumps(meta, sort_keys=True).encode())
    return folder


def has_state(warehouse: str, run_date: str, run_id: str) -> bool:
    from listing_dedup.search.indexer import _fs

    filesystem, path = _fs(f"{state_folder(warehouse, run_date, run_id)}/meta.json")
    import pyarrow.fs as pafs

    return filesystem.get_file_info(path).type == pafs.FileType.File


def load_state(warehouse: str, run_date: str, run_id: str) -> DriverState:
    from listing_dedup.search.indexer import _read_bytes

    folder = state_folder(warehouse, run_date, run_id)
    meta = json.loads(_read_bytes(f"{folder}/meta.json"))

    def arr(name: str) -> np.ndarray:
        return read_npy(f"{folder}/{name}.npy")

    probes = bool(meta.get("probes"))  # a state written before they were kept has none
    rounds = [
        RoundArrays(
            arr(f"r{r}_ids"),
            arr(f"r{r}_scores"),
            arr(f"r{r}_vectors"),
            arr(f"r{r}_assign"),
            arr(f"r{r}_probes") if probes else None,
        )
        for r in range(int(meta["rounds"]))
    ]
    return DriverState(arr("ids"), rounds, int(meta["depth"]))


def prune_states(warehouse: str, keep_from: str) -> None:
    """Remove the state folders of dates before ``keep_from`` (the date tonight continued: kept,
    with tonight's). A failure is logged only."""
    import pyarrow.fs as pafs

    from listing_dedup.search.indexer import _fs

    filesystem, root = _fs(f"{str(warehouse).rstrip('/')}/{STATE_DIR}")
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        for info in infos:
            if info.type == pafs.FileType.Directory and info.base_name < keep_from:
                filesystem.delete_dir(info.path)
    except OSError as e:
        log.warning("could not prune the list state before %s: %s", keep_from, e)


# --------------------------------------------------------------------------------------
# the thin Spark layer: what the job hands the driver plan and takes back


def incremental_rounds(
    emb: Any,
    delta: Any,
    prev: DriverState,
    quantizer: Any,
    cfg: Any,
    *,
    depth: int,
    timer: Any,
    keep: Any,
    with_first: bool = False,
    nbrs_k: int | None = None,
) -> Any:
    """An incremental night's rounds on the driver, as a :class:`~listing_dedup.search.rounds.
    SearchRounds` the later stages read like the Spark plan's: ``emb`` tonight's fused vectors
    (only the delta's are collected: the others are the state's, the cache's bits), ``delta``
    ``posting_id, kind``, ``prev`` the continued night's state, ``quantizer`` the epoch's. The
    last round's top ``k`` (with its ``rank``) goes back to Spark as one frame (``nbrs`` and the
    rule's ``lists[-1]``), the first round's only ``with_first`` (the re-ranker reads it).
    ``nbrs_k`` < ``k``: only each list's best ``nbrs_k`` go back (the health check's top-1,
    where the later stages read the arrays: graph/driver_graph); :func:`last_frame` ships the
    top ``k`` when a later stage needs it after all."""
    from pyspark.sql import functions as F

    from listing_dedup.search.indexer import as_matrix
    from listing_dedup.search.rounds import SearchRounds

    spark = emb.sparkSession
    k = cfg.index.k
    with timer.stage("search") as c:
        moved = delta.where(F.col("kind") != "unchanged").toPandas()
        removed = moved.loc[moved["kind"].isin(["deleted", "changed"]), "posting_id"]
        ins = F.broadcast(delta.where(F.col("kind").isin("added", "changed")).select("posting_id"))
        got = emb.join(ins, "posting_id").select("posting_id", "emb").toPandas()
        d = prev.rounds[0].vectors.shape[1]
        new_vectors = as_matrix(got["emb"], d) if len(got) else np.zeros((0, d), dtype=np.float32)
        c["delta_vectors"] = len(got)
    state = driver_rounds(
        prev,
        removed=removed.tolist(),
        new_ids=got["posting_id"].tolist(),
        new_vectors=new_vectors,
        centroids=quantizer.centroids,
        nprobe=cfg.index.nprobe,
        k=k,
        depth=depth,
        thresholds=tuple(cfg.inb.thresholds),
        search_depth=cfg.incremental.search_depth or None,
        stage=timer.stage,
    )
    with timer.stage("lists") as c:
        schema = "src string, dst string, score float, rank int"
        last = keep(to_frame(spark, top_k_frame(state, len(state.rounds) - 1, min(k, nbrs_k or k)), schema))
        c["rows"] = last.count()
        first = None
        if with_first:
            first = keep(to_frame(spark, top_k_frame(state, 0, k), schema)).select("src", "dst", "score")
    nbrs = last.select("src", "dst", "score")
    lists: list[Any] = [None] * (len(state.rounds) - 1) + [last]
    return SearchRounds(
        lists, [emb], first, nbrs, quantizer, dict(state.counts), driver=state, nbrs_k=min(k, nbrs_k or k)
    )


def last_frame(spark: Any, rounds: Any, k: int, keep: Any) -> None:
    """Ship the driver rounds' last top ``k`` to Spark (``nbrs``, ``lists[-1]``) when
    :func:`incremental_rounds` shipped fewer (``rounds.nbrs_k``)."""
    if rounds.driver is None or rounds.nbrs_k is None or rounds.nbrs_k >= k:
        return
    schema = "src string, dst string, score float, rank int"
    last = keep(to_frame(spark, top_k_frame(rounds.driver, len(rounds.driver.rounds) - 1, k), schema))
    rounds.lists[-1], rounds.nbrs, rounds.nbrs_k = last, last.select("src", "dst", "score"), k


def to_frame(spark: Any, pdf: pd.DataFrame | Any, schema: str) -> Any:
    """``pdf`` (a pandas frame or an Arrow table) as a Spark frame of
    ``spark.default.parallelism`` partitions: Arrow makes one a record batch (780 for the 1.6M
    rows of a 30k catalog's top k), and every later stage would run that many tasks (the edges
    stage took 70 s instead of 6 on them, docs/benchmarks.md)."""
    return spark.createDataFrame(pdf, schema).coalesce(max(1, spark.sparkContext.defaultParallelism))


def vectors_frame(spark: Any, state: DriverState) -> Any:
    """Round 0's fused vectors as ``posting_id, emb`` (the embed stage's frame, for a night that
    embedded only its delta and whose later stages read every vector after all)."""
    pdf = pd.DataFrame({"posting_id": state.ids.astype(object), "emb": list(state.rounds[0].vectors)})
    return to_frame(spark, pdf, "posting_id string, emb array<float>")


def state_of_rounds(rounds: Any, depth: int, nprobe: int | None = None) -> DriverState:
    """A night's state from the Spark plan's rounds (a full night, the reference, or an
    incremental night of the Spark plan): every round's lists and vectors collected."""
    from listing_dedup.search.indexer import as_matrix
    from listing_dedup.search.rounds import ranked

    lists = [ranked(df).select("src", "dst", "score", "rank").toPandas() for df in rounds.lists]
    vectors = []
    for df in rounds.vectors:
        pdf = df.select("posting_id", "emb").toPandas()
        d = rounds.quantizer.d
        vectors.append((pdf["posting_id"], as_matrix(pdf["emb"], d) if len(pdf) else np.zeros((0, d), np.float32)))
    return full_state(lists, vectors, rounds.quantizer.centroids, depth, nprobe)


def state_frames(spark: Any, state: DriverState) -> tuple[list[Any], list[Any]]:
    """The state's lists and blended vectors as the Spark plan reads them from the Delta state
    (``src, dst, score, rank`` each round; ``posting_id, emb`` each blending round, None for
    round 0): a night whose catalog outgrew ``incremental.driver_max_listings`` continues a
    state the driver plan kept."""
    lists, vectors = [], [None]
    schema = "src string, dst string, score float, rank int"
    for r, rd in enumerate(state.rounds):
        lists.append(to_frame(spark, top_k_frame(state, r, rd.ids.shape[1]), schema))
        if r:
            pdf = pd.DataFrame({"posting_id": state.ids.astype(object), "emb": list(rd.vectors)})
            vectors.append(to_frame(spark, pdf, "posting_id string, emb array<float>"))
    return lists, vectors
