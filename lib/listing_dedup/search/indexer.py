"""Sharded IVF nearest-neighbour search on Spark (FAISS ``IndexIVFFlat``, inner product).

Embeddings are L2-normalised float32 vectors, so inner product = cosine similarity.

Design
------
1. **Train** (driver): a sample of at most ``IndexConf.train_sample`` rows is collected and
   spherical k-means (:func:`train_quantizer`) gives ``nlist = IndexConf.lists_for(n)``
   centroids. With one list the search is exact; the same code runs (no separate path).
2. **Build** (executors): every vector is assigned to its nearest centroid (a pandas UDF
   with the centroids broadcast). IVF list ``l`` belongs to shard ``l % n_shards``. Rows are
   grouped by shard and each shard task builds an ``IndexIVFFlat`` over the same quantizer,
   adding its vectors with the *precomputed* list assignment (``add_core``), so routing and
   storage can never disagree on near ties. FAISS ids are the row's position inside its
   shard; the shard row carries the matching ``posting_id`` array, so index and id mapping
   always come from the same computation. The shard DataFrame
   ``(shard, n, index, ids)`` is persisted.
3. **Search** (executors): each query's top-``nprobe`` lists are computed against the
   broadcast centroids; the query is sent to every shard owning one of those lists
   (``explode``), ``cogroup`` pairs the queries with their shard, and
   ``search_preassigned`` searches the shard with the query's *global* probe lists (lists
   the shard does not own are empty there). Each shard returns up to ``k`` non-self
   neighbours per query; a window keeps the global top ``k`` per query. This equals one
   global ``IndexIVFFlat`` with the same quantizer and ``nprobe``.

Ties: scores are compared exactly; the merge orders by ``score desc, dst asc``. Inside a
shard FAISS keeps, among vectors tied exactly at the k-th score, the one it scanned first,
so which of several exactly-tied candidates survives at the k-th position is FAISS's
choice (as for a single global index); every score above the k-th is always returned.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from listing_dedup.config import IndexConf
from listing_dedup.errors import ConfigError, DedupError, InputError
from listing_dedup.faults import maybe_fail_once
from listing_dedup.frames import PAIR_SCHEMA, empty_pairs

log = logging.getLogger(__name__)

SHARD_SCHEMA = "shard int, n long, index binary, ids array<string>"
_SEARCH_CHUNK = 8192  # queries per search_preassigned call inside a shard task


# --------------------------------------------------------------------------------------
# pure numpy / faiss core (runs on the driver and on executors)


def _faiss() -> Any:
    import faiss

    return faiss


def _limit_threads() -> None:
    """On an executor, let FAISS use the task's cores only (not every core of the host)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is not None:
        _faiss().omp_set_num_threads(max(1, int(ctx.cpus())))


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


def build_shard_index(x: np.ndarray, lists: np.ndarray, centroids: np.ndarray) -> bytes:
    """Serialized ``IndexIVFFlat`` (inner product) over ``centroids`` holding ``x`` with ids
    ``0..n-1``, each vector stored in the precomputed list ``lists[i]`` (no re-assignment)."""
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
# Spark wrapper


@dataclass
class IndexHandle:
    """A built sharded index. ``shards`` is persisted: call :meth:`unpersist` when done."""

    shards: Any  # DataFrame[shard int, n long, index binary, ids array<string>], persisted
    centroids: np.ndarray
    centroids_bc: Any  # Broadcast of ``centroids``
    nlist: int
    n_shards: int
    nprobe: int  # effective default: min(IndexConf.nprobe, nlist)
    k: int
    d: int
    n_rows: int
    shard_sizes: dict[int, int] = field(default_factory=dict)  # non-empty shards only

    @property
    def exact(self) -> bool:
        """One list (or every list probed): the search is exact."""
        return self.nprobe >= self.nlist

    def unpersist(self) -> None:
        self.shards.unpersist()
        self.centroids_bc.unpersist()


def _sample_embeddings(df: Any, n: int, m: int, seed: int, min_rows: int) -> np.ndarray:
    """Up to ``m`` embeddings, sampled on the executors; only they reach the driver."""
    frac = min(1.0, (m + 10.0 * math.sqrt(m) + 50.0) / max(n, 1))
    pdf = df.select("emb").sample(False, frac, seed).limit(m).toPandas()
    if len(pdf) < min_rows:  # a (very) unlucky Bernoulli sample: take the first m rows instead
        pdf = df.select("emb").limit(m).toPandas()
    return as_matrix(pdf["emb"])


def _assign_udf(bc: Any, d: int) -> Any:
    from pyspark.sql import functions as F

    @F.pandas_udf("int")
    def assign_list(emb: pd.Series) -> pd.Series:
        _limit_threads()
        x = as_matrix(emb, d)
        return pd.Series(assign_lists(x, bc.value).astype(np.int32))

    return assign_list


def _probe_udf(bc: Any, d: int, nprobe: int, fail_stage: str = "") -> Any:
    from pyspark.sql import functions as F

    @F.pandas_udf("array<int>")
    def probe(emb: pd.Series) -> pd.Series:
        maybe_fail_once("search", fail_stage)
        _limit_threads()
        x = as_matrix(emb, d)
        p = probe_lists(x, bc.value, nprobe).astype(np.int32)
        return pd.Series(list(p), dtype=object)

    return probe


def _build_fn(bc: Any, d: int) -> Any:
    def build(pdf: pd.DataFrame) -> pd.DataFrame:
        _limit_threads()
        shard = int(pdf["shard"].iloc[0])
        x = as_matrix(pdf["emb"], d)
        blob = build_shard_index(x, pdf["list_id"].to_numpy(dtype=np.int64), bc.value)
        return pd.DataFrame(
            {"shard": [shard], "n": [len(pdf)], "index": [blob], "ids": [pdf["posting_id"].astype(str).tolist()]}
        )

    return build


