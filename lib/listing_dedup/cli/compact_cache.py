"""Drop the embeddings cache's vectors that no recent run used (the cache's retention rule).

    python jobs/compact_cache.py --warehouse DIR [--conf conf/local.yaml] [--keep-runs N] [--cache-path P]

Keeps the vectors that any of the last ``N`` run dates used (``cache.keep_runs`` of the conf
profile unless ``--keep-runs`` is given; a date counts when its ``embeddings_used`` partition was
written) and one copy of each key; one Delta commit rewrites the ``embeddings`` table under
``cache.path`` (default: the warehouse). Safe while a dedup job runs: the job's appended
vectors stay, and the files of the snapshot it reads stay until ``vacuum`` (a week). Prints
one line; exit 0 ok, 2 bad arguments or no cache there, 1 failure.
"""

from __future__ import annotations

from listing_dedup.config import load_config
from listing_dedup.runtime import CliParser, add_conf_args, build_spark, configure_logging, run_cli


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="compact_cache.py", description=__doc__.splitlines()[0])
    add_conf_args(p, "conf profile (its cache and spark sections)", required=False)
    p.add_argument("--warehouse", required=True, help="the job's warehouse (the cache's root unless cache.path)")
    p.add_argument("--keep-runs", type=int, help="keep vectors used by the last N run dates (default cache.keep_runs)")
    p.add_argument("--cache-path", help="the cache's root (default cache.path, else the warehouse)")
    args = p.parse_args(argv)
    if args.keep_runs is not None and args.keep_runs < 1:
        p.error("--keep-runs must be >= 1")
    configure_logging(args.log_level)

    def _run() -> int:
        from listing_dedup.sink.cache import compact

        cfg = load_config(args.conf or [], args.overrides)
        root = args.cache_path or cfg.cache.root(args.warehouse)
        keep = args.keep_runs or cfg.cache.keep_runs
        spark = build_spark(cfg.spark)
        res = compact(spark, root, keep)
        print(
            f"compacted {root}: {res.rows_before} -> {res.rows_after} vectors ({res.dropped} dropped), kept the keys "
            f"of {len(res.dates)} run dates ({', '.join(res.dates)})"
            + (f", embeddings version {res.version}" if res.version is not None else ", nothing to rewrite"),
            flush=True,
        )
        return 0

    return run_cli(_run)
