"""Find duplicate listings for one run date (or a range of dates) and write the Delta tables.

A thin entry point (plain ``python`` or spark-submit); the code is :mod:`listing_dedup.cli.dedup`,
also run as ``listing-dedup dedup ...`` or ``python -m listing_dedup dedup ...``.
"""

import sys

from listing_dedup.cli.dedup import main

if __name__ == "__main__":
    sys.exit(main())
