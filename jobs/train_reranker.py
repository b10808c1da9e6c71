"""Train the learned pair re-ranker on labelled listings and write its model directory.

A thin entry point (plain ``python`` or spark-submit); the code is :mod:`listing_dedup.cli.train_reranker`,
also run as ``listing-dedup train-reranker ...`` or ``python -m listing_dedup train-reranker ...``.
"""

import sys

from listing_dedup.cli.train_reranker import main

if __name__ == "__main__":
    sys.exit(main())
