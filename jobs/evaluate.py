"""Score a committed run against known groups; prints exactly one JSON line on stdout.

    python jobs/evaluate.py --warehouse DIR --run-date YYYY-MM-DD --truth PATH [--json-out FILE]

Exit codes: 0 ok, 2 bad arguments or unusable input (missing run, unreadable truth), 1 failure.
"""

from __future__ import annotations

import argparse
import json
import sys

from listing_dedup.evaluate import evaluate_run, read_truth
from listing_dedup.pipeline import check_run_date
from listing_dedup.runtime import configure_logging, run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.splitlines()[0])
    p.add_argument("--warehouse", required=True, help="folder (or URI) holding the Delta tables")
    p.add_argument("--run-date", required=True, help="YYYY-MM-DD of the run to score")
    p.add_argument("--truth", required=True, help="Parquet or CSV with posting_id,label_group")
    p.add_argument("--json-out", help="also write the JSON to this file")
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)

    def _run() -> int:
        run_date = check_run_date(args.run_date)
        result = evaluate_run(args.warehouse, run_date, read_truth(args.truth))
        line = json.dumps(result)
        print(line, flush=True)
        if args.json_out:
            with open(args.json_out, "w") as f:
                f.write(line + "\n")
        return 0

    return run_cli(_run)


if __name__ == "__main__":
    sys.exit(main())
