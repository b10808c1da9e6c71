"""Stage timing: each stage is timed and logged in one line with its row counts; the
same figures go to the ``runs`` table and the job's printed summary."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("listing_dedup.stages")


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, int]]:
        """Time a stage; the block may put row counts into the yielded dict."""
        counts: dict[str, int] = {}
        t0 = time.perf_counter()
        try:
            yield counts
        finally:
            dt = time.perf_counter() - t0
            self.seconds[name] = self.seconds.get(name, 0.0) + dt
            self.counts.update(counts)
            extra = " ".join(f"{k}={v}" for k, v in counts.items())
            log.info("stage %-12s %7.2fs %s", name, dt, extra)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())
