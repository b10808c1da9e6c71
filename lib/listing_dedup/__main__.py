"""``python -m listing_dedup COMMAND ...``: see :mod:`listing_dedup.cli`."""

import sys

from listing_dedup.cli import main

sys.exit(main())
