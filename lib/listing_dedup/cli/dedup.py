"""Find duplicate listings for one run date (or a range of dates) and write the
matches/clusters/rejects/runs tables.

    python jobs/dedup_listings.py --conf conf/local.yaml --input PATH --run-date YYYY-MM-DD \
        --warehouse DIR [--set key=value ...]
    python jobs/dedup_listings.py --conf conf/local.yaml --input ROOT --from-date D1 --to-date D2 \
        --warehouse DIR                      # backfill: ROOT/run_date=<date> (or a {run_date} template)
    python jobs/dedup_listings.py --verify-only --run-date YYYY-MM-DD --warehouse DIR [--conf ...]

Runs with plain ``python`` (local Spark from the conf profile) or under ``spark-submit``
(same arguments). Exit codes: 0 ok, 2 bad arguments/config/input, 1 runtime failure.

An input with 0 rows, or far fewer rows (in or kept) than the previous succeeded run's, or mostly
rejected, is refused (exit 2; see ``input.allow_empty``, ``input.max_shrink`` and
``input.max_rejected_share``); ``--allow-empty`` accepts it for this run.
"""

from __future__ import annotations

import argparse
import sys

from listing_dedup.backfill import date_range, run_backfill
from listing_dedup.config import load_config
from listing_dedup.dates import check_run_date
from listing_dedup.pipeline import run_dedup
from listing_dedup.runtime import CliParser, add_conf_args, build_spark, configure_logging, run_cli
from listing_dedup.sink.verify import verify_run

ALLOW_EMPTY_SETS = ("input.allow_empty=true", "input.max_shrink=1.0", "input.max_rejected_share=1.0")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = CliParser(prog="dedup_listings.py", description=__doc__.splitlines()[0])
    add_conf_args(p, "conf profile (conf/local.yaml, conf/cluster.yaml)", required=False)
    p.add_argument("--input", help="listing Parquet file or folder (a backfill: the root of the date partitions)")
    dates = p.add_mutually_exclusive_group(required=True)
    dates.add_argument("--run-date", help="YYYY-MM-DD: the partition written in every table")
    dates.add_argument("--from-date", help="backfill: first date (YYYY-MM-DD), needs --to-date")
    p.add_argument("--to-date", help="backfill: last date, inclusive")
    p.add_argument("--warehouse", required=True, help="folder (or URI) holding the Delta tables")
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="accept an input with 0 rows, one that shrank past input.max_shrink against the previous "
        "succeeded run, or one with more than input.max_rejected_share of its rows rejected (same as --set "
        "input.allow_empty=true --set input.max_shrink=1.0 --set input.max_rejected_share=1.0)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="with incremental.enabled: run every night of this invocation full (a new epoch of the match "
        "state), e.g. a date older than the state's newest (same as --set incremental.full=true)",
    )
    p.add_argument(
        "--verify-only",
        action="store_true",
        help="compute nothing: check the tables committed for --run-date and exit 1 if they are inconsistent",
    )
    p.add_argument(
        "--fail-on-health",
        action="store_true",
        help="with --verify-only: also exit 1 when the run's health check warned (runs.health_warnings)",
    )
    args = p.parse_args(argv)
    if args.fail_on_health and not args.verify_only:
        p.error("--fail-on-health goes with --verify-only")
    if args.from_date and not args.to_date:
        p.error("--from-date needs --to-date")
    if args.to_date and not args.from_date:
        p.error("--to-date needs --from-date")
    if args.verify_only and not args.run_date:
        p.error("--verify-only needs --run-date")
    if not args.verify_only and not (args.conf and args.input):
        p.error("the following arguments are required: --conf, --input")
    if args.allow_empty and args.verify_only:
        p.error("--allow-empty does not go with --verify-only")
    if args.full and args.verify_only:
        p.error("--full does not go with --verify-only")
    if args.full:
        args.overrides = [*args.overrides, "incremental.full=true"]
    if args.allow_empty:  # after the user's --set, so it wins
        args.overrides = [*args.overrides, *ALLOW_EMPTY_SETS]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)

    def _verify() -> int:
        run_date = check_run_date(args.run_date)
        # the checks are Spark aggregates over the committed files (never whole tables on the
        # driver): the session of the conf profile (the defaults' local[2] without --conf);
        # under spark-submit the submitted one, which YARN cluster mode expects the job to start
        spark = build_spark(load_config(args.conf or [], args.overrides).spark)
        res = verify_run(args.warehouse, run_date, spark)
        print(
            f"verified {run_date}: {res.rows_in} rows in, {res.rows_kept} kept, {res.rows_rejected} rejected, "
            f"{res.n_groups} groups" + (f"; health warnings: {res.health_warnings}" if res.health_warnings else ""),
            flush=True,
        )
        if args.fail_on_health and res.health_warnings:
            print(
                f"error: the health check of {run_date} warned: {res.health_warnings} (the runs table's "
                "health_json holds the figures; docs/quality.md says what each warning means)",
                file=sys.stderr,
                flush=True,
            )
            return 1
        return 0

    def _run() -> int:
        cfg = load_config(args.conf, args.overrides)
        if args.run_date:
            run_date = check_run_date(args.run_date)
            spark = build_spark(cfg.spark)
            summary = run_dedup(
                spark=spark, cfg=cfg, input_path=args.input, run_date=run_date, warehouse=args.warehouse
            )
            print(summary.as_text(), flush=True)
            return 0
        date_range(args.from_date, args.to_date)  # bad dates exit 2 before Spark starts
        spark = build_spark(cfg.spark)
        run_backfill(
            from_date=args.from_date,
            to_date=args.to_date,
            input_path=args.input,
            run=run_dedup,
            on_done=lambda _date, summary: print(summary.as_text(), flush=True),
            spark=spark,
            cfg=cfg,
            warehouse=args.warehouse,
        )
        return 0

    return run_cli(_verify if args.verify_only else _run)
