"""Append reviewers' verdicts to the ``decisions`` table the nightly job honours.

A thin entry point (plain ``python`` or spark-submit); the code is :mod:`listing_dedup.cli.decide`,
also run as ``listing-dedup decide ...`` or ``python -m listing_dedup decide ...``.
"""

import sys

from listing_dedup.cli.decide import main

if __name__ == "__main__":
    sys.exit(main())
