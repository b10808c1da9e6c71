"""Test-only fault injection, switched on by ``testing.fail_once_stage`` in the conf.

Stages call :func:`maybe_fail_once` inside their Spark tasks; with the stage named in the conf,
the first attempt of partition 0 raises, so Spark's task retry is exercised for real."""

from __future__ import annotations


def maybe_fail_once(stage: str, fail_stage: str) -> None:
    """Raise in the first attempt of partition 0 when ``fail_stage`` names ``stage``."""
    if not fail_stage or fail_stage != stage:
        return
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is not None and ctx.partitionId() == 0 and ctx.attemptNumber() == 0:
        raise RuntimeError(f"injected failure in stage '{stage}' (testing.fail_once_stage)")
