"""Fine-tune the embedding model on labelled listings (ArcFace / CurricularFace) and write a model directory.

A thin entry point (plain ``python`` or spark-submit); the code is :mod:`listing_dedup.cli.train_embedder`,
also run as ``listing-dedup train-embedder ...`` or ``python -m listing_dedup train-embedder ...``.
"""

import sys

from listing_dedup.cli.train_embedder import main

if __name__ == "__main__":
    sys.exit(main())
