"""Fine-tune the embedding model on labelled listings (ArcFace / CurricularFace) and write a model directory.

    python jobs/train_embedder.py --conf conf/train.yaml --input LABELLED_PARQUET --out MODEL_DIR \
        [--set key=value ...] [--base-embeddings NPY]

The input needs posting_id, title and label_group (optionally fold: the highest fold is held
out for validation). MODEL_DIR/overlay.yaml, passed as an extra --conf to
jobs/dedup_listings.py, makes the dedup job use the model. See docs/training.md.
Exit codes: 0 ok, 2 bad arguments/config/input, 1 runtime failure.
"""

from __future__ import annotations

import argparse

from listing_dedup.config import load_train_config
from listing_dedup.runtime import CliParser, add_conf_args, configure_logging, run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = CliParser(prog="train_embedder.py", description=__doc__.splitlines()[0])
    add_conf_args(p, "training profile (conf/train.yaml)")
    p.add_argument("--input", required=True, help="labelled listing Parquet file or folder")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument(
        "--base-embeddings",
        default=None,
        metavar="NPY",
        help="mode head: precomputed base-encoder embeddings, one row per input row in input "
        "order (checked against the encoder on the first rows)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)

    def _run() -> int:
        from listing_dedup.training.trainer import train_embedder

        cfg = load_train_config(args.conf, args.overrides)
        m = train_embedder(cfg, input_path=args.input, out_dir=args.out, base_embeddings_path=args.base_embeddings)
        t = m["tuned"]
        held = (
            f"held-out F1 {t['f1']:.4f} (threshold {t['threshold']}, min2 {t['min2_threshold']}, "
            f"INB {t['inb_threshold']}); frozen encoder {m['frozen_encoder']['f1']:.4f}"
            if t
            else "no held-out rows (refit): the overlay sets the model only"
        )
        print(
            f"model directory: {args.out}\n"
            f"  best epoch {m['best_epoch']} of {len(m['epochs'])}; {held}\n"
            f"  {m['seconds']['total']:.0f}s on {m['hardware']['device']}\n"
            f"  use it: --conf conf/local.yaml --conf {args.out}/overlay.yaml",
            flush=True,
        )
        return 0

    return run_cli(_run)
