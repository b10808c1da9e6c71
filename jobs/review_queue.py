"""Write the night's review queue (the pairs a reviewer should answer first).

A thin entry point (plain ``python`` or spark-submit); the code is :mod:`listing_dedup.cli.review_queue`,
also run as ``listing-dedup review-queue ...`` or ``python -m listing_dedup review-queue ...``.
"""

import sys

from listing_dedup.cli.review_queue import main

if __name__ == "__main__":
    sys.exit(main())
