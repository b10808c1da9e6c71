"""Write the generated sample catalog (listings Parquet + truth CSV) used by `make run`.

A thin entry point (plain ``python`` or spark-submit); the code is :mod:`listing_dedup.cli.make_sample`,
also run as ``listing-dedup make-sample ...`` or ``python -m listing_dedup make-sample ...``.
"""

import sys

from listing_dedup.cli.make_sample import main

if __name__ == "__main__":
    sys.exit(main())
