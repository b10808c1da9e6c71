"""Write the night's review queue: the pairs a reviewer should answer first.

    python jobs/review_queue.py --warehouse DIR --run-date YYYY-MM-DD [--input LISTINGS.parquet]
                                [--conf YAML ...] [--html DIR]

Reads the committed run of the date (its ``candidates``: run the job with
``output.candidates: true``; ``matches``, ``clusters``, the previous date's clusters, the
``decisions`` table) and replaces the date's partition of the ``review_queue`` Delta table with
at most ``review.max_pairs`` ranked pairs (lib/listing_dedup/quality/review.py). ``--input``: the
night's listings, for the titles and image paths shown (images read below the conf's
``input`` image roots). ``--html DIR``: also DIR/review.html, the report's review page (the top
pairs side by side). No Spark. Prints one line; exit 0 ok, 2 bad arguments or no such run, 1 failure.
"""

from __future__ import annotations

from listing_dedup.runtime import CliParser, add_conf_args, configure_logging, run_cli


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="review_queue.py", description=__doc__.splitlines()[0])
    add_conf_args(p, "conf profile (review.max_pairs, the input image roots)", required=False, log_level="WARNING")
    p.add_argument("--warehouse", required=True, help="the job's warehouse (folder or URI)")
    p.add_argument("--run-date", required=True, help="YYYY-MM-DD of the run")
    p.add_argument("--input", help="the night's listings Parquet (titles and image paths shown)")
    p.add_argument("--html", metavar="DIR", help="also write DIR/review.html")
    args = p.parse_args(argv)
    configure_logging(args.log_level)

    def _run() -> int:
        from pathlib import Path

        import pandas as pd

        from listing_dedup.config import load_config
        from listing_dedup.dates import check_run_date
        from listing_dedup.errors import InputError, first_line
        from listing_dedup.ingest.images import image_roots_for
        from listing_dedup.ingest.rows import clean_posting_id
        from listing_dedup.quality.review import queue_from_tables, review_page, write_queue

        run_date = check_run_date(args.run_date)
        cfg = load_config(args.conf or [], args.overrides)
        listings = None
        if args.input:
            try:
                listings = pd.read_parquet(args.input)
            except Exception as e:  # noqa: BLE001
                raise InputError(f"cannot read the listings {args.input}: {first_line(e)}") from e
            listings = listings.assign(posting_id=listings["posting_id"].map(clean_posting_id))
        q = queue_from_tables(args.warehouse, run_date, max_pairs=cfg.review.max_pairs, listings=listings)
        version = write_queue(args.warehouse, run_date, q)
        reasons = ", ".join(f"{k} {v}" for k, v in q["reason"].value_counts().items())
        line = f"review_queue {run_date}: {len(q)} pairs ({reasons}); version {version}"
        if args.html:
            out = Path(args.html)
            out.mkdir(parents=True, exist_ok=True)
            roots = image_roots_for(args.input, cfg.input) if args.input else None
            (out / "review.html").write_text(review_page(q, image_roots=roots), encoding="utf-8")
            line += f"; page {out / 'review.html'}"
        print(line, flush=True)
        return 0

    return run_cli(_run)
