"""Tune fusion weights, INB, thresholds, min2 and the pHash radius on labelled listings.

A thin entry point (plain ``python`` or spark-submit); the code is :mod:`listing_dedup.cli.tune`,
also run as ``listing-dedup tune ...`` or ``python -m listing_dedup tune ...``.
"""

import sys

from listing_dedup.cli.tune import main

if __name__ == "__main__":
    sys.exit(main())
