"""The components stage's two paths side by side: the driver path (components_on_driver, what the
job takes for graphs of at most components.driver_max_vertices / driver_max_edges) and the
distributed large/small-star rounds (connected_components), on the same generated graph, in
one local Spark session.

    python bench/components.py [--sizes 10000,100000] [--degree 3] [--partitions 4]

The graph is shaped like the job's: groups of 1-8 listings (mostly small), each group a random
tree plus extra edges inside it (``--degree`` edges a listing on average, both directions
stored, as the edges stage stores them). Both results must be equal (checked). Prints seconds
per path and size, and one final machine-readable line:
``components sizes=... driver_s=... spark_s=... spark_over_driver=...``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from listing_dedup.graph.components import components_on_driver, connected_components  # noqa: E402


def graph(n: int, degree: float, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """Ids ``p0000000...``, and edges (both directions) inside groups of 1-8 listings."""
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.choice([1, 1, 1, 2, 2, 3, 4, 8])))
    sizes[-1] -= sum(sizes) - n
    ids = [f"p{i:08d}" for i in rng.permutation(n)]
    src, dst, start = [], [], 0
    for size in sizes:
        members = ids[start : start + size]
        start += size
        if size < 2:
            continue
        pairs = [(members[i], members[int(rng.integers(0, i))]) for i in range(1, size)]  # a tree
        extra = max(0, int(round(degree * size / 2)) - len(pairs))
        pairs += [tuple(rng.choice(members, 2, replace=False)) for _ in range(extra)]
        for a, b in pairs:
            src += [a, b]
            dst += [b, a]
    return ids, src, dst


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--degree", type=float, default=3.0)
    p.add_argument("--partitions", type=int, default=4)
    args = p.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.sql.shuffle.partitions", str(args.partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "4g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    driver_s, spark_s = [], []
    for n in sizes:
        ids, src, dst = graph(n, args.degree)
        verts = spark.createDataFrame([(v,) for v in ids], "posting_id string").repartition(args.partitions).cache()
        edges = spark.createDataFrame(list(zip(src, dst)), "src string, dst string").repartition(args.partitions)
        edges = edges.cache()
        verts.count(), edges.count()
        got = {}
        for name, fn in (("driver", components_on_driver), ("spark", connected_components)):
            t = time.perf_counter()
            rows = fn(verts, edges).collect()
            secs = time.perf_counter() - t
            got[name] = {r.posting_id: (r.group_id, r.group_size) for r in rows}
            (driver_s if name == "driver" else spark_s).append(secs)
            print(f"n={n} edges={len(src)} {name:<6} {secs:7.1f} s", flush=True)
        if got["driver"] != got["spark"]:
            print(f"n={n}: the two paths disagree", file=sys.stderr)
            return 1
        verts.unpersist()
        edges.unpersist()
    spark.stop()
    ratio = [s / d for s, d in zip(spark_s, driver_s)]
    print(
        f"components sizes={','.join(map(str, sizes))} driver_s={','.join(f'{x:.1f}' for x in driver_s)} "
        f"spark_s={','.join(f'{x:.1f}' for x in spark_s)} spark_over_driver={','.join(f'{x:.1f}' for x in ratio)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
