"""Test-only fault injection, switched on by ``testing.fail_once_stage`` in the conf.

Stages call :func:`maybe_fail_once` inside their Spark tasks; with the stage named in the conf,
the first attempt of partition 0 raises, so Spark's task retry is exercised for real. The conf
may name several stages at once (``embed,search,write``): each of them fails once in the same run.
"""

from __future__ import annotations

from collections.abc import Sequence

FAIL_STAGES = ("embed", "search", "write")


def parse_stages(value: str | Sequence[str]) -> tuple[str, ...] | None:
    """The stage names in ``value`` (``""``, ``"embed"``, ``"embed,search"`` or a list of names),
    in order, each once; ``None`` when ``value`` is neither a string nor a list of strings."""
    if isinstance(value, str):
        names = value.split(",")
    elif isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        names = [n for v in value for n in v.split(",")]
    else:
        return None
    return tuple(dict.fromkeys(n.strip() for n in names if n.strip()))


def maybe_fail_once(stage: str, fail_stage: str) -> None:
    """Raise in the first attempt of partition 0 when ``fail_stage`` (comma-separated) names ``stage``."""
    if not fail_stage or stage not in (parse_stages(fail_stage) or ()):
        return
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is not None and ctx.partitionId() == 0 and ctx.attemptNumber() == 0:
        raise RuntimeError(f"injected failure in stage '{stage}' (testing.fail_once_stage)")