def _search_fn(d: int, k: int) -> Any:
    def search_group(queries: pd.DataFrame, shard: pd.DataFrame) -> pd.DataFrame:
        if queries.empty or shard.empty:
            return empty_pairs()
        _limit_threads()
        row = shard.iloc[0]
        index = load_shard_index(row["index"])
        ids = np.asarray(list(row["ids"]), dtype=object)
        x = as_matrix(queries["emb"], d)
        probe = np.stack([np.asarray(p, dtype=np.int64) for p in queries["probe"]])
        kk = min(k + 1, len(ids))  # one extra: the query itself may be among the results
        d_mat, i_mat = search_shard(index, x, probe, kk)
        src = queries["posting_id"].astype(str).to_numpy(dtype=object)
        return _top_k_non_self(src, ids, d_mat, i_mat, k)

    return search_group


def _check_input(df: Any, what: str) -> Any:
    cols = set(df.columns)
    missing = {"posting_id", "emb"} - cols
    if missing:
        raise InputError(f"{what} lacks column(s) {sorted(missing)} (needs posting_id, emb)")
    return df.select("posting_id", "emb")


def build_index(emb_df: Any, cfg: IndexConf, *, n_rows: int | None = None) -> IndexHandle:
    """Train the quantizer on a driver-side sample and build the shards on the executors.

    ``emb_df``: ``posting_id`` string, ``emb`` array<float> (L2-normalised). It is read
    up to three times (count, sample, build): cache it if it is expensive to compute.
    ``n_rows``: its row count when the caller knows it (saves the count); it must be right,
    the build checks it against the rows it indexed."""
    from pyspark import StorageLevel

    df = _check_input(emb_df, "embedding DataFrame")
    spark = emb_df.sparkSession

    t0 = time.perf_counter()
    n = df.count() if n_rows is None else int(n_rows)
    if n == 0:
        raise InputError("cannot build an index over zero embeddings")
    nlist = cfg.lists_for(n)
    if cfg.train_sample < nlist:
        raise ConfigError(f"config key 'index.train_sample': {cfg.train_sample} is below the {nlist} IVF lists")
    m = min(n, cfg.train_sample)
    sample = _sample_embeddings(df, n, m, cfg.seed, min_rows=min(m, nlist))
    d = int(sample.shape[1])
    centroids = train_quantizer(sample, nlist, seed=cfg.seed, niter=cfg.kmeans_iters)
    log.info(
        "index train: rows=%d sample=%d d=%d lists=%d seconds=%.2f",
        n,
        len(sample),
        d,
        nlist,
        time.perf_counter() - t0,
    )

    t1 = time.perf_counter()
    bc = spark.sparkContext.broadcast(centroids)
    from pyspark.sql import functions as F

    assigned = df.withColumn("list_id", _assign_udf(bc, d)("emb")).withColumn(
        "shard", F.pmod(F.col("list_id"), F.lit(cfg.n_shards)).cast("int")
    )
    shards = (
        assigned.groupBy("shard").applyInPandas(_build_fn(bc, d), SHARD_SCHEMA).persist(StorageLevel.MEMORY_AND_DISK)
    )
    sizes = {int(r["shard"]): int(r["n"]) for r in shards.select("shard", "n").collect()}
    if sum(sizes.values()) != n:
        raise DedupError(f"index build indexed a different row count: {sum(sizes.values())} indexed of {n}")
    handle = IndexHandle(
        shards=shards,
        centroids=centroids,
        centroids_bc=bc,
        nlist=nlist,
        n_shards=cfg.n_shards,
        nprobe=min(cfg.nprobe, nlist),
        k=cfg.k,
        d=d,
        n_rows=n,
        shard_sizes=sizes,
    )
    log.info(
        "index build: rows=%d lists=%d shards=%d non_empty_shards=%d largest_shard=%d seconds=%.2f",
        n,
        nlist,
        cfg.n_shards,
        len(sizes),
        max(sizes.values()),
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
) -> Any:
    """Top-``k`` neighbours (``k`` defaults to ``IndexConf.k``) of each query in the index,
    never the query itself (same ``posting_id``): a lazy DataFrame ``src, dst, score``
    (string, string, float), at most ``k`` rows per ``src``. ``nprobe`` overrides the
    configured one (capped at ``nlist``; ``nprobe >= nlist`` is exact search).
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
    n_shards = index.n_shards
    non_empty = sorted(index.shard_sizes)
    routed = (
        q.withColumn("probe", _probe_udf(index.centroids_bc, index.d, nprobe, fail_stage)("emb"))
        .withColumn(
            "shard",
            F.explode(F.array_distinct(F.transform("probe", lambda l: F.pmod(l, F.lit(n_shards))))),
        )
        .filter(F.col("shard").isin(non_empty))
    )
    hits = (
        routed.groupBy("shard")
        .cogroup(index.shards.groupBy("shard"))
        .applyInPandas(_search_fn(index.d, k), PAIR_SCHEMA)
    )
    w = Window.partitionBy("src").orderBy(F.col("score").desc(), F.col("dst").asc())
    out = hits.withColumn("_rank", F.row_number().over(w)).filter(F.col("_rank") <= k).drop("_rank")
    log.info(
        "index search (planned, lazy): k=%d nprobe=%d lists=%d shards=%d non_empty_shards=%d exact=%s seconds=%.2f",
        k,
        nprobe,
        index.nlist,
        n_shards,
        len(non_empty),
        nprobe >= index.nlist,
        time.perf_counter() - t0,
    )
    return out
