"""Time every stage of the dedup job on one input and print the figures.

    python bench/bench_stages.py --input data/sample/listings.parquet [--conf conf/local.yaml]
        [--truth data/sample/truth.csv] [--set key=value ...] [--warehouse DIR]

Runs the real job (lib/listing_dedup/pipeline.run_dedup) in-process with the conf profile's
local Spark session, writing to a throw-away warehouse unless ``--warehouse`` is given, then
prints seconds per stage, throughput of the embed stage, and (with ``--truth``) the row-wise
F1 of the run. Figures go to docs/benchmarks.md by hand, with the command that made them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from listing_dedup.config import load_config  # noqa: E402
from listing_dedup.pipeline import run_dedup  # noqa: E402
from listing_dedup.quality.evaluate import evaluate_run, read_truth  # noqa: E402
from listing_dedup.runtime import build_spark, configure_logging  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True)
    p.add_argument("--conf", action="append", default=None)
    p.add_argument("--truth")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--warehouse")
    p.add_argument("--run-date", default="2026-01-01")
    args = p.parse_args()
    configure_logging("WARNING")
    cfg = load_config(args.conf or ["conf/local.yaml"], args.overrides)
    t0 = time.perf_counter()
    spark = build_spark(cfg.spark)
    startup = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        warehouse = args.warehouse or tmp
        t1 = time.perf_counter()
        s = run_dedup(spark=spark, cfg=cfg, input_path=args.input, run_date=args.run_date, warehouse=warehouse)
        wall = time.perf_counter() - t1
        scores = evaluate_run(warehouse, s.run_date, read_truth(args.truth)) if args.truth else None
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"input {args.input}: {s.rows_in} rows, {s.rows_kept} kept, {s.rows_embedded} embedded")
    print(f"spark start-up {startup:.1f} s; job wall {wall:.1f} s")
    print(f"{'stage':<14}{'seconds':>9}")
    for k, v in s.stage_seconds.items():
        print(f"{k:<14}{v:>9.1f}")
    emb = {k: v for k, v in s.stage_seconds.items() if k.startswith("embed")}
    if emb and s.rows_embedded:
        print(f"embed throughput: {s.rows_embedded / sum(emb.values()):.0f} listings/s")
    if scores:
        print("scores:", json.dumps(scores))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
