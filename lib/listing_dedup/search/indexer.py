"""Sharded IVF nearest-neighbour search on Spark (FAISS, inner product), memory bounded by conf.

Embeddings are L2-normalised float32 vectors, so inner product = cosine similarity.

Design (the scale arithmetic is in docs/scale.md)
------
1. **Train** (driver, once per job): a sample of at most ``IndexConf.train_sample`` rows and
   ``IndexConf.train_bytes`` bytes comes to the driver; spherical k-means
   (:func:`train_quantizer`) gives ``nlist = IndexConf.lists_for(n, sample)`` centroids (at
   most ``sample / points_per_list``). The :class:`Quantizer` is reused by every later index
   of the job (INB rounds, per-signal searches of the same dimension) instead of retraining.
   With one list the search is exact; the same code runs (no separate path).
2. **Build** (executors): every vector is assigned to its nearest centroid (a pandas UDF with
   the centroids broadcast). IVF lists are grouped into ``IndexConf.shards_for(n)`` shards
   (``list % n_shards``, or ``proximity``: contiguous groups of nearby centroids, so a query's
   probed lists fall in few shards). Each shard task builds its index over the same quantizer
   with the *precomputed* list assignment (``add_core``), so routing and storage can never
   disagree on near ties, and writes it as files under the index's work folder. ``flat``
   storage with ``scan: blas`` (the default): the float32 vectors stored list by list with
   the lists' offsets and their ``posting_id``s, no FAISS index; ``scan: faiss``: a FAISS
   ``IndexIVFFlat``; ``storage: sq8``: an ``IndexIVFScalarQuantizer`` (8-bit codes) plus the
   float32 vectors for re-scoring.
   Only a (shard, rows, bytes) row per shard comes back: no cell or collect grows with the
   catalog.
3. **Search** (executors): each query's top-``nprobe`` lists are computed against the
   broadcast centroids; the query goes to each shard owning one of them, and the queries of a
   shard are cut into chunks of at most ``query_chunk_rows`` (``groupBy(shard, chunk)``); a
   task opens its shard's files (cached per Python worker) and searches with the queries'
   *global* probe lists (lists the shard does not own are empty there): ``scan: blas`` goes
   list by list, the chunk's queries probing a list scored against its vectors in one matrix
   product (:func:`scan_lists`: exact, 5-8x faster than FAISS's per-query scan on CPU,
   docs/scale.md; with ``index.device`` cuda or auto on a GPU, the same in torch:
   search/scan_torch.py); FAISS runs ``search_preassigned``.
   With ``sq8`` the shard keeps ``k * rescore_factor`` candidates by the compressed score and
   re-scores them exactly on the float32 vectors. Each shard returns up to ``k`` non-self
   neighbours a query; a window keeps the global top ``k`` a query. With ``flat`` this equals
   one global ``IndexIVFFlat`` with the same quantizer and ``nprobe``.

Ties: scores are compared exactly; the merge orders by ``score desc, dst asc``. The BLAS
scan's scores may differ from FAISS's in the last float32 bit (another summation order);
a chunk's queries are sorted by ``posting_id``, and a shard stores each list's rows in
``posting_id`` order, so a rerun computes the same bits. Nothing depends on the input frame's
partitioning or row order: the quantizer's sample is chosen by a hash of ``posting_id``
(:func:`_sample_embeddings`), the chunks by another, and a shard's rows are sorted. Inside a
shard FAISS keeps, among vectors tied exactly at the k-th score, the one it scanned first,
so which of several exactly-tied candidates survives at the k-th position is FAISS's
choice (as for a single global index); every score above the k-th is always returned.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from listing_dedup.config import IndexConf
from listing_dedup.errors import ConfigError, DedupError, InputError
from listing_dedup.faults import maybe_fail_once
from listing_dedup.frames import PAIR_SCHEMA, empty_pairs
from listing_dedup.search.scan_torch import scan_device, scan_lists_torch

log = logging.getLogger(__name__)

SHARD_SCHEMA = "shard int, n long, bytes long"
_SEARCH_CHUNK = 8192  # queries per search_preassigned call inside a shard task


# --------------------------------------------------------------------------------------
# pure numpy / faiss core (runs on the driver and on executors)


def _faiss() -> Any:
    import faiss

    return faiss


_BLAS_LIMIT: list[Any] = []  # the worker's BLAS thread limit (kept alive: it stays in force)


def _limit_threads() -> None:
    """On an executor, let FAISS and BLAS use the task's cores only (not every core of the host)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is not None:
        cores = max(1, int(ctx.cpus()))
        _faiss().omp_set_num_threads(cores)
        if not _BLAS_LIMIT or _BLAS_LIMIT[0][0] != cores:
            from threadpoolctl import threadpool_limits

            _BLAS_LIMIT[:] = [(cores, threadpool_limits(limits=cores, user_api="blas"))]


