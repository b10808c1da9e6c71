"""Score a committed run against known groups; prints exactly one JSON line on stdout.

    python jobs/evaluate.py --warehouse DIR --run-date YYYY-MM-DD --truth PATH [--json-out FILE]
                            [--report DIR [--image-root DIR] [--report-samples N]]

The line holds the row-wise mean scores (``matches``, ``clusters``: f1, precision, recall, the
metric of ../shared/data/README.md) and the pairwise ones over unordered pairs
(``matches_pairwise``, ``clusters_pairwise``: f1, precision, recall and the true, predicted and
correct pair counts), which a catalog of singletons cannot flatter.

``--report DIR`` also writes DIR/report.html with curves.png and cluster_sizes.png (see
lib/listing_dedup/quality/report.py); stdout stays the one JSON line.

Exit codes: 0 ok, 2 bad arguments or unusable input (missing run, unreadable truth), 1 failure.
"""

from __future__ import annotations

import argparse
import json
import sys

from listing_dedup.dates import check_run_date
from listing_dedup.quality.evaluate import evaluate_run, read_truth
from listing_dedup.quality.report import write_report
from listing_dedup.runtime import CliParser, configure_logging, run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = CliParser(prog="evaluate.py", description=__doc__.splitlines()[0])
    p.add_argument("--warehouse", required=True, help="folder (or URI) holding the Delta tables")
    p.add_argument("--run-date", required=True, help="YYYY-MM-DD of the run to score")
    p.add_argument("--truth", required=True, help="Parquet or CSV with posting_id,label_group")
    p.add_argument("--json-out", help="also write the JSON to this file")
    p.add_argument("--report", metavar="DIR", help="also write an HTML report with plots into DIR")
    p.add_argument(
        "--image-root",
        help="with --report: folder of relative image paths (default: the run's input.image_root or input folder)",
    )
    p.add_argument("--report-samples", type=int, default=12, help="with --report: pairs shown per table")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    if (args.image_root or args.report_samples != 12) and not args.report:
        p.error("--image-root and --report-samples need --report")
    if args.report_samples < 1:
        p.error("--report-samples must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)

    def _run() -> int:
        run_date = check_run_date(args.run_date)
        truth = read_truth(args.truth)
        result = evaluate_run(args.warehouse, run_date, truth)
        line = json.dumps(result)
        print(line, flush=True)
        if args.json_out:
            with open(args.json_out, "w") as f:
                f.write(line + "\n")
        if args.report:
            path = write_report(
                args.warehouse, run_date, truth, args.report, image_root=args.image_root, samples=args.report_samples
            )
            print(f"report written to {path}", file=sys.stderr)
        return 0

    return run_cli(_run)
