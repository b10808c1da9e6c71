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
fails the DAG run when they are inconsistent (see lib/listing_dedup/sink/verify.py).

Settings (Airflow Variables; the default applies when a Variable is not set):

==================================  ==============================================================
Variable                            default / meaning
==================================  ==============================================================
listing_dedup_artifacts             ``hdfs:///apps/listing_dedup`` -- where ``make package`` output
                                    was uploaded: dedup_listings.py, listing_dedup_jobs.zip,
                                    listing_dedup_env.tar.gz, cluster.yaml
listing_dedup_conf                  ``<artifacts>/cluster.yaml`` -- the conf profile (shipped
                                    with ``--files ...#profile.yaml``)
listing_dedup_model_archives        empty -- extra ``uri#name`` archives, comma-separated, unpacked
                                    as ``./name`` in every container: a fine-tuned text model
                                    directory or a re-ranker directory (tar.gz), named in the
                                    profile as ``embed.text.model: name`` / ``rerank.model: name``
listing_dedup_input_root            ``hdfs:///data/listings`` -- input of a date:
                                    ``<root>/run_date=<ds>``
listing_dedup_warehouse             ``hdfs:///warehouse/listing_dedup`` -- the Delta tables
listing_dedup_executors             ``4``     spark.executor.instances
listing_dedup_executor_cores        ``8``     spark.executor.cores (= spark.task.cpus: one task per GPU)
listing_dedup_executor_memory       ``24g``   spark.executor.memory
listing_dedup_executor_gpus         ``1``     spark.executor.resource.gpu.amount
listing_dedup_task_gpus             ``1``     spark.task.resource.gpu.amount
listing_dedup_gpu_discovery_script  ``/opt/spark/examples/src/main/scripts/getGpusResources.sh``
==================================  ==============================================================

The Spark connection is ``spark_default`` (set its host to ``yarn``). Runs are scheduled
daily with ``catchup=True``: unpause the DAG and Airflow runs every missed date from
``start_date`` in order (``max_active_runs=1``); or backfill a range explicitly with
``airflow backfill create --dag-id listing_dedup_nightly --from-date D1 --to-date D2``.

This file imports only Airflow (no pyspark, no project code): it parses in any Airflow 3
``dags/`` folder where ``apache-airflow-providers-apache-spark`` is installed.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG

DAG_ID = "listing_dedup_nightly"
START_DATE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)  # noqa: UP017 (python 3.10 workers)

DEFAULTS = {
    "artifacts": "hdfs:///apps/listing_dedup",
    "conf": "",  # empty: <artifacts>/cluster.yaml
    "model_archives": "",  # empty: only the packed virtualenv
    "input_root": "hdfs:///data/listings",
    "warehouse": "hdfs:///warehouse/listing_dedup",
    "executors": "4",
    "executor_cores": "8",
    "executor_memory": "24g",
    "executor_gpus": "1",
    "task_gpus": "1",
    "gpu_discovery_script": "/opt/spark/examples/src/main/scripts/getGpusResources.sh",
}


def var(name: str) -> str:
    """A Jinja expression reading Variable ``listing_dedup_<name>`` (rendered at run time,
    never at parse time, so parsing the DAG touches no database)."""
    return "{{ var.value.get('listing_dedup_" + name + "', '" + DEFAULTS[name] + "') }}"


ARTIFACTS = var("artifacts")
CONF_PROFILE = (
    "{{ var.value.get('listing_dedup_conf', '') or var.value.get('listing_dedup_artifacts', '"
    + DEFAULTS["artifacts"]
    + "') ~ '/cluster.yaml' }}"
)
WAREHOUSE = var("warehouse")
MODEL_ARCHIVES = (
    "{{ (',' ~ var.value.get('listing_dedup_model_archives', '')) "
    "if var.value.get('listing_dedup_model_archives', '') else '' }}"
)

# the packed virtualenv is unpacked as ./environment in every container (driver and executors)
PYTHON_ENV_CONF = {
    "spark.archives": f"{ARTIFACTS}/listing_dedup_env.tar.gz#environment{MODEL_ARCHIVES}",
    "spark.pyspark.python": "./environment/bin/python",
    "spark.pyspark.driver.python": "./environment/bin/python",
    "spark.yarn.appMasterEnv.PYSPARK_PYTHON": "./environment/bin/python",
    "spark.executorEnv.HF_HUB_OFFLINE": "1",
    "spark.yarn.appMasterEnv.HF_HUB_OFFLINE": "1",
}

COMMON = {
    "conn_id": "spark_default",
    "deploy_mode": "cluster",
    "application": f"{ARTIFACTS}/dedup_listings.py",
    "py_files": f"{ARTIFACTS}/listing_dedup_jobs.zip",
    "files": f"{CONF_PROFILE}#profile.yaml",
}

default_args = {
    "owner": "listing-dedup",
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
    dedup = SparkSubmitOperator(
        task_id="dedup",
        name="listing-dedup-{{ ds }}",
        application_args=[
            "--conf",
            "profile.yaml",
            "--input",
            var("input_root") + "/run_date={{ ds }}",
            "--run-date",
            "{{ ds }}",
            "--warehouse",
            WAREHOUSE,
        ],
        conf={
            **PYTHON_ENV_CONF,
            "spark.executor.instances": var("executors"),
            "spark.executor.cores": var("executor_cores"),
            "spark.task.cpus": var("executor_cores"),
            "spark.executor.memory": var("executor_memory"),
            "spark.executor.resource.gpu.amount": var("executor_gpus"),
            "spark.task.resource.gpu.amount": var("task_gpus"),
            "spark.executor.resource.gpu.discoveryScript": var("gpu_discovery_script"),
            "spark.task.maxFailures": "4",
        },
        **COMMON,
    )

    verify = SparkSubmitOperator(
        task_id="verify",
        name="listing-dedup-verify-{{ ds }}",
        application_args=[
            "--verify-only",
            "--conf",
            "profile.yaml",
            "--run-date",
            "{{ ds }}",
            "--warehouse",
            WAREHOUSE,
        ],
        conf={**PYTHON_ENV_CONF, "spark.executor.instances": "1", "spark.dynamicAllocation.enabled": "false"},
        retries=1,
        **COMMON,
    )

    dedup >> verify