def as_matrix(vectors: Any, d: int | None = None) -> np.ndarray:
    """Stack a sequence of equal-length vectors (a pandas Series of arrays, a list, a 2-D
    array) into a C-contiguous float32 ``(n, d)`` matrix, checking the dimension."""
    if isinstance(vectors, np.ndarray) and vectors.ndim == 2:
        x = vectors
    else:
        seq = list(vectors)
        if not seq:
            return np.zeros((0, d or 0), dtype=np.float32)
        if any(v is None for v in seq):
            raise InputError("embedding column holds a null vector")
        try:
            x = np.stack([np.asarray(v, dtype=np.float32) for v in seq])
        except ValueError as e:
            raise InputError(f"embeddings do not all have the same dimension: {e}") from None
    if x.ndim != 2:
        raise InputError(f"embeddings must be vectors, got an array of shape {x.shape}")
    if d is not None and x.shape[1] != d:
        raise InputError(f"embedding dimension {x.shape[1]} does not match the index dimension {d}")
    return np.ascontiguousarray(x, dtype=np.float32)


def train_quantizer(sample: np.ndarray, nlist: int, *, seed: int, niter: int) -> np.ndarray:
    """Coarse quantizer: ``nlist`` unit-norm centroids ``(nlist, d)`` float32 from spherical
    k-means (``faiss.Kmeans(spherical=True)``) on ``sample``. With ``nlist == 1`` the
    normalised mean is returned (one list: the search is exact whatever the centroid)."""
    x = as_matrix(sample)
    n, d = x.shape
    if nlist < 1:
        raise ConfigError(f"index.nlist: need at least one list, got {nlist}")
    if d == 0:
        raise InputError("embeddings have dimension 0")
    if n < nlist:
        raise InputError(f"cannot train {nlist} IVF lists on {n} sample vectors")
    if nlist == 1:
        c = x.astype(np.float64).mean(axis=0)
        norm = np.linalg.norm(c)
        if not np.isfinite(norm) or norm == 0.0:
            c = np.zeros(d)
            c[0] = 1.0
            norm = 1.0
        return (c / norm).astype(np.float32).reshape(1, d)
    faiss = _faiss()
    km = faiss.Kmeans(d, nlist, niter=niter, seed=seed, spherical=True, verbose=False)
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32).reshape(nlist, d)


def _quantizer(centroids: np.ndarray) -> Any:
    faiss = _faiss()
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    q = faiss.IndexFlatIP(c.shape[1])
    q.add(c)
    return q


def assign_lists(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The IVF list of each vector: argmax of the inner product with the centroids, computed
    by FAISS exactly as ``IndexIVF.add`` does (``quantizer.assign(x, 1)``). int64 ``(n,)``."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    _, idx = _quantizer(centroids).search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return idx[:, 0].astype(np.int64)


def probe_lists(x: np.ndarray, centroids: np.ndarray, nprobe: int) -> np.ndarray:
    """The ``nprobe`` lists each query visits (as ``IndexIVF.search`` chooses them):
    int64 ``(n, nprobe)``, best first."""
    nprobe = min(nprobe, len(centroids))
    if len(x) == 0:
        return np.zeros((0, nprobe), dtype=np.int64)
    _, idx = _quantizer(centroids).search(np.ascontiguousarray(x, dtype=np.float32), nprobe)
    return idx.astype(np.int64)


def build_shard_index(x: np.ndarray, lists: np.ndarray, centroids: np.ndarray, storage: str = "flat") -> bytes:
    """Serialized IVF index (inner product) over ``centroids`` holding ``x`` with ids
    ``0..n-1``, each vector stored in the precomputed list ``lists[i]`` (no re-assignment).
    ``storage``: ``flat`` (float32 vectors) or ``sq8`` (8-bit scalar codes, trained on ``x``)."""
    faiss = _faiss()
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    nlist, d = centroids.shape
    x = as_matrix(x, d)
    lists = np.ascontiguousarray(lists, dtype=np.int64)
    if len(lists) != len(x):
        raise ValueError("one list id per vector expected")
    if len(lists) and (lists.min() < 0 or lists.max() >= nlist):
        raise ValueError(f"list ids must be in [0, {nlist})")
    quantizer = _quantizer(centroids)
    if storage == "sq8":
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        index.by_residual = False  # codes of the vectors themselves (the lists are given, not trained)
        index.sq.train(x if len(x) else np.zeros((1, d), dtype=np.float32))
        index.is_trained = True
    else:
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    assert index.is_trained  # a flat quantizer holding nlist centroids is a trained quantizer
    n = len(x)
    if n:
        ids = np.arange(n, dtype=np.int64)
        index.add_core(n, faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(lists))
    return faiss.serialize_index(index).tobytes()


def load_shard_index(blob: bytes) -> Any:
    faiss = _faiss()
    return faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))


