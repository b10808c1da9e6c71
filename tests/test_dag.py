"""The nightly Airflow DAG: parses in a bare Airflow 3 ``dags/`` folder, task order, and the
spark-submit command it renders for a date.

Airflow runs in a subprocess with its own AIRFLOW_HOME (a temp folder), as a user's Airflow
would, so it neither configures logging in the test process nor needs a database:
``DagBag`` parses the file; templates are rendered with a hand-made context and the
Variables come from ``AIRFLOW_VAR_*`` environment variables (Airflow's env secrets backend).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_module

# the airflow extra of setup.py (`make test` installs it): a skip here, a failure under CI
require_module("airflow.sdk", "Airflow 3 is not installed (pip install '.[airflow]')")

REPO = Path(__file__).resolve().parents[1]
DAG_FILE = REPO / "airflow_dags" / "listing_dedup_nightly.py"

PROBE = r"""
import copy, json, os, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.execution_time.context import VariableAccessor

bag = DagBag(dag_folder=sys.argv[1])
out = {"import_errors": {str(k): str(v) for k, v in bag.import_errors.items()}, "dag_ids": sorted(bag.dag_ids)}
heavy = ("pyspark", "listing_dedup", "torch", "faiss", "deltalake")
out["heavy_modules"] = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
dag = bag.dags.get("listing_dedup_nightly")
if dag is not None:
    out["tasks"] = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    out["catchup"] = dag.catchup
    out["schedule"] = str(dag.schedule)
    out["max_active_runs"] = dag.max_active_runs
    out["retries"] = {t.task_id: t.retries for t in dag.tasks}
    out["backoff"] = {t.task_id: t.retry_exponential_backoff for t in dag.tasks}
    out["operators"] = {t.task_id: type(t).__name__ for t in dag.tasks}
    ctx = {"ds": sys.argv[2], "var": {"value": VariableAccessor(False), "json": VariableAccessor(True)}, "params": {}}
    out["rendered"] = {}
    for t in dag.tasks:
        r = copy.deepcopy(t)
        r.render_template_fields(ctx)
        out["rendered"][t.task_id] = {
            "application": r.application, "application_args": r.application_args, "conf": r.conf,
            "py_files": r.py_files, "files": r.files, "name": r.name,
            "command": r._get_hook()._build_spark_submit_command(r.application),
        }
print("PROBE " + json.dumps(out))
"""


def probe(dags_folder: Path, home: Path, ds: str, variables: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_VAR_", "AIRFLOW_CONN_"))}
    env.pop("PYTHONPATH", None)
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW_CONN_SPARK_DEFAULT=json.dumps({"conn_type": "spark", "host": "yarn"}),
        **{f"AIRFLOW_VAR_{k.upper()}": v for k, v in variables.items()},
    )
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(dags_folder), ds],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    line = [x for x in r.stdout.splitlines() if x.startswith("PROBE ")][-1]
    return json.loads(line[len("PROBE ") :])


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    """The DAG file copied alone into a fresh dags/ folder, as a new user would."""
    home = tmp_path_factory.mktemp("airflow_home")
    dags = home / "dags"
    dags.mkdir()
    shutil.copy(DAG_FILE, dags / DAG_FILE.name)
    defaults = probe(dags, home, "2026-02-03", {})
    with_vars = probe(
        dags,
        home,
        "2026-02-04",
        {
            "listing_dedup_warehouse": "s3://lake/dedup-wh",
            "listing_dedup_input_root": "s3://lake/listings",
            "listing_dedup_executor_gpus": "2",
            "listing_dedup_conf": "s3://lake/conf/prod.yaml",
            "listing_dedup_model_archives": "s3://lake/models/e5_full.tgz#text_model,s3://lake/models/rr.tgz#rr",
        },
    )
    return defaults, with_vars


@pytest.mark.slow
def test_dag_parses_without_errors_or_heavy_imports(parsed):
    p, _ = parsed
    assert p["import_errors"] == {}
    assert p["dag_ids"] == ["listing_dedup_nightly"]
    assert p["heavy_modules"] == []  # the DAG file imports only Airflow


@pytest.mark.slow
def test_task_order_schedule_and_retries(parsed):
    p, _ = parsed
    assert p["tasks"] == {"dedup": ["verify"], "verify": []}
    assert p["operators"] == {"dedup": "SparkSubmitOperator", "verify": "SparkSubmitOperator"}
    assert (p["catchup"], p["schedule"], p["max_active_runs"]) == (True, "@daily", 1)
    assert p["retries"] == {"dedup": 2, "verify": 1}
    assert p["backoff"] == {"dedup": True, "verify": True}


@pytest.mark.slow
def test_rendered_arguments_hold_the_date_and_the_warehouse(parsed):
    p, _ = parsed
    dedup = p["rendered"]["dedup"]
    assert dedup["application_args"] == [
        "--conf",
        "profile.yaml",
        "--input",
        "hdfs:///data/listings/run_date=2026-02-03",
        "--run-date",
        "2026-02-03",
        "--warehouse",
        "hdfs:///warehouse/listing_dedup",
    ]
    assert dedup["application"] == "hdfs:///apps/listing_dedup/dedup_listings.py"
    assert dedup["py_files"] == "hdfs:///apps/listing_dedup/listing_dedup_jobs.zip"
    assert dedup["files"] == "hdfs:///apps/listing_dedup/cluster.yaml#profile.yaml"
    conf = dedup["conf"]
    assert conf["spark.archives"] == "hdfs:///apps/listing_dedup/listing_dedup_env.tar.gz#environment"
    assert conf["spark.pyspark.python"] == "./environment/bin/python"
    assert (conf["spark.executor.resource.gpu.amount"], conf["spark.task.resource.gpu.amount"]) == ("1", "1")
    verify = p["rendered"]["verify"]
    assert verify["application_args"] == [
        "--verify-only",
        "--conf",
        "profile.yaml",
        "--run-date",
        "2026-02-03",
        "--warehouse",
        "hdfs:///warehouse/listing_dedup",
    ]
    assert "spark.executor.resource.gpu.amount" not in verify["conf"]


@pytest.mark.slow
def test_variables_override_defaults_and_reach_spark_submit(parsed):
    _, p = parsed
    cmd = p["rendered"]["dedup"]["command"]
    assert cmd[:3] == ["spark-submit", "--master", "yarn"]
    assert cmd[cmd.index("--deploy-mode") + 1] == "cluster"
    assert "spark.executor.resource.gpu.amount=2" in cmd
    assert cmd[cmd.index("--files") + 1] == "s3://lake/conf/prod.yaml#profile.yaml"
    # model directories ride along with the packed virtualenv, for the driver and every executor
    assert (
        "spark.archives=hdfs:///apps/listing_dedup/listing_dedup_env.tar.gz#environment,"
        "s3://lake/models/e5_full.tgz#text_model,s3://lake/models/rr.tgz#rr"
    ) in cmd
    assert p["rendered"]["verify"]["conf"]["spark.archives"] == p["rendered"]["dedup"]["conf"]["spark.archives"]
    app = cmd.index("hdfs:///apps/listing_dedup/dedup_listings.py")
    assert cmd[app + 1 :] == [
        "--conf",
        "profile.yaml",
        "--input",
        "s3://lake/listings/run_date=2026-02-04",
        "--run-date",
        "2026-02-04",
        "--warehouse",
        "s3://lake/dedup-wh",
    ]
    assert p["rendered"]["dedup"]["name"] == "listing-dedup-2026-02-04"
