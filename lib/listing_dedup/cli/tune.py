"""Tune fusion weights, INB, thresholds, min2 and the pHash radius on a labelled split, and
write the best setting as a conf overlay.

    python jobs/tune.py --conf conf/local.yaml --input LISTINGS.parquet --truth TRUTH.csv \
        --out conf/tuned.yaml [--parts 3] [--cache-dir DIR] [--csv FILE] [--set key=value ...]

The overlay is passed as an extra ``--conf`` to jobs/dedup_listings.py; beside it,
``<out>.health.json``: the health reference of the chosen setting (its top-1 score
distribution and matches a listing on the split), which the overlay names in
``health.reference`` so that the job's health check compares a catalog against the data the
setting was tuned on. Exit codes: 0 ok,
2 bad arguments/config/input, 1 failure. See lib/listing_dedup/quality/tune.py for the method.

``--decisions WAREHOUSE``: the reviewers' verdicts of that warehouse's ``decisions`` table
label the split too (lib/listing_dedup/training/decisions.labels_with_decisions): with a labelled
input a ``same`` pair joins two label groups and a ``different`` pair takes a listing out of one;
without labels the decided listings alone are the split, grouped by their ``same`` verdicts.
The health reference follows: it is computed on the split so labelled.
"""

from __future__ import annotations

from pathlib import Path

from listing_dedup.config import load_config
from listing_dedup.quality.health import write_reference_file
from listing_dedup.quality.run_health import threshold_settings
from listing_dedup.quality.tune import Grid, load_split, tune, tuned_reference
from listing_dedup.runtime import CliParser, add_conf_args, configure_logging, run_cli


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="tune.py", description=__doc__.splitlines()[0])
    add_conf_args(p, "conf profile to tune from (conf/local.yaml, plus a model's overlay.yaml)")
    p.add_argument("--input", required=True, help="labelled listings Parquet (posting_id, title, [image_phash, fold])")
    p.add_argument("--truth", help="Parquet/CSV posting_id,label_group (else the input's label_group column)")
    p.add_argument("--out", required=True, help="conf overlay to write (YAML)")
    p.add_argument("--parts", type=int, default=3, help="group-disjoint catalogs when the input has no fold column")
    p.add_argument("--cache-dir", help="cache the text embeddings of the split here")
    p.add_argument("--csv", help="also write every setting's mean scores to this CSV")
    p.add_argument("--decisions", metavar="WAREHOUSE", help="also label the split with this warehouse's decisions")
    args = p.parse_args(argv)
    if args.parts < 2:
        p.error("--parts must be >= 2")
    configure_logging(args.log_level)

    def _run() -> int:
        import pandas as pd
        import yaml

        cfg = load_config(args.conf, args.overrides)
        if args.decisions:
            from listing_dedup.errors import InputError
            from listing_dedup.training.decisions import labels_with_decisions, read_for_training

            decisions, catalog = read_for_training(args.decisions, args.input, args.truth, cfg)
            df = catalog if catalog is not None else load_split(args.input, args.truth, cfg.input.max_title_chars)
            df, counts = labels_with_decisions(df, decisions)
            print("decisions: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
            if len(df) < 10:
                raise InputError(f"only {len(df)} labelled listings with the decisions: too few to tune on")
        else:
            df = load_split(args.input, args.truth, cfg.input.max_title_chars)
        grid, parts = Grid(), []
        ranked, _, abl, overlay = tune(df, cfg, grid, n_parts=args.parts, cache_dir=args.cache_dir, parts_out=parts)
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print("best settings (mean over parts):")
            print(ranked.head(10).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            print("\ncomponent ablation (best setting of each combination):")
            print(abl.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        header = (
            f"# written by jobs/tune.py on {args.input} ({len(df)} labelled listings)\n"
            f"# mean F1 over the split's parts: {ranked.iloc[0]['f1']:.4f}\n"
        )
        # the overlay names its health reference (written next): the reference is recorded under
        # the settings the job will run with this overlay stacked on the same confs
        # (quality/run_health.choose_reference)
        ref_path = str(Path(args.out).with_suffix("")) + ".health.json"
        overlay["health"] = {"reference": ref_path}
        with open(args.out, "w") as f:
            f.write(header + yaml.safe_dump(overlay, sort_keys=False))
        tuned = load_config([*args.conf, args.out], args.overrides)
        ref = tuned_reference(
            parts,
            ranked.iloc[0],
            tuned.match,
            grid.k,
            source=f"jobs/tune.py on {args.input} ({len(df)} labelled listings)",
            settings=threshold_settings(tuned),
        )
        write_reference_file(ref_path, ref)
        if args.csv:
            ranked.to_csv(args.csv, index=False)
        print(f"\nwrote {args.out} and its health reference {ref_path}")
        return 0

    return run_cli(_run)
