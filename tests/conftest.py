"""Shared fixtures: one local SparkSession for the whole test session (splink-style), the real
Shopee data under ``../shared/data``, and the rule that nothing skips silently in CI.

A test that cannot run here (no ``../shared/data``, a package that setup.py requires is missing)
skips on a developer's machine, but FAILS when the ``CI`` environment variable is set: in CI a
missing requirement is a broken set-up, not a reason to test less. Use :func:`skip_or_fail` and
:func:`require_module` (instead of ``pytest.skip`` / ``pytest.importorskip``) for those cases.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
# Workers must use the same interpreter as the driver (the project's virtualenv).
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# CPU is the CI default; GPU tests are behind the `gpu` marker.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO = Path(__file__).resolve().parents[1]
# The JIT's first tier only: the tests' JVMs run many small, different Spark jobs, where the
# optimising compiler's work on 2 cores costs more than it gives back (about 10 % of the Spark
# tests' time, 20 % of a child job's). Also passed to the jobs run as child processes.
QUICK_JVM = "-XX:TieredStopAtLevel=1"
# Interpreted expressions and no whole-stage code generation: each of a job run's ~100 small,
# differently shaped queries would otherwise compile its own Java classes (Janino, whose name
# lookups scan every jar on the classpath, then the JIT); on 2 cores that costs about a quarter of
# a warm in-process run (a 335-listing lexical run: 26 s against 35 s, docs/benchmarks.md). The
# results are the same (Spark runs its own tests in both modes); `make run` and the benchmarks keep
# Spark's defaults. Also passed to the jobs run as child processes (QUICK_SETS).
QUICK_SQL = {
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    # and each query planned once: adaptive execution re-plans at every shuffle, which on catalogs
    # of a few hundred rows has nothing to adapt (about 12 % of a warm run)
    "spark.sql.adaptive.enabled": "false",
}
# the same for a child job: --set assignments of its profile's spark.conf
QUICK_SETS = [f"spark.conf.spark.driver.extraJavaOptions={QUICK_JVM}"] + [
    f"spark.conf.{k}={v}" for k, v in QUICK_SQL.items()
]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the calling test (or module) for ``reason``; under ``CI`` fail it instead."""
    if in_ci():
        pytest.fail(f"{reason} -- CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_module(name: str, why: str = "") -> ModuleType:
    """``pytest.importorskip`` for a package that setup.py requires: the module, or a skip
    naming it (a failure under ``CI``). Optional packages that setup.py does not list keep
    ``pytest.importorskip``."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        skip_or_fail(f"{why or name + ' is not installed'} ({type(e).__name__}: {e})")


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2,4]")  # 4 attempts per task, as on a cluster
        .appName("listing-dedup-tests")
        # as many shuffle partitions as cores: still more than one (every partition-crossing path
        # runs), and half the tasks and Python-worker round trips of 4 (the suite 789 -> 580 s)
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.memory", "2g")
        .config("spark.task.maxFailures", "4")
        .config("spark.executorEnv.CUDA_VISIBLE_DEVICES", "")
        .config("spark.driver.extraJavaOptions", QUICK_JVM)
        .config(map=QUICK_SQL)
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@contextlib.contextmanager
def restored_conf(spark):
    """Put back the session's settings and log level as they were on entry (see cli_spark)."""
    before = {k: v for k, v in spark.sql("SET").collect()}
    try:
        yield spark
    finally:
        _restore(spark, before)


@pytest.fixture()
def cli_spark(spark):
    """The test session, for a command run in-process through its ``main(argv)``: the command's
    ``build_spark`` gets this session and applies the profile's ``spark.conf`` and log level to
    it; they are put back afterwards, so later tests see the session as the fixture made it.
    (A module-scoped run uses :func:`restored_conf` the same way.)"""
    with restored_conf(spark):
        yield spark


def _restore(spark, before: dict[str, str]) -> None:
    now = {k: v for k, v in spark.sql("SET").collect()}
    for k, v in now.items():
        if before.get(k) == v:
            continue
        try:
            if k in before:
                spark.conf.set(k, before[k])
            else:
                spark.conf.unset(k)
        except Exception:  # noqa: BLE001 - a static conf the command could not change either
            pass
    spark.sparkContext.setLogLevel("ERROR")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "shopee" / "listings_dev.csv").is_file():
        skip_or_fail(f"real Shopee data not found at {SHARED_DATA} (../shared/data)")
    return SHARED_DATA


# The files whose job runs and child processes take longest, longest first (the durations of a
# fresh-clone `make test`, docs/benchmarks.md). They are collected first, and the Makefile runs
# xdist with --no-loadscope-reorder, so that its per-file scheduler hands them out first: the
# longest file (the DAG run, mostly waiting on Airflow and spark-submit) no longer starts last,
# with one process idle while it runs alone.
LONGEST_FIRST = (
    "reliability/test_crash_and_concurrency.py",
    "test_dag_run.py",
    "reliability/test_data_safety.py",
    "reliability/test_incremental_nights.py",
    "reliability/test_rerun_retry_stable.py",
    "test_health_job.py",
    "test_rerank.py",
    "test_cache.py",
    "test_decisions.py",
    "test_training.py",
    "reliability/test_cache_paths.py",
    "reliability/test_bad_input.py",
    "test_verify.py",
    "test_lineage.py",
    "test_embedder.py",
    "test_search_scale.py",
    "test_gpu_bench.py",
    "test_components.py",
    "test_search_rounds.py",
    "test_phash_match.py",
    "test_backfill.py",
    "reliability/test_secrets.py",
)


def _first_rank(item) -> int:
    rel = Path(str(item.fspath)).resolve().relative_to(REPO / "tests").as_posix()
    return LONGEST_FIRST.index(rel) if rel in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_first_rank)  # stable: the tests of a file keep their order
    if os.environ.get("CUDA_VISIBLE_DEVICES", "") != "":
        return
    skip_gpu = pytest.mark.skip(reason="needs a GPU: run with CUDA_VISIBLE_DEVICES set")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


_STARTED: dict[str, object] = {}


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def pytest_sessionstart(session):
    _STARTED.update(t=time.monotonic(), load=_loadavg())


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if "t" not in _STARTED:
        return
    wall = time.monotonic() - _STARTED["t"]
    terminalreporter.write_line(
        f"suite wall time {wall:.0f} s ({wall / 60:.1f} min); load average (1, 5, 15 min) "
        f"at start {_STARTED['load']}, at end {_loadavg()}; CI={'set' if in_ci() else 'unset'}"
    )


def dedup_main(capsys, *args: str) -> tuple[int, str, str]:
    """jobs/dedup_listings.py in-process through ``main(argv)``: (exit code, stdout, stderr);
    argparse errors exit through SystemExit. (The entry point's child-process smoke test is
    tests/test_dag_run.py: spark-submit via Airflow.)"""
    from listing_dedup.cli import dedup as dedup_cli

    try:
        rc = dedup_cli.main(list(args))
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err
