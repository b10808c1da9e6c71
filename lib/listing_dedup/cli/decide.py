"""Append reviewers' verdicts to the ``decisions`` table the nightly job honours.

    python jobs/decide.py --warehouse DIR --input VERDICTS.csv|parquet [--catalog LISTINGS.parquet]
                          [--conf YAML ...] [--source NAME] [--override]

The input holds ``posting_id_a``, ``posting_id_b``, ``verdict`` (``same`` | ``different``) and
optionally ``source``, ``note``, ``decided_at``. Each row is accepted into ``decisions`` or
refused with a reason into ``decision_rejects`` (both Delta tables under the warehouse,
partitioned by the UTC date of the command; reasons: lib/listing_dedup/sink/decisions.py).
``--catalog``: the listings the reviewers saw; unknown ids are refused and each decision keeps
both listings' content digests, so a run does not apply it once either listing changed (the
conf's ``input`` section says where the catalog's image paths are read). ``--override``: a
verdict that contradicts the table's is accepted and, being the latest, wins. No Spark.

Prints one line (rows in, accepted, rejected by reason, table versions) and the first rejects;
exit 0 ok (rejects included), 2 bad arguments or an unreadable input, 1 failure.
"""

from __future__ import annotations

from listing_dedup.runtime import CliParser, add_conf_args, configure_logging, run_cli

SHOWN_REJECTS = 20


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="decide.py", description=__doc__.splitlines()[0])
    add_conf_args(p, "conf profile (its input section, for --catalog)", required=False, log_level="WARNING")
    p.add_argument("--warehouse", required=True, help="the job's warehouse (folder or URI)")
    p.add_argument("--input", required=True, help="the verdicts: CSV or Parquet")
    p.add_argument("--catalog", help="the listings Parquet the verdicts are about (ids checked, digests kept)")
    p.add_argument("--source", default="cli", help="source of rows that have none (default cli)")
    p.add_argument("--override", action="store_true", help="accept verdicts that contradict the table's")
    args = p.parse_args(argv)
    configure_logging(args.log_level)

    def _run() -> int:
        from listing_dedup.config import load_config
        from listing_dedup.ingest.rows import clean_posting_id
        from listing_dedup.sink.decisions import catalog_digests, decide, read_verdicts

        cfg = load_config(args.conf or [], args.overrides)
        rows = read_verdicts(args.input)
        digests = None
        if args.catalog:
            ids = {x for c in ("posting_id_a", "posting_id_b") for x in rows[c].map(clean_posting_id) if x}
            digests = catalog_digests(args.catalog, ids, cfg.input)
        res = decide(args.warehouse, rows, digests=digests, default_source=args.source, override=args.override)
        v = res.validated
        reasons = ", ".join(f"{k} {n}" for k, n in v.reasons().items())
        versions = ", ".join(f"{t} version {n}" for t, n in res.versions.items()) or "nothing written"
        print(
            f"decisions: {v.rows_in} in, {len(v.accepted)} accepted, {len(v.rejected)} rejected"
            + (f" ({reasons})" if reasons else "")
            + f"; batch {res.batch_id}; {versions}",
            flush=True,
        )
        for r in v.rejected.head(SHOWN_REJECTS).itertuples():
            print(f"  rejected {r.posting_id_a}-{r.posting_id_b} {r.verdict}: {r.reason}")
        if len(v.rejected) > SHOWN_REJECTS:
            print(f"  ... {len(v.rejected) - SHOWN_REJECTS} more in decision_rejects (batch {res.batch_id})")
        return 0

    return run_cli(_run)
