"""What the test session's Spark settings buy on the small job runs the tests make: the job on a
generated catalog (100 products: 335 listings, bad rows included; lexical signal only, the
reliability tests' shape), run again and again in one local[2] session, alternating Spark's
defaults and the tests' settings (tests/conftest.py ``QUICK_SQL`` plus 2 shuffle partitions), so
both see the same warm JVM and the same machine load. The defaults' later runs reuse the classes
Spark generated for the same queries in their first run; the suite's tests, each a different
query on different data, reuse far less, so the suite gains more than this ratio.

    python bench/small_runs.py [--rounds 3] [--products 100]

All the settings compared are runtime SQL settings, so one session serves both. Each run writes
its own date into one warehouse. Prints the wall seconds and the driver JVM's CPU seconds of every
run (the JVM runs the local executors too; from /proc), the first round apart (it warms the JVM
and the Python workers for both), and one final machine-readable line:
``small_runs rounds=... default_s=... quick_s=... default_over_quick=... jvm_cpu_default_s=... jvm_cpu_quick_s=...``
(medians of the rounds after the first).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from listing_dedup.config import load_config  # noqa: E402
from listing_dedup.pipeline import run_dedup  # noqa: E402
from listing_dedup.quality.sample import generate_catalog  # noqa: E402
from listing_dedup.runtime import build_spark  # noqa: E402

DEFAULTS = {
    "spark.sql.codegen.wholeStage": "true",
    "spark.sql.codegen.factoryMode": "FALLBACK",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.shuffle.partitions": "4",
}
# tests/conftest.py QUICK_SQL and the session's shuffle partitions
QUICK = {
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.shuffle.partitions": "2",
}


def jvm_cpu_seconds() -> float:
    """CPU seconds (user + system) of the java processes that are children of this one."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if cmd.endswith(b"java") and int(stat[1]) == os.getpid():
            total += (int(stat[11]) + int(stat[12])) / tick
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of (defaults, quick); the first warms up")
    ap.add_argument("--products", type=int, default=100)
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error("--rounds must be >= 2 (the first round only warms up)")

    # the job's own session (conf/local.yaml's, built as the job builds it), with the tests'
    # JIT tier and 2 default partitions: the same session for both settings
    sets = ["embed.text.enabled=false", "input.partitions=2", "spark.conf.spark.default.parallelism=2"]
    sets.append("spark.conf.spark.driver.extraJavaOptions=-XX:TieredStopAtLevel=1")
    cfg = load_config([str(REPO / "conf/local.yaml")], sets)
    spark = build_spark(cfg.spark)
    spark.sparkContext.setLogLevel("ERROR")
    tmp = Path(tempfile.mkdtemp(prefix="small-runs-"))
    sample = generate_catalog(args.products, seed=3)
    path = str(tmp / "listings.parquet")
    sample.listings.to_parquet(path, index=False)
    print(f"{len(sample.listings)} listings, lexical signal only, local[2], warehouse {tmp / 'wh'}", flush=True)

    wall: dict[str, list[float]] = {"default": [], "quick": []}
    cpu: dict[str, list[float]] = {"default": [], "quick": []}
    day = 0
    for r in range(args.rounds):
        for name, settings in (("default", DEFAULTS), ("quick", QUICK)):
            for k, v in settings.items():
                spark.conf.set(k, v)
            day += 1
            c0, t0 = jvm_cpu_seconds(), time.monotonic()
            run_dedup(spark=spark, cfg=cfg, input_path=path, run_date=f"2026-01-{day:02d}", warehouse=str(tmp / "wh"))
            seconds, jvm = time.monotonic() - t0, jvm_cpu_seconds() - c0
            print(f"round {r + 1} {name:7s}: {seconds:6.1f} s, driver JVM {jvm:6.1f} CPU-s", flush=True)
            if r > 0:
                wall[name].append(seconds)
                cpu[name].append(jvm)
    spark.stop()
    d, q = statistics.median(wall["default"]), statistics.median(wall["quick"])
    cd, cq = statistics.median(cpu["default"]), statistics.median(cpu["quick"])
    print(
        f"small_runs rounds={args.rounds} default_s={d:.1f} quick_s={q:.1f} default_over_quick={d / q:.2f} "
        f"jvm_cpu_default_s={cd:.1f} jvm_cpu_quick_s={cq:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
