"""Backfill without a scheduler: run the job for every date of a range, oldest first.

    run_backfill(spark=spark, cfg=cfg, input_path="/data/listings", from_date="2026-01-01",
                 to_date="2026-01-07", warehouse="/data/warehouse")

Each date reads its own input partition (:func:`input_for_date`) and commits its own
``run_date`` partition of every table, so each date is idempotent: a rerun replaces it. The
loop stops at the first date that fails; the dates before it stay committed and the error
says where to resume (``--from-date <failed date>``). The error keeps the failed run's class,
so the exit code is the one a single-date run would give (2 for bad input, 1 otherwise).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from listing_dedup.dates import parse_date
from listing_dedup.errors import DedupError, InputError

log = logging.getLogger(__name__)

MAX_DATES = 3660  # ten years of daily runs: a guard against a typo in a year
DATE_PLACEHOLDER = "{run_date}"


def date_range(from_date: str, to_date: str) -> list[str]:
    """Every date from ``from_date`` to ``to_date`` inclusive, as ``YYYY-MM-DD``."""
    try:
        start, end = parse_date(from_date), parse_date(to_date)
    except InputError:
        raise InputError(f"backfill dates must be YYYY-MM-DD, got '{from_date}' and '{to_date}'") from None
    if end < start:
        raise InputError(f"--to-date {to_date} is before --from-date {from_date}")
    n = (end - start).days + 1
    if n > MAX_DATES:
        raise InputError(f"backfill of {n} dates refused (more than {MAX_DATES}); split the range")
    return [(start + dt.timedelta(days=i)).isoformat() for i in range(n)]


def input_for_date(input_path: str, run_date: str) -> str:
    """The input of one date: ``input_path`` with ``{run_date}`` replaced when it has that
    placeholder, else the Hive-style partition folder ``<input_path>/run_date=<date>``."""
    if DATE_PLACEHOLDER in input_path:
        return input_path.replace(DATE_PLACEHOLDER, run_date)
    return input_path.rstrip("/") + f"/run_date={run_date}"


def _stopped(e: BaseException, run_date: str, done: list[str]) -> DedupError:
    committed = f"{done[0]}..{done[-1]} ({len(done)} dates) stay committed" if done else "no date was committed"
    msg = f"backfill stopped at {run_date}: {e}; {committed}; resume with --from-date {run_date}"
    cls = type(e) if isinstance(e, DedupError) else DedupError
    try:
        return cls(msg)
    except TypeError:  # a subclass with another constructor signature
        return DedupError(msg)


def run_backfill(
    *,
    from_date: str,
    to_date: str,
    input_path: str,
    run: Callable[..., Any],
    on_done: Callable[[str, Any], None] | None = None,
    **run_kwargs: Any,
) -> list[Any]:
    """Call ``run(input_path=<date's input>, run_date=<date>, **run_kwargs)`` for each date
    in order (``run`` is :func:`listing_dedup.pipeline.run_dedup` in the job) and return the
    results. ``on_done(date, result)`` is called after each committed date. Raises a
    :class:`DedupError` naming the failed date and the committed ones."""
    dates = date_range(from_date, to_date)
    log.info("backfill of %d dates: %s .. %s", len(dates), dates[0], dates[-1])
    done: list[str] = []
    results: list[Any] = []
    for i, run_date in enumerate(dates, start=1):
        path = input_for_date(input_path, run_date)
        log.info("backfill %d/%d: %s from %s", i, len(dates), run_date, path)
        try:
            result = run(input_path=path, run_date=run_date, **run_kwargs)
        except Exception as e:
            raise _stopped(e, run_date, done) from e
        done.append(run_date)
        results.append(result)
        if on_done is not None:
            on_done(run_date, result)
    return results
