"""Drop the embeddings cache's vectors that no recent run used (retention).

A thin entry point (plain ``python`` or spark-submit); the code is :mod:`listing_dedup.cli.compact_cache`,
also run as ``listing-dedup compact-cache ...`` or ``python -m listing_dedup compact-cache ...``.
"""

import sys

from listing_dedup.cli.compact_cache import main

if __name__ == "__main__":
    sys.exit(main())
