"""Find duplicate listings for one run date and write the matches/clusters/rejects/runs tables.

    python jobs/dedup_listings.py --conf conf/local.yaml --input PATH --run-date YYYY-MM-DD \
        --warehouse DIR [--set key=value ...]

Runs with plain ``python`` (local Spark from the conf profile) or under ``spark-submit``
(same arguments). Exit codes: 0 ok, 2 bad arguments/config/input, 1 runtime failure.
"""

from __future__ import annotations

import argparse
import sys

from listing_dedup.config import load_config
from listing_dedup.pipeline import check_run_date, run_dedup
from listing_dedup.runtime import build_spark, configure_logging, run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dedup_listings.py", description=__doc__.splitlines()[0])
    p.add_argument(
        "--conf",
        action="append",
        required=True,
        metavar="YAML",
        help="conf profile; repeatable, later files override earlier ones",
    )
    p.add_argument("--input", required=True, help="listing Parquet file or folder")
    p.add_argument("--run-date", required=True, help="YYYY-MM-DD: the partition written in every table")
    p.add_argument("--warehouse", required=True, help="folder (or URI) holding the Delta tables")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override one conf key, e.g. --set match.threshold=0.8; repeatable",
    )
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)

    def _run() -> int:
        cfg = load_config(args.conf, args.overrides)
        run_date = check_run_date(args.run_date)
        spark = build_spark(cfg.spark)
        summary = run_dedup(spark=spark, cfg=cfg, input_path=args.input, run_date=run_date, warehouse=args.warehouse)
        print(summary.as_text(), flush=True)
        return 0

    return run_cli(_run)


if __name__ == "__main__":
    sys.exit(main())
