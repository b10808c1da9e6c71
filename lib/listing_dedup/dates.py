"""The one check of a run date: ``YYYY-MM-DD`` and a real calendar day (no Spark import)."""

from __future__ import annotations

import datetime as dt
import re

from listing_dedup.errors import InputError

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def check_run_date(run_date: str, what: str = "run date") -> str:
    """``run_date`` unchanged when it is a valid ``YYYY-MM-DD`` date, else :class:`InputError`."""
    ok = isinstance(run_date, str) and bool(_DATE_RE.match(run_date))
    if ok:
        try:
            dt.date.fromisoformat(run_date)
        except ValueError:
            ok = False
    if not ok:
        raise InputError(f"{what} must be a date YYYY-MM-DD, got {run_date!r}")
    return run_date


def parse_date(value: str, what: str = "run date") -> dt.date:
    """:func:`check_run_date`, as a :class:`datetime.date`."""
    return dt.date.fromisoformat(check_run_date(value, what))
