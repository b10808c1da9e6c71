"""The search stage against its peers on synthetic clustered vectors, in one run.

    python bench/join.py --n 1000000 --dim 384 [--peers] [--nprobe 32] [--storage flat|sq8]
        [--scan blas|faiss] [--train-sample 100000]

Data: unit vectors over a background with low-rank structure (a few hundred directions) plus
groups of 2-5 near-duplicates (cos ~0.9 to their group's seed). Written to Parquet in chunks
and read by Spark, as the job reads its embeddings.

Measured side by side:
- the project's index + search stage (lib/listing_dedup/search/indexer.py) on local Spark,
- the same FAISS index (same quantizer, nprobe, storage) in one plain process,
- with ``--scan blas`` (flat storage), the project's BLAS list scan (``scan_lists``) in one
  plain process: the same kernel without Spark, the floor here (``overhead_vs_bare``);
- exact ``IndexFlatIP``: the recall truth (all queries up to 100k rows, else a random sample of
  ``--truth-queries`` >= 10,000 queries searched exactly against all N vectors),
- with ``--peers``: Spark MLlib ``BucketedRandomProjectionLSH.approxSimilarityJoin`` at the
  same cosine threshold (cos >= 0.5 <=> euclidean <= 1 on unit vectors), at ``--lsh-n`` rows
  (it does not finish at 100k in 13 minutes here); the project is timed again at that size.

recall10: among each query's true top-10 neighbours with cos >= 0.5, the share the method's
top 10 holds. Final line:
``join n=<N> seconds=<s> recall10=<r> speedup_vs_lsh=<x> lsh_n=<n> overhead_vs_bare=<y> vs_bare_faiss=<z>``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

THRESHOLD = 0.5
K = 10


def generate(n: int, dim: int, seed: int, chunk: int = 100_000):
    """Yield (ids, vectors) chunks; about 40 % of rows sit in near-duplicate groups of 2-5."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((256, dim)).astype(np.float32)  # low-rank background structure
    done = 0
    while done < n:
        m = min(chunk, n - done)
        coef = rng.standard_normal((m, basis.shape[0])).astype(np.float32) * (
            1.0 / (1 + np.arange(basis.shape[0], dtype=np.float32))
        )
        x = coef @ basis + 0.6 * rng.standard_normal((m, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        # near-duplicate groups: the row after a seed row copies it with noise (cos ~0.9)
        i = 0
        while i < m:
            size = int(rng.integers(2, 6)) if rng.random() < 0.15 else 1
            for j in range(1, min(size, m - i)):
                # noise of norm 0.484: cos = 1 / sqrt(1 + 0.484^2) = 0.9 before normalising
                y = x[i] + 0.484 * rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim)
                x[i + j] = y / np.linalg.norm(y)
            i += size
        ids = np.array([f"v{done + r:08d}" for r in range(m)], dtype=object)
        yield ids, x
        done += m


def write_parquet(path: Path, n: int, dim: int, seed: int) -> np.ndarray:
    """Write the vectors to Parquet (list<float>) and return them as one float32 matrix."""
    whole = np.empty((n, dim), dtype=np.float32)
    writer = None
    pos = 0
    for ids, x in generate(n, dim, seed):
        flat = pa.array(x.reshape(-1), pa.float32())
        emb = pa.ListArray.from_arrays(pa.array(np.arange(0, len(x) * dim + 1, dim, dtype=np.int32)), flat)
        table = pa.table({"posting_id": pa.array(ids, pa.string()), "emb": emb})
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
        whole[pos : pos + len(x)] = x
        pos += len(x)
    writer.close()
    return whole


def truth(x: np.ndarray, queries: np.ndarray) -> list[set[int]]:
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    d, i = index.search(x[queries], K + 1)
    out = []
    for q, (dr, ir) in enumerate(zip(d, i)):
        out.append({int(j) for s, j in zip(dr, ir) if j != queries[q] and s >= THRESHOLD} - {-1})
    return out


def recall(found: dict[int, set[int]], queries: np.ndarray, true: list[set[int]]) -> float:
    hit = tot = 0
    for q, t in zip(queries, true):
        tot += len(t)
        hit += len(t & found.get(int(q), set()))
    return hit / tot if tot else 1.0


def bare(x: np.ndarray, centroids: np.ndarray, nprobe: int, storage: str, queries: np.ndarray, searched: int = 0):
    """The same IVF index in one process: (seconds, {query row: top-10 rows}). ``searched``
    (> 0): only the recall queries plus the first rows up to that many queries are searched and
    the search time is scaled to all rows (FAISS's search is per query: linear in queries)."""
    import faiss

    t0 = time.perf_counter()
    d = x.shape[1]
    q = faiss.IndexFlatIP(d)
    q.add(centroids)
    if storage == "sq8":
        index = faiss.IndexIVFScalarQuantizer(q, d, len(centroids), faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)  # fmt: skip
        index.by_residual = False
        index.train(x[: min(len(x), 100_000)])
    else:
        index = faiss.IndexIVFFlat(q, d, len(centroids), faiss.METRIC_INNER_PRODUCT)
    index.add(x)
    index.nprobe = nprobe
    kk = (K + 1) * (2 if storage == "sq8" else 1)
    found: dict[int, set[int]] = {}
    want = set(queries.tolist())
    t_built = time.perf_counter()
    rows_all = np.arange(len(x))
    if 0 < searched < len(x):
        rows_all = np.union1d(queries, np.arange(searched - min(searched, len(queries))))
    for s in range(0, len(rows_all), 50_000):
        sel = rows_all[s : s + 50_000]
        dist, idx = index.search(x[sel], kk)
        if storage == "sq8":  # exact re-score, as the project does
            safe = np.where(idx >= 0, idx, 0)
            dist = np.einsum("qd,qkd->qk", x[sel], x[safe])
            dist = np.where(idx >= 0, dist, -np.inf)
            order = np.argsort(-dist, axis=1)
            dist, idx = np.take_along_axis(dist, order, 1), np.take_along_axis(idx, order, 1)
        for r in range(len(idx)):
            row = int(sel[r])
            if row in want:
                best = [(int(j), v) for j, v in zip(idx[r], dist[r]) if j >= 0 and j != row][:K]
                found[row] = {j for j, v in best if v >= THRESHOLD}
    search_s = (time.perf_counter() - t_built) * len(x) / len(rows_all)
    return t_built - t0 + search_s, found


def bare_blas(x: np.ndarray, centroids: np.ndarray, nprobe: int, queries: np.ndarray):
    """The project's BLAS list scan (``index.scan: blas``) in one process on every core:
    (seconds, {query row: rows found})."""
    from listing_dedup.search.indexer import assign_lists, list_layout, probe_lists, scan_lists

    t0 = time.perf_counter()
    order, offsets = list_layout(assign_lists(x, centroids), len(centroids))
    v = x[order]
    found: dict[int, set[int]] = {}
    want = set(queries.tolist())
    for s in range(0, len(x), 50_000):
        q = x[s : s + 50_000]
        dist, idx = scan_lists(q, probe_lists(q, centroids, nprobe), v, offsets, K + 1)
        rows = np.where(idx >= 0, order[np.maximum(idx, 0)], -1)
        for r in range(len(rows)):
            if s + r in want:
                best = [(int(j), d) for j, d in zip(rows[r], dist[r]) if j >= 0 and j != s + r][:K]
                found[s + r] = {j for j, d in best if d >= THRESHOLD}
    return time.perf_counter() - t0, found


def project(spark, path: Path, n: int, nprobe: int, storage: str, queries: np.ndarray, n_shards: int,
            train_sample: int = 100_000, scan: str = "blas", kmeans_iters: int = 20):  # fmt: skip
    """The job's index + search stage: (seconds, centroids, {query row: rows found})."""
    from listing_dedup.config import IndexConf
    from listing_dedup.search.indexer import build_index, search
    from pyspark.sql import functions as F

    cfg = IndexConf(n_shards=n_shards, nprobe=nprobe, k=K, storage=storage, shard_by="proximity", scan=scan,
                    kmeans_iters=kmeans_iters,
                    train_sample=train_sample, train_bytes=max(256 * 2**20, train_sample * 4 * 1536))  # fmt: skip
    t0 = time.perf_counter()
    df = spark.read.parquet(str(path)).repartition(max(4, n // 100_000 * 2))
    handle = build_index(df, cfg, n_rows=n)
    nbrs = search(handle, df, K).where(F.col("score") >= THRESHOLD)
    out = nbrs.write.mode("overwrite").parquet(str(path) + ".nbrs")
    del out
    seconds = time.perf_counter() - t0
    centroids = handle.centroids
    if len(queries):  # how many shards a query's probed lists fall in (the query shuffle's multiplier)
        from listing_dedup.search.indexer import probe_lists

        x_q = pq.read_table(str(path)).slice(0, min(n, 20_000)).column("emb").to_numpy(zero_copy_only=False)
        probes = probe_lists(np.stack(x_q).astype(np.float32), centroids, min(nprobe, len(centroids)))
        per_query = np.mean([len(set(handle.list_shard[p].tolist())) for p in probes])
        print(f"shards a query visits: {per_query:.2f} of {handle.n_shards} ({handle.nlist} lists, proximity)")
    handle.unpersist()
    got = pq.read_table(str(path) + ".nbrs").to_pandas()
    got["s"] = got["src"].str[1:].astype(np.int64)
    got["d"] = got["dst"].str[1:].astype(np.int64)
    want = set(queries.tolist())
    got = got[got["s"].isin(want)]
    found = {int(s): set(g["d"].tolist()) for s, g in got.groupby("s")}
    return seconds, centroids, found


def lsh(spark, path: Path, n: int) -> float:
    from pyspark.ml.feature import BucketedRandomProjectionLSH
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    df = spark.read.parquet(str(path)).limit(n).select("posting_id", array_to_vector("emb").alias("v"))
    model = BucketedRandomProjectionLSH(inputCol="v", outputCol="h", bucketLength=1.0, numHashTables=3, seed=1).fit(df)
    pairs = model.approxSimilarityJoin(df, df, 1.0, distCol="dist").where(
        F.col("datasetA.posting_id") != F.col("datasetB.posting_id")
    )
    pairs.write.mode("overwrite").format("noop").save()
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--storage", default="flat", choices=["flat", "sq8"])
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--train-sample", type=int, default=100_000, help="the quantizer's training sample (rows)")
    p.add_argument("--scan", default="blas", choices=["blas", "faiss"], help="index.scan (flat storage)")
    p.add_argument("--kmeans-iters", type=int, default=20, help="index.kmeans_iters")
    p.add_argument("--bare-faiss-queries", type=int, default=0,
                   help="time the bare FAISS peer on this many queries and scale to n (0: all)")  # fmt: skip
    p.add_argument("--peers", action="store_true", help="also run Spark MLlib LSH at --lsh-n rows")
    p.add_argument("--lsh-n", type=int, default=5000)
    p.add_argument("--truth-queries", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--work", default=None, help="folder for the Parquet data (default: a temp dir)")
    args = p.parse_args()

    import logging

    from pyspark.sql import SparkSession

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("listing_dedup").setLevel(logging.INFO)  # train / build / search seconds
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-join-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"vectors-{args.n}-{args.dim}.parquet"
    t0 = time.perf_counter()
    x = write_parquet(path, args.n, args.dim, args.seed)
    print(f"data: {args.n} x {args.dim} written in {time.perf_counter() - t0:.1f}s", flush=True)
    rng = np.random.default_rng(1)
    queries = np.arange(args.n) if args.n <= 100_000 else np.sort(rng.choice(args.n, args.truth_queries, replace=False))
    t0 = time.perf_counter()
    true = truth(x, queries)
    print(f"exact IndexFlatIP truth for {len(queries)} queries: {time.perf_counter() - t0:.1f}s", flush=True)

    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.driver.memory", "6g")
        .config("spark.sql.shuffle.partitions", "16")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    sec, centroids, found = project(spark, path, args.n, args.nprobe, args.storage, queries, args.shards,
                                    args.train_sample, args.scan, args.kmeans_iters)  # fmt: skip
    r = recall(found, queries, true)
    print(f"project: {sec:.1f}s recall10={r:.4f} (nprobe {args.nprobe}, {len(centroids)} lists, {args.storage})",
          flush=True)  # fmt: skip
    bare_s, bare_found = bare(x, centroids, args.nprobe, args.storage, queries, args.bare_faiss_queries)
    scaled = f" (search timed on {args.bare_faiss_queries} queries, scaled to n)" if args.bare_faiss_queries else ""
    print(f"bare FAISS, one process: {bare_s:.1f}s{scaled} recall10={recall(bare_found, queries, true):.4f}",
          flush=True)  # fmt: skip
    faiss_s = bare_s
    if args.storage == "flat" and args.scan == "blas":  # the same kernel in one process: the floor
        bare_s, blas_found = bare_blas(x, centroids, args.nprobe, queries)
        print(f"bare BLAS list scan, one process: {bare_s:.1f}s recall10={recall(blas_found, queries, true):.4f}",
              flush=True)  # fmt: skip
    speedup, lsh_n = float("nan"), 0
    if args.peers:
        lsh_n = min(args.lsh_n, args.n)
        small = work / f"vectors-{lsh_n}-{args.dim}.parquet"
        xs = write_parquet(small, lsh_n, args.dim, args.seed)
        del xs
        lsh_s = lsh(spark, small, lsh_n)
        proj_small, _, _ = project(spark, small, lsh_n, args.nprobe, args.storage, np.arange(0), args.shards,
                                   args.train_sample, args.scan, args.kmeans_iters)  # fmt: skip
        speedup = lsh_s / proj_small
        print(f"Spark MLlib LSH at n={lsh_n}: {lsh_s:.1f}s; project at the same n: {proj_small:.1f}s", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"driver peak RSS {rss:.2f} GiB (holds the data for the truth and the bare peer)", flush=True)
    spark.stop()
    print(
        f"join n={args.n} seconds={sec:.1f} recall10={r:.4f} speedup_vs_lsh={speedup:.1f} lsh_n={lsh_n} "
        f"overhead_vs_bare={sec / bare_s:.2f} vs_bare_faiss={sec / faiss_s:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
