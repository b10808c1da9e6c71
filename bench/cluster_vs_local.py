"""The job on a loopback standalone cluster vs local mode, side by side on the same sample.

    python bench/cluster_vs_local.py [--products 100] [--profile lexical|local] [--workers 2 --cores 1]
                                     [--rounds 1] [--out build/cluster_vs_local]

Generates the sample (lib/listing_dedup/quality/sample.py), starts a cluster with
bin/spark_cluster.py (free ports; stopped by pid at the end), then per round runs the job in local
mode (``python jobs/dedup_listings.py``, the profile's ``local[2]``) and on the cluster
(``spark-submit --master spark://... --deploy-mode client --py-files <zip>``, executors of
``--cores`` cores and 2g each), alternating so both see the same machine load. Prints one line
per run (wall seconds of the process, the job's own total from the runs row, the stages) and
whether the two runs gave the same clusters and matches. ``--profile lexical`` is the DAG test's
profile (tests/test_dag_run.py: lexical signal only); ``local`` is conf/local.yaml (text model).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bin"))

import spark_cluster  # noqa: E402
from listing_dedup.quality.sample import generate_catalog  # noqa: E402
from listing_dedup.sink.delta import read_table  # noqa: E402

DATE = "2026-01-01"
QUICK_JVM = "-XX:TieredStopAtLevel=1"


# the DAG test's profile (tests/test_dag_run.py PROFILE): lexical signal only, exact search, no INB
LEXICAL = """\
spark:
  conf:
    spark.sql.shuffle.partitions: 2
    spark.default.parallelism: 2
    spark.ui.showConsoleProgress: false
    spark.python.worker.reuse: true
input: {partitions: 2}
embed:
  text: {enabled: false}
index: {n_shards: 2}
inb: {thresholds: []}
output: {candidates: false}
"""


def package(dist: Path) -> Path:
    dist.mkdir(parents=True, exist_ok=True)
    z = dist / "listing_dedup_jobs.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
        for root in (REPO / "lib" / "listing_dedup", REPO / "jobs"):
            for p in sorted(root.rglob("*.py")):
                f.write(p, p.relative_to(root.parent))
    return z


def result(wh: str) -> tuple[dict, dict, dict]:
    runs = read_table(wh, "runs", DATE)
    row = runs.iloc[-1]
    clusters = read_table(wh, "clusters", DATE).set_index("posting_id")["group_id"].to_dict()
    m = read_table(wh, "matches", DATE)
    matches = {p: sorted(ids) for p, ids in zip(m["posting_id"], m["match_ids"])}
    return json.loads(row["stage_seconds"]), clusters, matches


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--products", type=int, default=100)
    p.add_argument("--profile", choices=("lexical", "local"), default="lexical")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cores", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default="build/cluster_vs_local")
    args = p.parse_args()
    out = Path(args.out).resolve()
    if out.exists():
        import shutil

        shutil.rmtree(out)
    (out / f"listings/run_date={DATE}").mkdir(parents=True)
    s = generate_catalog(args.products, seed=7)
    s.listings.to_parquet(out / f"listings/run_date={DATE}/listings.parquet", index=False)
    if args.profile == "lexical":
        (out / "profile.yaml").write_text(LEXICAL)
        profile = str(out / "profile.yaml")
    else:
        profile = str(REPO / "conf" / "local.yaml")
    zipped = package(out / "dist")
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable, HF_HUB_OFFLINE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    job = ["--conf", profile, "--input", str(out / f"listings/run_date={DATE}"), "--run-date", DATE]
    print(
        f"sample {len(s.listings)} listings ({args.products} products), profile {args.profile}; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    cluster = spark_cluster.start(out / "cluster", workers=args.workers, cores=args.cores, memory="3g")
    results = {}
    try:
        for r in range(args.rounds):
            for mode in ("local", "cluster"):
                wh = str(out / f"wh-{mode}-{r}")
                if mode == "local":
                    cmd = [
                        sys.executable,
                        str(REPO / "jobs/dedup_listings.py"),
                        *job,
                        "--warehouse",
                        wh,
                        "--set",
                        f"spark.conf.spark.driver.extraJavaOptions={QUICK_JVM}",
                    ]
                else:
                    cmd = [
                        "spark-submit",
                        "--master",
                        cluster.master_url,
                        "--deploy-mode",
                        "client",
                        "--conf",
                        f"spark.pyspark.python={sys.executable}",
                        "--conf",
                        f"spark.executor.cores={args.cores}",
                        "--conf",
                        "spark.executor.memory=2g",
                        "--conf",
                        f"spark.cores.max={args.workers * args.cores}",
                        "--conf",
                        f"spark.driver.extraJavaOptions={QUICK_JVM}",
                        "--conf",
                        f"spark.executor.extraJavaOptions={QUICK_JVM}",
                        "--py-files",
                        str(zipped),
                        str(REPO / "jobs/dedup_listings.py"),
                        *job,
                        "--warehouse",
                        wh,
                    ]
                load = os.getloadavg()[0]
                t0 = time.monotonic()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out)
                wall = time.monotonic() - t0
                if proc.returncode != 0:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    return 1
                stages, clusters, matches = result(wh)
                results.setdefault(mode, []).append((clusters, matches))
                total = sum(stages.values())
                print(
                    f"round {r + 1} {mode:7s} wall {wall:6.1f} s  job {total:6.1f} s  load {load:5.2f}  "
                    + " ".join(f"{k} {v:.1f}" for k, v in stages.items()),
                    flush=True,
                )
    finally:
        spark_cluster.stop(cluster.state_dir)
    same_c = all(c == results["local"][0][0] for c, _ in results["local"] + results["cluster"])
    same_m = all(m == results["local"][0][1] for _, m in results["local"] + results["cluster"])
    print(f"same clusters: {same_c}; same matches: {same_m}; cluster: {args.workers} worker(s) x {args.cores} core(s)")
    return 0 if same_c and same_m else 1


if __name__ == "__main__":
    sys.exit(main())