def search_shard(index: Any, x: np.ndarray, probe: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``search_preassigned`` with the queries' global probe lists: ``(D, I)`` of shape
    ``(n, k)``, best first; missing results have id -1."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    probe = np.ascontiguousarray(probe, dtype=np.int64)
    index.nprobe = probe.shape[1]
    d_out = np.empty((len(x), k), dtype=np.float32)
    i_out = np.empty((len(x), k), dtype=np.int64)
    for s in range(0, len(x), _SEARCH_CHUNK):
        e = min(len(x), s + _SEARCH_CHUNK)
        d_out[s:e], i_out[s:e] = index.search_preassigned(x[s:e], k, probe[s:e], None)
    return d_out, i_out


def list_layout(lists: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, offsets)`` for vectors stored list by list: ``order`` sorts the rows by list
    (stable: a list keeps its rows' order), and list ``l``'s rows are
    ``offsets[l]:offsets[l + 1]`` of the sorted rows; ``offsets`` is int64 ``(nlist + 1,)``."""
    lists = np.asarray(lists, dtype=np.int64)
    order = np.argsort(lists, kind="stable")
    offsets = np.searchsorted(lists[order], np.arange(nlist + 1, dtype=np.int64)).astype(np.int64)
    return order, offsets


def probed_lists(probe: np.ndarray, offsets: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """The lists ``probe`` (int ``(n, nprobe)``, global list ids) probes that hold rows in the
    layout ``offsets`` (:func:`list_layout`), one at a time: ``(a, b, queries)``, the list's rows
    ``a:b`` and the (unique) queries that probe it, in list order."""
    offsets = np.asarray(offsets, dtype=np.int64)
    probe = np.asarray(probe, dtype=np.int64)
    qi = np.repeat(np.arange(len(probe), dtype=np.int64), probe.shape[1])
    li = probe.reshape(-1)
    held = offsets[li + 1] > offsets[li]  # lists that hold rows in this shard
    qi, li = qi[held], li[held]
    by_list = np.argsort(li, kind="stable")
    qi, li = qi[by_list], li[by_list]
    starts = np.flatnonzero(np.r_[True, li[1:] != li[:-1]]) if len(li) else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], len(li)]
    for a_q, b_q in zip(starts.tolist(), ends.tolist()):
        lst = int(li[a_q])
        yield int(offsets[lst]), int(offsets[lst + 1]), qi[a_q:b_q]


def scan_lists(
    x: np.ndarray, probe: np.ndarray, vectors: np.ndarray, offsets: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of each query over the rows of its probed lists: the same
    result as ``IndexIVFFlat.search_preassigned`` (up to the order of exact ties), computed
    list by list: the queries probing a list are one matrix, their scores against the list's
    vectors one matrix product (BLAS), and a running top ``k`` per query merges the lists.

    ``vectors``: float32 ``(m, d)`` stored list by list, list ``l`` at rows
    ``offsets[l]:offsets[l+1]`` (:func:`list_layout`); ``probe``: int ``(n, nprobe)`` global
    list ids (lists with no rows here are skipped). Returns ``(D, I)`` of shape ``(n, k)``,
    best first; missing results have score -inf and id -1. Memory: the queries, ``2 n k``
    results and one (queries of a list) x (rows of a list) score block."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    best_s = np.full((n, k), -np.inf, dtype=np.float32)
    best_i = np.full((n, k), -1, dtype=np.int64)
    if n == 0 or k == 0 or probe.size == 0:
        return best_s, best_i
    for a, b, qs in probed_lists(probe, offsets):
        scores = x[qs] @ vectors[a:b].T  # (queries of the list, rows of the list)
        if b - a > k:
            top = np.argpartition(scores, b - a - k, axis=1)[:, b - a - k :]
            scores = np.take_along_axis(scores, top, axis=1)
            rows = top + a
        else:
            rows = np.broadcast_to(np.arange(a, b, dtype=np.int64), scores.shape)
        cand_s = np.concatenate([best_s[qs], scores], axis=1)
        cand_i = np.concatenate([best_i[qs], rows], axis=1)
        keep = np.argpartition(cand_s, cand_s.shape[1] - k, axis=1)[:, cand_s.shape[1] - k :]
        best_s[qs] = np.take_along_axis(cand_s, keep, axis=1)
        best_i[qs] = np.take_along_axis(cand_i, keep, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    best_s, best_i = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
    best_i[~np.isfinite(best_s)] = -1
    return best_s, best_i


def shard_of_lists(centroids: np.ndarray, n_shards: int, how: str) -> np.ndarray:
    """The shard of each IVF list, int64 ``(nlist,)``. ``modulo``: ``list % n_shards``.
    ``proximity``: recursive halving of the centroids along their principal direction
    (a balanced KD-split), so nearby lists share a shard and a query's ``nprobe`` nearest
    lists fall in few shards; shard sizes in lists differ by at most one."""
    nlist = len(centroids)
    if how == "modulo" or n_shards <= 1 or nlist <= n_shards:
        return np.arange(nlist, dtype=np.int64) % max(n_shards, 1)
    out = np.empty(nlist, dtype=np.int64)

    def split(rows: np.ndarray, first: int, count: int) -> None:
        if count == 1:
            out[rows] = first
            return
        c = centroids[rows].astype(np.float64)
        c = c - c.mean(axis=0)
        direction = np.linalg.svd(c, full_matrices=False)[2][0] if len(rows) > 1 else np.ones(c.shape[1])
        order = rows[np.argsort(c @ direction, kind="stable")]
        left = count // 2
        cut = int(round(len(rows) * left / count))
        split(order[:cut], first, left)
        split(order[cut:], first + left, count - left)

    split(np.arange(nlist), 0, n_shards)
    return out


def rescore(queries: np.ndarray, vectors: np.ndarray, i_mat: np.ndarray) -> np.ndarray:
    """Exact inner products of each query with its candidates ``i_mat`` (-1 = none: -inf)."""
    safe = np.where(i_mat >= 0, i_mat, 0)
    scores = np.einsum("qd,qkd->qk", queries, np.asarray(vectors[safe.reshape(-1)]).reshape(*safe.shape, -1))
    return np.where(i_mat >= 0, scores, -np.inf).astype(np.float32)


def _top_k_non_self(src: np.ndarray, ids: np.ndarray, d_mat: np.ndarray, i_mat: np.ndarray, k: int) -> pd.DataFrame:
    """Rows ``src, dst, score`` from a FAISS result: drops missing (-1) results and self
    matches (same posting_id), then keeps at most ``k`` per query (results are best first)."""
    n, kk = i_mat.shape
    if n == 0 or kk == 0:
        return empty_pairs()
    valid = i_mat >= 0
    dst = ids[np.where(valid, i_mat, 0)]
    srcm = np.repeat(src.reshape(-1, 1), kk, axis=1)
    keep = valid & (dst != srcm)
    keep &= np.cumsum(keep, axis=1) <= k
    return pd.DataFrame({"src": srcm[keep], "dst": dst[keep], "score": d_mat[keep].astype(np.float32)})


# --------------------------------------------------------------------------------------
# shard files (written by the build tasks, opened by the search tasks)


def _fs(uri: str) -> tuple[Any, str]:
    from pyarrow import fs as pafs

    if "://" not in uri:
        uri = os.path.abspath(uri)
        return pafs.LocalFileSystem(), uri
    return pafs.FileSystem.from_uri(uri)


def _write_bytes(uri: str, data: bytes) -> None:
    filesystem, path = _fs(uri)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as f:
        f.write(data)


def _read_bytes(uri: str) -> bytes:
    filesystem, path = _fs(uri)
    with filesystem.open_input_stream(path) as f:
        return f.read()


def write_shard_files(
    folder: str,
    shard: int,
    index_blob: bytes | None,
    ids: list[str],
    vectors: np.ndarray | None,
    offsets: np.ndarray | None = None,
) -> int:
    """``shard-NNNNN.faiss`` (the FAISS index; none for the blas scan), ``.ids`` (posting ids,
    Arrow IPC), ``.f32`` (the float32 vectors, raw: for re-scoring, or stored list by list for
    the blas scan) and ``.lists`` (the blas scan's list offsets, raw int64); returns the bytes
    written."""
    import pyarrow as pa

    base = f"{folder.rstrip('/')}/shard-{shard:05d}"
    sink = pa.BufferOutputStream()
    table = pa.table({"posting_id": pa.array(ids, pa.string())})
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    id_bytes = sink.getvalue().to_pybytes()
    n = len(id_bytes)
    if index_blob is not None:
        _write_bytes(base + ".faiss", index_blob)
        n += len(index_blob)
    _write_bytes(base + ".ids", id_bytes)
    for suffix, arr, dtype in ((".f32", vectors, np.float32), (".lists", offsets, np.int64)):
        if arr is not None:
            raw = np.ascontiguousarray(arr, dtype=dtype).tobytes()
            _write_bytes(base + suffix, raw)
            n += len(raw)
    return n


@dataclass(frozen=True)
class OpenShard:
    """One shard's files, opened: the FAISS index (None for the blas scan), the posting ids,
    the float32 vectors (re-scoring, or the blas scan's lists) and the blas scan's offsets."""

    index: Any
    ids: np.ndarray
    vectors: np.ndarray | None
    offsets: np.ndarray | None


_OPEN: dict[str, OpenShard] = {}  # per Python worker: the last shards opened
_OPEN_MAX = 2  # shards held at once by one worker (memory: about two shards)


def _read_array(base: str, suffix: str, dtype: Any, local: bool) -> np.ndarray:
    if local:  # memory-mapped: pages come from the OS cache, not the worker's heap
        path = os.path.abspath(base.removeprefix("file://") + suffix)
        if os.path.getsize(path) == 0:
            return np.zeros(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r")
    return np.frombuffer(_read_bytes(base + suffix), dtype=dtype)


def open_shard(folder: str, shard: int, d: int, vectors: bool, *, blas: bool = False) -> OpenShard:
    """One shard's files (``vectors``: also its ``.f32``; ``blas``: the list-by-list layout,
    no FAISS index), cached per worker."""
    import pyarrow as pa

    base = f"{folder.rstrip('/')}/shard-{shard:05d}"
    hit = _OPEN.get(base)
    if hit is not None:
        return hit
    local = "://" not in folder or folder.startswith("file://")
    index = None if blas else load_shard_index(_read_bytes(base + ".faiss"))
    ids = np.asarray(
        pa.ipc.open_file(pa.py_buffer(_read_bytes(base + ".ids"))).read_all()["posting_id"].to_pylist(), dtype=object
    )
    vecs = _read_array(base, ".f32", np.float32, local).reshape(-1, d) if vectors or blas else None
    offsets = np.array(_read_array(base, ".lists", np.int64, local)) if blas else None
    while len(_OPEN) >= _OPEN_MAX:
        _OPEN.pop(next(iter(_OPEN)))
    _OPEN[base] = OpenShard(index, ids, vecs, offsets)
    return _OPEN[base]


# --------------------------------------------------------------------------------------
# Spark wrapper


@dataclass(frozen=True)
class Quantizer:
    """The coarse quantizer of a job: trained once, reused by every index of that dimension."""

    centroids: np.ndarray
    sample_rows: int

    @property
    def nlist(self) -> int:
        return len(self.centroids)

    @property
    def d(self) -> int:
        return int(self.centroids.shape[1])


@dataclass
class IndexHandle:
    """A built sharded index: shard files under ``folder``. Call :meth:`unpersist` when done
    (it removes the folder and the broadcast)."""

    folder: str
    quantizer: Quantizer
    centroids_bc: Any  # Broadcast of the centroids
    shard_bc: Any  # Broadcast of the list -> shard map
    n_shards: int
    nprobe: int  # effective default: min(IndexConf.nprobe, nlist)
    k: int
    n_rows: int
    storage: str = "flat"
    rescore_factor: int = 1
    scan: str = "blas"  # IndexConf.scan
    device: str = "cpu"  # IndexConf.device: where the blas scan runs (search/scan_torch.py)
    query_chunk_rows: int = 50_000
    shard_sizes: dict[int, int] = field(default_factory=dict)  # non-empty shards only
    list_shard: np.ndarray | None = None
    owns_folder: bool = True

    @property
    def centroids(self) -> np.ndarray:
        return self.quantizer.centroids

    @property
    def nlist(self) -> int:
        return self.quantizer.nlist

    @property
    def d(self) -> int:
        return self.quantizer.d

    @property
    def exact(self) -> bool:
        """One list (or every list probed) and full vectors: the search is exact."""
        return self.nprobe >= self.nlist and self.storage == "flat"

    def unpersist(self) -> None:
        self.centroids_bc.unpersist()
        self.shard_bc.unpersist()
        if self.owns_folder:
            try:
                filesystem, path = _fs(self.folder)
                filesystem.delete_dir(path)
            except OSError:
                log.warning("could not remove the index folder %s", self.folder)


_HASH_SPAN = 2.0**64  # xxhash64 values span [-2^63, 2^63)


def _sample_embeddings(df: Any, n: int, m: int, seed: int, min_rows: int) -> np.ndarray:
    """Up to ``m`` embeddings, chosen on the executors; only they reach the driver.

    The sample is a function of the rows alone, never of the frame's partitioning or row order
    (a cached and a cold run lay their vectors out differently): each row's
    ``h = xxhash64(posting_id, seed)`` decides, the rows whose ``h`` falls under a cutoff that
    keeps about ``m + 10 sqrt(m) + 50`` of ``n`` are kept, and of those the ``m`` smallest
    ``(h, posting_id)`` reach the driver in that order (a top-``m`` per partition merged on
    the driver: it never holds more than the rows under the cutoff, about ``m``). k-means
    (whose initial centroids are drawn by position) therefore sees the same matrix in the same
    row order whatever the layout."""
    from pyspark.sql import functions as F

    frac = min(1.0, (m + 10.0 * math.sqrt(m) + 50.0) / max(n, 1))
    h = F.xxhash64(F.col("posting_id"), F.lit(int(seed)))
    keyed = df.select("posting_id", "emb", h.alias("_h"))
    if frac < 1.0:
        cutoff = int(-(2**63) + frac * _HASH_SPAN)  # h < cutoff for a fraction frac of uniform hashes
        picked = keyed.where(F.col("_h") < F.lit(cutoff))
    else:
        picked = keyed
    pdf = picked.orderBy("_h", "posting_id").limit(m).select("emb").toPandas()
    if len(pdf) < min_rows:  # a (very) unlucky cutoff: the m smallest hashes of all rows instead
        pdf = keyed.orderBy("_h", "posting_id").limit(m).select("emb").toPandas()
    return as_matrix(pdf["emb"])


def train(emb_df: Any, cfg: IndexConf, *, n_rows: int | None = None) -> Quantizer:
    """The job's coarse quantizer from a sample bounded in rows and bytes (driver)."""
    df = _check_input(emb_df, "embedding DataFrame")
    t0 = time.perf_counter()
    n = df.count() if n_rows is None else int(n_rows)
    if n == 0:
        raise InputError("cannot build an index over zero embeddings")
    first = df.select("emb").first()
    d = len(first["emb"]) if first is not None and first["emb"] is not None else 0
    m = cfg.sample_rows(n, d)
    nlist = cfg.lists_for(n, m)
    sample = _sample_embeddings(df, n, m, cfg.seed, min_rows=min(m, nlist))
    nlist = min(nlist, cfg.lists_for(n, len(sample)))
    centroids = train_quantizer(sample, nlist, seed=cfg.seed, niter=cfg.kmeans_iters)
    log.info(
        "index train: rows=%d sample=%d (%.0f MiB) d=%d lists=%d seconds=%.2f",
        n,
        len(sample),
        sample.nbytes / 2**20,
        d,
        nlist,
        time.perf_counter() - t0,
    )
    return Quantizer(centroids, len(sample))


def _assign_udf(bc: Any, d: int) -> Any:
    from pyspark.sql import functions as F

    @F.pandas_udf("int")
    def assign_list(emb: pd.Series) -> pd.Series:
        _limit_threads()
        x = as_matrix(emb, d)
        return pd.Series(assign_lists(x, bc.value).astype(np.int32))

    return assign_list


def _probe_udf(bc: Any, shard_bc: Any, d: int, nprobe: int, fail_stage: str = "") -> Any:
    from pyspark.sql import functions as F

    @F.pandas_udf("struct<probe: array<int>, shards: array<int>>")
    def probe(emb: pd.Series) -> pd.DataFrame:
        maybe_fail_once("search", fail_stage)
        _limit_threads()
        x = as_matrix(emb, d)
        p = probe_lists(x, bc.value, nprobe).astype(np.int32)
        owner = shard_bc.value[p]
        return pd.DataFrame({"probe": list(p), "shards": [np.unique(row).astype(np.int32) for row in owner]})

    return probe


def _build_fn(bc: Any, d: int, folder: str, storage: str, scan: str) -> Any:
    def build(pdf: pd.DataFrame) -> pd.DataFrame:
        _limit_threads()
        # rows in posting_id order whatever order the shuffle delivered them in: a list stores its
        # rows in this order, which decides the scan's float rounding and which of several exactly
        # tied candidates survives at the k-th place, so the search depends on the rows alone
        pdf = pdf.sort_values("posting_id", kind="stable")
        shard = int(pdf["shard"].iloc[0])
        x = as_matrix(pdf["emb"], d)
        lists = pdf["list_id"].to_numpy(dtype=np.int64)
        ids = pdf["posting_id"].astype(str).to_numpy(dtype=object)
        if storage == "flat" and scan == "blas":
            order, offsets = list_layout(lists, len(bc.value))
            size = write_shard_files(folder, shard, None, ids[order].tolist(), x[order], offsets)
        else:
            blob = build_shard_index(x, lists, bc.value, storage)
            size = write_shard_files(folder, shard, blob, ids.tolist(), x if storage != "flat" else None)
        return pd.DataFrame({"shard": [shard], "n": [len(pdf)], "bytes": [size]})

    return build


def _search_fn(
    folder: str, d: int, k: int, storage: str, rescore_factor: int, scan: str = "blas", device: str = "cpu"
) -> Any:
    blas = storage == "flat" and scan == "blas"

    def search_group(queries: pd.DataFrame) -> pd.DataFrame:
        if queries.empty:
            return empty_pairs()
        _limit_threads()
        # a fixed order whatever order the shuffle delivered the rows in: the BLAS scan's float
        # rounding may depend on a query's row in the matrix, and reruns must be reproducible
        queries = queries.sort_values("posting_id", kind="stable")
        shard = open_shard(folder, int(queries["shard"].iloc[0]), d, storage != "flat", blas=blas)
        x = as_matrix(queries["emb"], d)
        probe = np.stack([np.asarray(p, dtype=np.int64) for p in queries["probe"]])
        # one extra: the query itself may be among the results; sq8 keeps more for the re-score
        kk = min((k + 1) * (rescore_factor if storage != "flat" else 1), len(shard.ids))
        if blas and device != "cpu" and (on := scan_device(device)) != "cpu":
            d_mat, i_mat = scan_lists_torch(x, probe, shard.vectors, shard.offsets, kk, device=on)
        elif blas:
            d_mat, i_mat = scan_lists(x, probe, shard.vectors, shard.offsets, kk)
        else:
            d_mat, i_mat = search_shard(shard.index, x, probe, kk)
        if storage != "flat":
            d_mat = rescore(x, shard.vectors, i_mat)
            order = np.argsort(-d_mat, axis=1, kind="stable")
            d_mat, i_mat = np.take_along_axis(d_mat, order, 1), np.take_along_axis(i_mat, order, 1)
        src = queries["posting_id"].astype(str).to_numpy(dtype=object)
        return _top_k_non_self(src, shard.ids, d_mat, i_mat, k)

    return search_group


def _check_input(df: Any, what: str) -> Any:
    cols = set(df.columns)
    missing = {"posting_id", "emb"} - cols
    if missing:
        raise InputError(f"{what} lacks column(s) {sorted(missing)} (needs posting_id, emb)")
    return df.select("posting_id", "emb")


def _new_folder(cfg: IndexConf) -> tuple[str, bool]:
    name = f"index-{uuid.uuid4().hex[:12]}"
    if cfg.work_dir:
        return f"{cfg.work_dir.rstrip('/')}/{name}", True
    return os.path.join(tempfile.mkdtemp(prefix="listing-dedup-"), name), True


def build_index(
    emb_df: Any, cfg: IndexConf, *, n_rows: int | None = None, quantizer: Quantizer | None = None
) -> IndexHandle:
    """Build the shards on the executors over ``quantizer`` (trained from a sample here when
    not given, see :func:`train`).

    ``emb_df``: ``posting_id`` string, ``emb`` array<float> (L2-normalised). It is read up to
    three times (count, sample, build): cache it if it is expensive to compute. ``n_rows``:
    its row count when the caller knows it (saves the count); it must be right, the build
    checks it against the rows it indexed."""
    from pyspark.sql import functions as F

    df = _check_input(emb_df, "embedding DataFrame")
    spark = emb_df.sparkSession
    n = df.count() if n_rows is None else int(n_rows)
    if n == 0:
        raise InputError("cannot build an index over zero embeddings")
    if quantizer is None:
        quantizer = train(df, cfg, n_rows=n)
    t1 = time.perf_counter()
    d = quantizer.d
    n_shards = cfg.shards_for(n)
    list_shard = shard_of_lists(quantizer.centroids, n_shards, cfg.shard_by)
    bc = spark.sparkContext.broadcast(quantizer.centroids)
    shard_bc = spark.sparkContext.broadcast(list_shard)
    folder, owns = _new_folder(cfg)
    shard_map = F.udf(lambda lst: int(shard_bc.value[lst]), "int")
    assigned = df.withColumn("list_id", _assign_udf(bc, d)("emb")).withColumn("shard", shard_map("list_id"))
    rows = (
        assigned.groupBy("shard").applyInPandas(_build_fn(bc, d, folder, cfg.storage, cfg.scan), SHARD_SCHEMA).collect()
    )
    sizes = {int(r["shard"]): int(r["n"]) for r in rows}
    if sum(sizes.values()) != n:
        raise DedupError(f"index build indexed a different row count: {sum(sizes.values())} indexed of {n}")
    handle = IndexHandle(
        folder=folder,
        quantizer=quantizer,
        centroids_bc=bc,
        shard_bc=shard_bc,
        n_shards=n_shards,
        nprobe=min(cfg.nprobe, quantizer.nlist),
        k=cfg.k,
        n_rows=n,
        storage=cfg.storage,
        rescore_factor=cfg.rescore_factor,
        scan=cfg.scan,
        device=cfg.device,
        query_chunk_rows=cfg.query_chunk_rows,
        shard_sizes=sizes,
        list_shard=list_shard,
        owns_folder=owns,
    )
    log.info(
        "index build: rows=%d lists=%d shards=%d (%s) non_empty_shards=%d largest_shard=%d storage=%s "
        "scan=%s files=%.1f MiB seconds=%.2f",
        n,
        quantizer.nlist,
        n_shards,
        cfg.shard_by,
        len(sizes),
        max(sizes.values()),
        cfg.storage,
        cfg.scan,
        sum(int(r["bytes"]) for r in rows) / 2**20,
        time.perf_counter() - t1,
    )
    return handle


def search(
    index: IndexHandle,
    query_df: Any,
    k: int | None = None,
    *,
    nprobe: int | None = None,
    fail_stage: str = "",
    n_queries: int | None = None,
    with_rank: bool = False,
) -> Any:
    """Top-``k`` neighbours (``k`` defaults to ``IndexConf.k``) of each query in the index,
    never the query itself (same ``posting_id``): a lazy DataFrame ``src, dst, score``
    (string, string, float), at most ``k`` rows per ``src``; ``with_rank`` adds ``rank`` (int,
    1 = nearest; score desc, then dst), which the search's own top-``k`` window computes anyway.
    ``nprobe`` overrides the configured one (capped at ``nlist``; ``nprobe >= nlist`` with flat storage is exact).
    ``n_queries`` (default: the index's row count, as for a self-join) sizes the chunks.
    ``fail_stage`` is ``TestingConf.fail_once_stage``: ``"search"`` makes the first attempt
    of one task of this stage fail (fault-injection tests only)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    k = index.k if k is None else int(k)
    if k < 1:
        raise ConfigError(f"config key 'index.k': must be >= 1, got {k}")
    nprobe = min(index.nprobe if nprobe is None else int(nprobe), index.nlist)
    if nprobe < 1:
        raise ConfigError(f"config key 'index.nprobe': must be >= 1, got {nprobe}")
    q = _check_input(query_df, "query DataFrame")
    non_empty = sorted(index.shard_sizes)
    n_q = index.n_rows if n_queries is None else int(n_queries)
    # chunks a shard's queries are cut into: a query visits at most min(nprobe, n_shards) shards
    per_shard = n_q * min(nprobe, index.n_shards) / max(len(non_empty), 1)
    n_chunks = max(1, math.ceil(per_shard / index.query_chunk_rows))
    routed = (
        q.withColumn("_p", _probe_udf(index.centroids_bc, index.shard_bc, index.d, nprobe, fail_stage)("emb"))
        .select("posting_id", "emb", F.col("_p.probe").alias("probe"), F.explode("_p.shards").alias("shard"))
        .filter(F.col("shard").isin(non_empty))
        .withColumn("chunk", F.pmod(F.xxhash64("posting_id"), F.lit(n_chunks)))
    )
    hits = routed.groupBy("shard", "chunk").applyInPandas(
        _search_fn(index.folder, index.d, k, index.storage, index.rescore_factor, index.scan, index.device), PAIR_SCHEMA
    )
    w = Window.partitionBy("src").orderBy(F.col("score").desc(), F.col("dst").asc())
    out = hits.withColumn("_rank", F.row_number().over(w)).filter(F.col("_rank") <= k)
    out = out.withColumnRenamed("_rank", "rank") if with_rank else out.drop("_rank")
    log.info(
        "index search (planned, lazy): k=%d nprobe=%d lists=%d shards=%d non_empty_shards=%d chunks=%d "
        "storage=%s exact=%s seconds=%.2f",
        k,
        nprobe,
        index.nlist,
        index.n_shards,
        len(non_empty),
        n_chunks,
        index.storage,
        nprobe >= index.nlist and index.storage == "flat",
        time.perf_counter() - t0,
    )
    return out
