"""Export the packaged multilingual-e5-small to a trainable sentence-transformers directory.

A thin entry point (plain ``python`` or spark-submit); the code is :mod:`listing_dedup.cli.export_e5`,
also run as ``listing-dedup export-e5 ...`` or ``python -m listing_dedup export-e5 ...``.
"""

import sys

from listing_dedup.cli.export_e5 import main

if __name__ == "__main__":
    sys.exit(main())
