"""What the thin entry points in ``jobs/`` share: logging set-up, building the one
SparkSession from the conf profile, and mapping errors to exit codes.

Exit codes: 0 ok; 2 bad arguments, bad config or unusable input (one clear line on stderr,
no traceback); 1 any other failure (traceback logged, then one ``error:`` line), storage or
credential failures while reading the input among them.

A failure inside a Spark job reaches the driver as Spark's own exception (a ``PythonException``
holding a Python worker's traceback, a ``Py4JJavaError`` holding Java's cause chain):
:func:`listing_dedup.ingest.failures.job_failure` recognises the project's errors in it (a
``StorageError`` raised reading an image, an input check that fired, a corrupt or mistyped
input file), so they exit with their own code and one line too.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from listing_dedup.config import SparkConf
from listing_dedup.errors import DedupError, first_line
from listing_dedup.ingest.failures import job_failure
from listing_dedup.redact import install_log_redaction, redact_text

log = logging.getLogger("listing_dedup")


class CliParser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2 (the jobs' contract for bad arguments)."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see --help)\n")


def add_conf_args(p: argparse.ArgumentParser, what: str, *, required: bool = True, log_level: str = "INFO") -> None:
    """The options every conf-driven job shares: ``--conf`` (repeatable, later files win),
    ``--set KEY=VALUE`` (into ``args.overrides``) and ``--log-level``."""
    p.add_argument(
        "--conf",
        action="append",
        required=required,
        metavar="YAML",
        help=f"{what}; repeatable, later files override earlier ones",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override one conf key, e.g. --set match.threshold=0.8; repeatable",
    )
    p.add_argument("--log-level", default=log_level, help=f"logging level (default {log_level})")


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("py4j", "urllib3", "sentence_transformers", "transformers", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_log_redaction()  # secrets in conf values and URIs never reach the log (listing_dedup/redact.py)


def under_spark_submit() -> bool:
    """True when spark-submit launched this driver (it owns master and resources then)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def build_spark(cfg: SparkConf):
    """The job's one SparkSession. With plain ``python`` it is a local session from the conf
    profile; under spark-submit the submitted settings win and ``spark.conf`` only adds."""
    if cfg.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if not under_spark_submit():
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    if not under_spark_submit():  # spark-submit's --name (e.g. the DAG's listing-dedup-<ds>) wins
        builder = builder.master(cfg.master).appName(cfg.app_name)
    builder = builder.config("spark.sql.execution.arrow.pyspark.enabled", "true")
    for k, v in cfg.conf.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if cfg.master.startswith("local") and not under_spark_submit():
        _quiet_task_failures(spark)
    if cfg.checkpoint_dir:  # reliable checkpoints (components, guard, re-ranker rounds): survive a lost executor
        spark.sparkContext.setCheckpointDir(cfg.checkpoint_dir)
    return spark


def _quiet_task_failures(spark) -> None:
    """In local mode the executor runs in the driver's JVM, and logs each failed task's Java
    stack trace on the job's stderr (then the scheduler once more): the driver receives the
    same failure and reports it (one line; a runtime failure's whole cause chain in its logged
    traceback), so bad input stays one line on stderr, not 90 lines of Java."""
    try:
        jvm = spark.sparkContext._jvm
        level = jvm.org.apache.logging.log4j.Level.FATAL
        for name in ("org.apache.spark.executor.Executor", "org.apache.spark.scheduler.TaskSetManager"):
            jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, level)
    except Exception:  # noqa: BLE001 - another logging backend: the logs stay as they are
        log.debug("could not quiet the executor's task-failure logs", exc_info=True)


def run_cli(main: Callable[[], int | None]) -> int:
    """Run ``main`` and map its outcome to an exit code."""
    try:
        rc = main()
        return 0 if rc is None else int(rc)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the last line of defence: exit 1 with the traceback logged
        # a project error, as raised or inside a failed Spark job's exception (ingest/failures.py)
        err = e if isinstance(e, DedupError) else job_failure(e)
        if err is None:
            log.exception("job failed")
            print(f"error: {type(e).__name__}: {redact_text(first_line(e))}", file=sys.stderr)
            return 1
        if err.exit_code != 2:
            log.exception("job failed")
        print(f"error: {redact_text(_one_line(str(err)))}", file=sys.stderr)
        return err.exit_code


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
