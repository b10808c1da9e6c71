"""Score a committed run against known groups; prints exactly one JSON line on stdout.

A thin entry point (plain ``python`` or spark-submit); the code is :mod:`listing_dedup.cli.evaluate`,
also run as ``listing-dedup evaluate ...`` or ``python -m listing_dedup evaluate ...``.
"""

import sys

from listing_dedup.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
