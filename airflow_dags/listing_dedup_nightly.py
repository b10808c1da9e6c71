"""Nightly duplicate-listing detection: one Spark application per day, then a check.

    dedup   (SparkSubmitOperator, GPUs)   jobs/dedup_listings.py --run-date {{ ds }}
      └─▶ verify (SparkSubmitOperator, 1 small driver)   jobs/dedup_listings.py --verify-only --run-date {{ ds }}

Why two tasks and not one per stage (embed -> match -> cluster -> publish): the stages hand
each other Spark DataFrames that live on the executors (embeddings, neighbour lists), and
all four tables are staged before any is committed, so a failure anywhere leaves every table
at its previous version. Separate applications would have to write and re-read the
embeddings and neighbour lists between tasks and would lose that all-or-nothing commit; a
retry of the one ``dedup`` task redoes the date from its input, idempotently (the date's
partitions are replaced, never appended). ``verify`` reads the committed tables back and
fails the DAG run when they are inconsistent (see lib/listing_dedup/sink/verify.py). The
reviewers' loop needs no task of its own: the ``dedup`` task honours the ``decisions`` table and,
with ``review.nightly`` in the profile (conf/cluster.yaml), writes the night's ``review_queue``
after its commit from the frames it holds (docs/review.md).

Settings (Airflow Variables; the default applies when a Variable is not set). The defaults are
YARN's: cluster deploy mode, the packed virtualenv shipped with ``spark.archives``, one GPU per
executor and per task. A setting that renders empty is not passed to spark-submit at all.

===================================  =============================================================
Variable                             default / meaning
===================================  =============================================================
*where Spark runs*
listing_dedup_conn_id                ``spark_default`` -- the Spark connection; its host is the
                                     master: ``yarn``, ``spark://HOST:7077``, ``k8s://https://HOST``
listing_dedup_deploy_mode            ``cluster`` -- or ``client`` (the driver runs where Airflow
                                     runs the task; Spark's standalone master accepts Python
                                     applications in client mode only). In client mode the conf
                                     profile is read from ``listing_dedup_conf`` directly, so it
                                     and the artifacts must be paths on the Airflow worker
listing_dedup_python_env             ``archive`` -- how Python reaches the executors: ``archive``
                                     ships ``<artifacts>/listing_dedup_env.tar.gz`` (``make
                                     package-env``) unpacked as ``./environment``;
                                     ``preinstalled``: an interpreter already on every node / in
                                     the container image (``listing_dedup_python``)
listing_dedup_python                 empty -- the executors' interpreter (spark.pyspark.python);
                                     empty: ``./environment/bin/python`` (archive) or ``python3``
listing_dedup_driver_python          empty -- the driver's (spark.pyspark.driver.python); empty:
                                     ``listing_dedup_python``. Client mode with ``archive`` needs
                                     it: the archive is unpacked in containers only
listing_dedup_k8s_image              empty -- spark.kubernetes.container.image (an image with
                                     Spark, the runtime deps and the project; ``preinstalled``)
listing_dedup_k8s_namespace          empty -- spark.kubernetes.namespace
listing_dedup_k8s_service_account    empty -- spark.kubernetes.authenticate.driver.serviceAccountName
listing_dedup_spark_conf             ``{}`` -- a JSON object of extra Spark settings for both tasks
                                     (e.g. ``{"spark.cores.max": "8"}`` on a standalone cluster);
                                     they win over the settings above
*what runs*
listing_dedup_artifacts              ``hdfs:///apps/listing_dedup`` -- where ``make package`` output
                                     was uploaded: dedup_listings.py, listing_dedup_jobs.zip,
                                     listing_dedup_env.tar.gz, cluster.yaml
listing_dedup_conf                   ``<artifacts>/cluster.yaml`` -- the conf profile (in cluster
                                     mode shipped with ``--files ...#profile.yaml``)
listing_dedup_model_archives         empty -- extra ``uri#name`` archives, comma-separated, unpacked
                                     as ``./name`` in every container: a fine-tuned text model
                                     directory or a re-ranker directory (tar.gz), named in the
                                     profile as ``embed.text.model: name`` / ``rerank.model: name``
listing_dedup_input_root             ``hdfs:///data/listings`` -- input of a date:
                                     ``<root>/run_date=<ds>``
listing_dedup_warehouse              ``hdfs:///warehouse/listing_dedup`` -- the Delta tables
*how much*
listing_dedup_executors              ``4``     spark.executor.instances (YARN, Kubernetes)
listing_dedup_executor_cores         ``8``     spark.executor.cores
listing_dedup_task_cpus              empty     spark.task.cpus; empty: the executor's cores (one
                                               task per executor: per GPU)
listing_dedup_executor_memory        ``24g``   spark.executor.memory
listing_dedup_executor_gpus          ``1``     spark.executor.resource.gpu.amount; ``0``: no GPU
                                               resource requested (nor a discovery script)
listing_dedup_task_gpus              ``1``     spark.task.resource.gpu.amount; ``0``: none
listing_dedup_gpu_discovery_script   ``/opt/spark/examples/src/main/scripts/getGpusResources.sh``
listing_dedup_fail_on_health         ``false`` ``true``: the verify task also fails (an alert) when the
                                               run's health check warned (``--fail-on-health``)
===================================  =============================================================

A bad ``deploy_mode``, ``python_env``, GPU amount or ``spark_conf`` fails the task before
spark-submit starts, with a message naming the Variable. README.md ("Airflow") shows three
recipes: YARN with the packed env, Kubernetes with an image, a standalone cluster; the test
suite runs this DAG with ``airflow dags test`` against a loopback standalone cluster
(tests/test_dag_run.py).

Runs are scheduled daily with ``catchup=True``: unpause the DAG and Airflow runs every missed
date from ``start_date`` in order (``max_active_runs=1``); or backfill a range explicitly with
``airflow backfill create --dag-id listing_dedup_nightly --from-date D1 --to-date D2``. A date
waits for the previous date's tasks to succeed (``depends_on_past``): each night continues the
previous night's group ids and, with ``incremental.enabled`` in the conf profile, its match state
(docs/incremental.md), so the catch-up runs date after date incrementally, and a failed date
stops the dates after it until it is rerun.

This file imports only Airflow (no pyspark, no project code): it parses in any Airflow 3
``dags/`` folder where ``apache-airflow-providers-apache-spark`` is installed.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG

DAG_ID = "listing_dedup_nightly"
START_DATE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)  # noqa: UP017 (python 3.10 workers)
PREFIX = "listing_dedup_"

DEFAULTS = {
    "conn_id": "spark_default",
    "deploy_mode": "cluster",
    "python_env": "archive",
    "python": "",  # empty: ./environment/bin/python (archive) or python3 (preinstalled)
    "driver_python": "",  # empty: the executors' interpreter
    "k8s_image": "",
    "k8s_namespace": "",
    "k8s_service_account": "",
    "spark_conf": "{}",
    "artifacts": "hdfs:///apps/listing_dedup",
    "conf": "",  # empty: <artifacts>/cluster.yaml
    "model_archives": "",  # empty: only the packed virtualenv
    "input_root": "hdfs:///data/listings",
    "warehouse": "hdfs:///warehouse/listing_dedup",
    "executors": "4",
    "executor_cores": "8",
    "task_cpus": "",  # empty: executor_cores
    "executor_memory": "24g",
    "executor_gpus": "1",
    "task_gpus": "1",
    "gpu_discovery_script": "/opt/spark/examples/src/main/scripts/getGpusResources.sh",
    "fail_on_health": "false",
}
DEPLOY_MODES = ("cluster", "client")
PYTHON_ENVS = ("archive", "preinstalled")


def v(name: str) -> str:
    """The Jinja expression (no braces) for Variable ``listing_dedup_<name>`` or its default.
    Rendered at run time, never at parse time, so parsing the DAG touches no database."""
    return f"var.value.get('{PREFIX}{name}', '{DEFAULTS[name]}')"


def var(name: str) -> str:
    """A template that renders Variable ``listing_dedup_<name>`` (or its default)."""
    return "{{ " + v(name) + " }}"


def unless_zero(name: str, value: str) -> str:
    """A template rendering ``value`` unless Variable ``name`` is 0 (then empty: not passed)."""
    return "{{ (" + value + ") if (" + v(name) + ") | float(0) > 0 else '' }}"


ARTIFACTS = var("artifacts")
CLUSTER_MODE = f"{v('deploy_mode')} == 'cluster'"
CONF_PATH = f"({v('conf')} or {v('artifacts')} ~ '/cluster.yaml')"
# cluster mode: the profile is shipped with --files and read from the driver container's folder;
# client mode: the driver runs here and reads the file itself
CONF_ARG = "{{ 'profile.yaml' if " + CLUSTER_MODE + " else " + CONF_PATH + " }}"
CONF_FILES = "{{ (" + CONF_PATH + " ~ '#profile.yaml') if " + CLUSTER_MODE + " else '' }}"
ARCHIVE = f"{v('python_env')} == 'archive'"
PYTHON = f"({v('python')} or ('./environment/bin/python' if {ARCHIVE} else 'python3'))"
# the packed virtualenv (archive) and the model directories, unpacked in every container
ARCHIVES = (
    "{{ [("
    + v("artifacts")
    + " ~ '/listing_dedup_env.tar.gz#environment') if "
    + ARCHIVE
    + " else '', "
    + v("model_archives")
    + "] | select | join(',') }}"
)

# how Python and the code reach the driver and the executors, and where the containers come from
DEPLOYMENT_CONF = {
    "spark.archives": ARCHIVES,
    "spark.pyspark.python": "{{ " + PYTHON + " }}",
    "spark.pyspark.driver.python": "{{ " + v("driver_python") + " or " + PYTHON + " }}",
    "spark.yarn.appMasterEnv.PYSPARK_PYTHON": "{{ " + PYTHON + " }}",
    "spark.executorEnv.HF_HUB_OFFLINE": "1",
    "spark.yarn.appMasterEnv.HF_HUB_OFFLINE": "1",
    "spark.kubernetes.driverEnv.HF_HUB_OFFLINE": "1",
    "spark.kubernetes.container.image": var("k8s_image"),
    "spark.kubernetes.namespace": var("k8s_namespace"),
    "spark.kubernetes.authenticate.driver.serviceAccountName": var("k8s_service_account"),
}

COMMON = {
    "application": f"{ARTIFACTS}/dedup_listings.py",
    "py_files": f"{ARTIFACTS}/listing_dedup_jobs.zip",
    "files": CONF_FILES,
}


class ListingDedupSubmit(SparkSubmitOperator):
    """SparkSubmitOperator whose connection and deploy mode come from Variables too, whose conf
    gets ``listing_dedup_spark_conf`` on top, and whose empty settings are left out (a GPU amount
    of 0, no image, no archives). The Variables are checked when the task renders, before
    spark-submit starts."""

    template_fields = (*SparkSubmitOperator.template_fields, "_conn_id", "_deploy_mode", "extra_conf")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(conn_id=var("conn_id"), deploy_mode=var("deploy_mode"), **kwargs)
        self.extra_conf = var("spark_conf")

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        get = context["var"]["value"].get

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"Airflow Variable {PREFIX}{name}={get(PREFIX + name, DEFAULTS[name])!r}: {why}")

        if self._deploy_mode not in DEPLOY_MODES:
            raise bad("deploy_mode", f"must be one of {', '.join(DEPLOY_MODES)}")
        if get(PREFIX + "python_env", DEFAULTS["python_env"]) not in PYTHON_ENVS:
            raise bad("python_env", f"must be one of {', '.join(PYTHON_ENVS)}")
        for name in ("executor_gpus", "task_gpus"):
            try:
                ok = float(get(PREFIX + name, DEFAULTS[name])) >= 0
            except ValueError:
                ok = False
            if not ok:
                raise bad(name, "must be a number >= 0 (0: no GPU requested)")
        try:
            extra = json.loads(self.extra_conf or "{}")
        except ValueError as e:
            raise bad("spark_conf", f"not JSON ({e})") from None
        if not isinstance(extra, dict):
            raise bad("spark_conf", 'must be a JSON object {"spark.key": "value", ...}')
        if get(PREFIX + "fail_on_health", DEFAULTS["fail_on_health"]).lower() not in ("true", "false"):
            raise bad("fail_on_health", "must be true or false")
        self.application_args = [a for a in (self.application_args or []) if a != ""]  # a switch left off
        conf = {**(self.conf or {}), **{str(k): str(val) for k, val in extra.items()}}
        self.conf = {k: val for k, val in conf.items() if val not in ("", None)}


default_args = {
    "owner": "listing-dedup",
    "depends_on_past": True,  # a night continues the previous night's ids and match state
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=10),
    "retry_exponential_backoff": True,  # 10 min, then 20 min
    "max_retry_delay": dt.timedelta(hours=1),
    "execution_timeout": dt.timedelta(hours=6),
}

with DAG(
    dag_id=DAG_ID,
    description="Find duplicate product listings for each day and write the Delta tables",
    schedule="@daily",
    start_date=START_DATE,
    catchup=True,  # missed dates (and a later start_date change) are run, oldest first
    max_active_runs=1,
    default_args=default_args,
    tags=["listing-dedup", "spark"],
    doc_md=__doc__,
) as dag:
    dedup = ListingDedupSubmit(
        task_id="dedup",
        name="listing-dedup-{{ ds }}",
        application_args=[
            "--conf",
            CONF_ARG,
            "--input",
            var("input_root") + "/run_date={{ ds }}",
            "--run-date",
            "{{ ds }}",
            "--warehouse",
            var("warehouse"),
        ],
        conf={
            **DEPLOYMENT_CONF,
            "spark.executor.instances": var("executors"),
            "spark.executor.cores": var("executor_cores"),
            "spark.task.cpus": "{{ " + v("task_cpus") + " or " + v("executor_cores") + " }}",
            "spark.executor.memory": var("executor_memory"),
            "spark.executor.resource.gpu.amount": unless_zero("executor_gpus", v("executor_gpus")),
            "spark.task.resource.gpu.amount": unless_zero("task_gpus", v("task_gpus")),
            "spark.executor.resource.gpu.discoveryScript": unless_zero("executor_gpus", v("gpu_discovery_script")),
            "spark.task.maxFailures": "4",
        },
        **COMMON,
    )

    verify = ListingDedupSubmit(
        task_id="verify",
        name="listing-dedup-verify-{{ ds }}",
        application_args=[
            "--verify-only",
            "--conf",
            CONF_ARG,
            "--run-date",
            "{{ ds }}",
            "--warehouse",
            var("warehouse"),
            "{{ '--fail-on-health' if (" + v("fail_on_health") + ") | lower == 'true' else '' }}",
        ],
        conf={**DEPLOYMENT_CONF, "spark.executor.instances": "1", "spark.dynamicAllocation.enabled": "false"},
        retries=1,
        **COMMON,
    )

    dedup >> verify
