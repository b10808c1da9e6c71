"""The command line: ``listing-dedup COMMAND ...`` (console script) or ``python -m listing_dedup
COMMAND ...``; ``jobs/*.py`` are the same commands as files for plain ``python`` and spark-submit.

Each command module has ``main(argv) -> exit code`` (0 ok, 2 bad arguments/config/input, 1 failure)."""

from __future__ import annotations

import importlib
import sys

# command -> (module under listing_dedup.cli, what it does)
COMMANDS = {
    "dedup": ("dedup", "run the job for a date (or a range), or --verify-only a committed date"),
    "evaluate": ("evaluate", "score a committed run against known groups (one JSON line), optional HTML report"),
    "tune": ("tune", "tune fusion, INB, thresholds, min2 and pHash on labelled listings"),
    "train": ("train_embedder", "fine-tune the text encoder (ArcFace / CurricularFace)"),
    "train-reranker": ("train_reranker", "train the learned pair re-ranker"),
    "make-sample": ("make_sample", "write the generated sample catalog"),
    "export-e5": ("export_e5", "export the packaged e5-small to a trainable sentence-transformers dir"),
    "compact-cache": ("compact_cache", "drop the embeddings cache's vectors that no recent run used"),
    "decide": ("decide", "append reviewers' same/different verdicts to the decisions table the job honours"),
    "review-queue": ("review_queue", "write a night's review queue (and its HTML page) from the committed run"),
}


def _usage() -> str:
    lines = ["usage: listing-dedup COMMAND [ARGS ...]   (COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<15} {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; one of: {', '.join(COMMANDS)} (see --help)", file=sys.stderr)
        return 2
    module = importlib.import_module(f"listing_dedup.cli.{COMMANDS[name][0]}")
    return module.main(rest)
