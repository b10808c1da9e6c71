"""Train the learned pair re-ranker on labelled listings and write its model directory.

    python jobs/train_reranker.py --conf conf/local.yaml [--conf MODEL_DIR/overlay.yaml ...] \
        --input LABELLED.parquet [--truth TRUTH.csv] --out RERANKER_DIR [--cache-dir DIR] [--set key=value ...]

The conf stack is the one the dedup job will run with (encoder, fusion weights, INB, k):
the re-ranker's features are computed under it. RERANKER_DIR/overlay.yaml, passed as the
last --conf to jobs/dedup_listings.py, turns the re-ranker on with the thresholds chosen
out-of-fold. See lib/listing_dedup/training/rerank_train.py and docs/quality.md.

    python jobs/train_reranker.py --conf ... --decisions WAREHOUSE --input LISTINGS.parquet --out RERANKER_DIR

``--decisions``: also learn from the reviewers' ``decisions`` table of the warehouse
(``listing-dedup decide``; lib/listing_dedup/training/decisions.py). With a labelled input (a
``label_group`` column or ``--truth``) each decided candidate pair takes its verdict as its label
(together with the file); without one, the input is the catalog the decisions were made on and
the conf's re-ranker is refitted on its decided candidate pairs (instead of a labelled file; its
thresholds kept, its health reference recomputed on the catalog). docs/review.md.
Exit codes: 0 ok, 2 bad arguments/config/input, 1 runtime failure.
"""

from __future__ import annotations

from listing_dedup.runtime import CliParser, add_conf_args, configure_logging, run_cli


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="train_reranker.py", description=__doc__.splitlines()[0])
    add_conf_args(p, "dedup conf profile(s) the job will run with (conf/local.yaml, a model's overlay.yaml, ...)")
    p.add_argument("--input", required=True, help="labelled listings Parquet (posting_id, title, [image_phash, fold])")
    p.add_argument("--truth", help="Parquet/CSV posting_id,label_group (else the input's label_group column)")
    p.add_argument("--out", required=True, help="re-ranker model directory to write")
    p.add_argument("--cache-dir", help="cache the text embeddings of the split here")
    p.add_argument("--decisions", metavar="WAREHOUSE", help="also learn from this warehouse's decisions table")
    args = p.parse_args(argv)
    configure_logging(args.log_level)

    def _run() -> int:
        from listing_dedup.config import load_config
        from listing_dedup.quality.tune import load_split
        from listing_dedup.training.rerank_train import train_reranker, write_reranker_dir

        cfg = load_config(args.conf, args.overrides)
        if args.decisions:
            from listing_dedup.training.decisions import read_for_training, refit_from_decisions, write_refit_dir

            decisions, catalog = read_for_training(args.decisions, args.input, args.truth, cfg)
            if catalog is not None:  # no labels: refit the conf's re-ranker on the decisions alone
                refit = refit_from_decisions(catalog, cfg, decisions, cache_dir=args.cache_dir)
                write_refit_dir(args.out, refit, cfg, source=f"{args.decisions} on {args.input}")
                print(
                    f"re-ranker: {args.out} ({refit.base} refitted on the decisions: {refit.used.line()}); "
                    f"health reference recomputed on the {len(catalog)} listings\n"
                    f"  use it: --conf ... --conf {args.out}/overlay.yaml",
                    flush=True,
                )
                return 0
        df = load_split(args.input, args.truth, cfg.input.max_title_chars)
        if args.decisions:
            from listing_dedup.training.decisions import train_with_decisions

            res, used = train_with_decisions(df, cfg, decisions, cache_dir=args.cache_dir)
            print(f"decisions: {used.line()}")
        else:
            res = train_reranker(df, cfg, cache_dir=args.cache_dir)
        write_reranker_dir(args.out, res, cfg, source=args.input)
        b = res.best
        print(f"re-ranker: {args.out} ({len(df)} labelled listings, {len(res.parts)} parts)")
        for part in res.parts:
            base, rr = part["threshold_rule"], part["reranked_out_of_fold"]
            print(
                f"  part {part['part']}: {part['listings']} listings, {part['candidates']} candidates; "
                f"threshold rule F1 {base['f1']:.4f} -> re-ranked (out of fold) {rr['f1']:.4f}"
            )
        for r in res.rounds:
            what = "pair model" if r["round"] == 0 else f"graph round {r['round']}"
            print(f"  {what}: out-of-fold mean F1 {r['f1']:.4f} at threshold {r['threshold']}")
        ref = res.health_reference
        if ref is not None:
            mid = ref.top1_quantiles[len(ref.top1_quantiles) // 2] if ref.top1_quantiles else float("nan")
            print(
                f"  health reference (health_reference.json, read by the job's health check): "
                f"{ref.matches_per_listing:.2f} matches a listing, {ref.share_matched:.1%} matched, "
                f"top-1 probability median {mid:.3f}, signals "
                + ", ".join(f"{s} {v:.0%}" for s, v in sorted(ref.signals.items()))
            )
        m2 = "off" if res.min2_threshold is None else f"{res.min2_threshold}"
        print(
            f"  chosen: threshold {res.threshold}, min2 {m2}: mean F1 {b['f1']:.4f} "
            f"(P {b['precision']:.4f} R {b['recall']:.4f})\n"
            f"  use it: --conf ... --conf {args.out}/overlay.yaml",
            flush=True,
        )
        return 0

    return run_cli(_run)
