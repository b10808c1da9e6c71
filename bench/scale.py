"""The whole job on generated catalogs of growing size: seconds per stage and peak memory.

    python bench/scale.py [--sizes 100000,300000,1000000] [--text] [--set key=value ...]
        [--work DIR] [--png docs/scale_growth.png]

Each catalog comes from the sample generator (lib/listing_dedup/quality/sample.py, the one
``make run`` uses, grown past 3,000 products by blocks of made-up brands and product kinds,
``--growth categories``, or by more product lines of the same brands and kinds, ``--growth lines``,
the rule before stop 27 whose look-alikes grow in proportion to the catalog; 1-5 listings a
product, a perceptual hash each). The job runs as ``jobs/dedup_listings.py --conf conf/local.yaml`` in a
child process (lexical + pHash signals; ``--text`` adds the text encoder) while this script
samples, every 0.5 s, the resident memory of the process tree: the Python driver, the driver's
JVM and each Python worker. Seconds per stage come from the job's ``runs`` row; F1 against the
generated truth is printed too (a sanity check: the generator's realism, not a quality claim).

Per size one line, then a table and (with ``--png``) the growth curve; final line:
``scale n=<largest> seconds=<s> time_ratio=<largest/smallest> worker_rss_ratio=<largest/smallest>
driver_rss_gib=<peak>``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def _rss(pid: int) -> int:
    try:
        return int((Path("/proc") / str(pid) / "statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _cmd(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class TreeSampler(threading.Thread):
    """Peak RSS of a process tree, by role: python driver, JVM, Python workers (each, and all)."""

    def __init__(self, root: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.root, self.every = root, every
        self.peak = {"driver_python": 0, "jvm": 0, "driver_total": 0, "worker_max": 0, "workers_sum": 0}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            kids = _children()
            tree, todo = [], [self.root]
            while todo:
                p = todo.pop()
                tree.append(p)
                todo.extend(kids.get(p, []))
            driver = _rss(self.root)
            jvm = sum(_rss(p) for p in tree if "java" in _cmd(p).split(" ", 1)[0])
            # Python workers: "python -m pyspark.daemon" and its forks (the JVM's command line names
            # pyspark too, in its class path and settings: it is not one)
            py = [p for p in tree if "java" not in _cmd(p).split(" ", 1)[0]]
            workers = [_rss(p) for p in py if "pyspark.daemon" in _cmd(p) or "pyspark.worker" in _cmd(p)]
            now = {
                "driver_python": driver,
                "jvm": jvm,
                "driver_total": driver + jvm,
                "worker_max": max(workers, default=0),
                "workers_sum": sum(workers),
            }
            for k, v in now.items():
                self.peak[k] = max(self.peak[k], v)
            self.done.wait(self.every)


# The index and task sizes of conf/cluster.yaml's rule on this 2-core machine: lists of about 256
# rows (nlist follows the catalog, so a query's scan and its recall stay the same as it grows),
# shards of at most 25k rows (a build task holds one), a 160k-row quantizer sample, 24 lists probed
# (bench/join.py at 1M: recall@10 0.98). Tasks are sized by rows, not by the catalog: input
# partitions of <= 25k listings and shuffle partitions of <= 12.5k rows. The components stage takes
# the distributed large/small-star rounds at every size (the job's default labels graphs of up to
# 500k listings on the driver: components.driver_max_vertices), so that the sizes compare like
# with like and the path a 10M catalog takes is the one measured.
SCALE_SETS = [
    "components.driver_max_vertices=0",
    "index.list_rows=256",
    "index.nprobe=24",
    "index.train_sample=160000",
    "index.train_bytes=1073741824",
    "index.kmeans_iters=10",
    "index.shard_rows=25000",
    "index.query_chunk_rows=50000",
    "index.shard_by=proximity",
    "spark.conf.spark.driver.memory=10g",
]


def sized_sets(n: int) -> list[str]:
    return [
        *SCALE_SETS,
        f"input.partitions={max(4, -(-n // 25_000))}",
        f"spark.conf.spark.sql.shuffle.partitions={max(8, -(-n // 12_500))}",
    ]


def run_size(n: int, work: Path, text: bool, sets: list[str], growth: str = "categories") -> dict:
    from listing_dedup.quality.evaluate import evaluate_run
    from listing_dedup.quality.sample import generate_catalog
    from listing_dedup.sink.delta import read_table

    folder = work / f"n{n}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "listings.parquet"
    t0 = time.perf_counter()
    sample = generate_catalog(max(1, n // 3), seed=11, with_bad_rows=False, growth=growth)
    sample.listings.to_parquet(path, index=False)
    gen_s = time.perf_counter() - t0
    wh = folder / "wh"
    date = "2026-01-01"
    args = [sys.executable, str(REPO / "jobs" / "dedup_listings.py"), "--conf", str(REPO / "conf" / "local.yaml"),
            "--input", str(path), "--run-date", date, "--warehouse", str(wh),
            "--set", "input.max_shrink=1.0", "--set", "output.candidates=false"]  # fmt: skip
    if not text:
        args += ["--set", "embed.text.enabled=false"]
    for s in [*sized_sets(n), *sets]:
        args += ["--set", s]
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"error: the job failed at n={n} (exit {proc.returncode}):\n{err[-3000:]}")
    runs = read_table(str(wh), "runs", date)
    row = runs.sort_values("started_at").iloc[-1]
    stages = json.loads(row["stage_seconds"])
    score = evaluate_run(str(wh), date, sample.truth)
    gib = {k: v / 2**30 for k, v in sampler.peak.items()}
    return {
        "n": int(row["rows_in"]),
        "generate_s": gen_s,
        "wall_s": wall,
        "stages": stages,
        "rss_gib": gib,
        "f1": (score["matches"]["f1"], score["clusters"]["f1"]),
        "groups": int(row["n_groups"]),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000,300000,1000000", help="listings per catalog, comma-separated")
    p.add_argument("--text", action="store_true", help="also run the text encoder (MiniLM)")
    p.add_argument(
        "--growth",
        default="categories",
        choices=["categories", "lines"],
        help="how the generator grows past 3,000 products (quality/sample.py; 'lines' = before stop 27)",
    )
    p.add_argument("--set", action="append", default=[], dest="sets", help="more --set for the job (after SCALE_SETS)")
    p.add_argument("--work", default=None, help="folder for the catalogs and warehouses (default: a temp dir)")
    p.add_argument("--png", default=None, help="write the growth curve here")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-scale-"))
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results = []
    print("job settings (after conf/local.yaml):", " ".join(sized_sets(sizes[-1]) + args.sets), flush=True)
    for n in sizes:
        r = run_size(n, work, args.text, args.sets, args.growth)
        results.append(r)
        st = ", ".join(f"{k} {v:.1f}" for k, v in r["stages"].items())
        f1s = f" matches F1 {r['f1'][0]:.3f}, clusters F1 {r['f1'][1]:.3f}"
        print(
            f"n={r['n']}: wall {r['wall_s']:.1f}s (stages: {st}); peak RSS GiB: driver python "
            f"{r['rss_gib']['driver_python']:.2f}, JVM {r['rss_gib']['jvm']:.2f}, one worker "
            f"{r['rss_gib']['worker_max']:.2f}, all workers {r['rss_gib']['workers_sum']:.2f};{f1s}",
            flush=True,
        )
    head = " | ".join(results[0]["stages"])
    print(f"\n| listings | wall s | {head} | driver GiB (py + JVM) | worker GiB (max) |")
    print("|---" * (4 + len(results[0]["stages"])) + "|")
    for r in results:
        cells = " | ".join(f"{r['stages'].get(k, 0.0):.1f}" for k in results[0]["stages"])
        print(f"| {r['n']:,} | {r['wall_s']:.1f} | {cells} | {r['rss_gib']['driver_total']:.2f} | "
              f"{r['rss_gib']['worker_max']:.2f} |")  # fmt: skip
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        ns = [r["n"] for r in results]
        ax[0].loglog(ns, [r["wall_s"] for r in results], "o-", label="job wall")
        for k in results[0]["stages"]:
            ax[0].loglog(ns, [max(r["stages"].get(k, 0.0), 1e-2) for r in results], ".--", label=k)
        ax[0].loglog(ns, [results[0]["wall_s"] * n / ns[0] for n in ns], ":", color="grey", label="linear")
        ax[0].set_xlabel("listings")
        ax[0].set_ylabel("seconds")
        ax[0].legend(fontsize=7)
        ax[1].semilogx(ns, [r["rss_gib"]["worker_max"] for r in results], "o-", label="one Python worker")
        ax[1].semilogx(ns, [r["rss_gib"]["driver_total"] for r in results], "s-", label="driver (Python + JVM)")
        ax[1].set_xlabel("listings")
        ax[1].set_ylabel("peak RSS, GiB")
        ax[1].legend(fontsize=7)
        fig.suptitle("bench/scale.py: the whole job on 2 cores (lexical + pHash)")
        fig.tight_layout()
        fig.savefig(args.png, dpi=90)
        print(f"wrote {args.png}")
    first, last = results[0], results[-1]
    print(
        f"scale n={last['n']} seconds={last['wall_s']:.1f} time_ratio={last['wall_s'] / first['wall_s']:.2f} "
        f"worker_rss_ratio={last['rss_gib']['worker_max'] / max(first['rss_gib']['worker_max'], 1e-9):.2f} "
        f"driver_rss_gib={max(r['rss_gib']['driver_total'] for r in results):.2f} sizes={','.join(map(str, sizes))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
