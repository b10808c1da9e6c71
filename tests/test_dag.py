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
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
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
    out["depends_on_past"] = {t.task_id: t.depends_on_past for t in dag.tasks}
    out["backoff"] = {t.task_id: t.retry_exponential_backoff for t in dag.tasks}
    out["operators"] = {t.task_id: isinstance(t, SparkSubmitOperator) for t in dag.tasks}
    out["cases"] = []
    for ds, variables in json.loads(sys.argv[2]):
        # the env secrets backend reads os.environ on every lookup: one case's Variables at a time
        for k in [k for k in os.environ if k.startswith("AIRFLOW_VAR_")]:
            del os.environ[k]
        os.environ.update({"AIRFLOW_VAR_" + k.upper(): v for k, v in variables.items()})
        ctx = {"ds": ds, "var": {"value": VariableAccessor(False), "json": VariableAccessor(True)}, "params": {}}
        case = {}
        for t in dag.tasks:
            r = copy.deepcopy(t)
            try:
                r.render_template_fields(ctx)
            except ValueError as e:
                case[t.task_id] = {"error": str(e)}
                continue
            case[t.task_id] = {
                "application": r.application, "application_args": r.application_args, "conf": r.conf,
                "py_files": r.py_files, "files": r.files, "name": r.name,
                "conn_id": r._conn_id, "deploy_mode": r._deploy_mode,
            }
            try:  # the provider's hook needs apache-airflow-providers-cncf-kubernetes for a k8s:// master
                case[t.task_id]["command"] = r._get_hook()._build_spark_submit_command(r.application)
            except (RuntimeError, NameError) as e:  # NameError: provider 6.3's hook without that package
                case[t.task_id]["command_error"] = repr(e)
        out["cases"].append(case)
print("PROBE " + json.dumps(out))
"""


def probe(dags_folder: Path, home: Path, cases: list[tuple[str, dict[str, str]]], connections: dict) -> dict:
    """Parse the DAG once and render both tasks for each (ds, Variables) case; ``connections``:
    conn_id -> Airflow connection (JSON form, as AIRFLOW_CONN_<ID>)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_VAR_", "AIRFLOW_CONN_"))}
    env.pop("PYTHONPATH", None)
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        **{f"AIRFLOW_CONN_{k.upper()}": json.dumps(c) for k, c in connections.items()},
    )
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(dags_folder), json.dumps(cases)],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    line = [x for x in r.stdout.splitlines() if x.startswith("PROBE ")][-1]
    return json.loads(line[len("PROBE ") :])


CONNECTIONS = {
    "spark_default": {"conn_type": "spark", "host": "yarn"},
    "spark_k8s": {"conn_type": "spark", "host": "k8s://https://k8s.example:6443"},
    "spark_standalone": {"conn_type": "spark", "host": "spark://10.0.0.5", "port": 7077},
}
# the README's three recipes (Variables as README.md "Airflow" sets them)
K8S = {
    "listing_dedup_conn_id": "spark_k8s",
    "listing_dedup_python_env": "preinstalled",
    "listing_dedup_python": "/opt/venv/bin/python",
    "listing_dedup_k8s_image": "registry.example/listing-dedup:1.4",
    "listing_dedup_k8s_namespace": "dedup",
    "listing_dedup_k8s_service_account": "spark",
    "listing_dedup_artifacts": "local:///opt/listing_dedup",
    "listing_dedup_input_root": "s3a://lake/listings",
    "listing_dedup_warehouse": "s3a://lake/dedup-wh",
}
STANDALONE = {
    "listing_dedup_conn_id": "spark_standalone",
    "listing_dedup_deploy_mode": "client",
    "listing_dedup_python_env": "preinstalled",
    "listing_dedup_python": "/srv/listing-dedup/.venv/bin/python",
    "listing_dedup_artifacts": "/srv/listing-dedup/dist",
    "listing_dedup_conf": "/srv/listing-dedup/dist/local.yaml",
    "listing_dedup_input_root": "/data/listings",
    "listing_dedup_warehouse": "/data/warehouse",
    "listing_dedup_executor_cores": "2",
    "listing_dedup_executor_memory": "3g",
    "listing_dedup_executor_gpus": "0",
    "listing_dedup_task_gpus": "0",
    "listing_dedup_spark_conf": '{"spark.cores.max": "4"}',
}


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    """The DAG file copied alone into a fresh dags/ folder, as a new user would; rendered for the
    defaults (YARN), Variables overriding them, the Kubernetes and standalone recipes, and bad
    Variables."""
    home = tmp_path_factory.mktemp("airflow_home")
    dags = home / "dags"
    dags.mkdir()
    shutil.copy(DAG_FILE, dags / DAG_FILE.name)
    with_vars = {
        "listing_dedup_warehouse": "s3://lake/dedup-wh",
        "listing_dedup_input_root": "s3://lake/listings",
        "listing_dedup_executor_gpus": "2",
        "listing_dedup_conf": "s3://lake/conf/prod.yaml",
        "listing_dedup_model_archives": "s3://lake/models/e5_full.tgz#text_model,s3://lake/models/rr.tgz#rr",
        "listing_dedup_fail_on_health": "True",
    }
    bad = [
        {"listing_dedup_deploy_mode": "local"},
        {"listing_dedup_python_env": "conda"},
        {"listing_dedup_executor_gpus": "one"},
        {"listing_dedup_spark_conf": "spark.cores.max=4"},
        {"listing_dedup_fail_on_health": "maybe"},
    ]
    cases = [("2026-02-03", {}), ("2026-02-04", with_vars), ("2026-02-05", K8S), ("2026-02-06", STANDALONE)]
    p = probe(dags, home, cases + [("2026-02-07", b) for b in bad], CONNECTIONS)
    p["defaults"], p["with_vars"], p["k8s"], p["standalone"], *p["bad"] = p.pop("cases")
    return p


def submit_args(cmd: list[str], flag: str) -> list[str]:
    """Every value given to ``flag`` in a spark-submit command line."""
    return [cmd[i + 1] for i, x in enumerate(cmd) if x == flag]


def spark_conf(cmd: list[str]) -> dict[str, str]:
    return dict(c.split("=", 1) for c in submit_args(cmd, "--conf") if "=" in c and c.startswith("spark."))


@pytest.mark.slow
def test_dag_parses_without_errors_or_heavy_imports(parsed):
    p = parsed
    assert p["import_errors"] == {}
    assert p["dag_ids"] == ["listing_dedup_nightly"]
    assert p["heavy_modules"] == []  # the DAG file imports only Airflow


@pytest.mark.slow
def test_task_order_schedule_and_retries(parsed):
    p = parsed
    assert p["tasks"] == {"dedup": ["verify"], "verify": []}
    assert p["operators"] == {"dedup": True, "verify": True}  # SparkSubmitOperators
    assert (p["catchup"], p["schedule"], p["max_active_runs"]) == (True, "@daily", 1)
    assert p["retries"] == {"dedup": 2, "verify": 1}
    assert p["depends_on_past"] == {"dedup": True, "verify": True}  # the catch-up runs night after night
    assert p["backoff"] == {"dedup": True, "verify": True}


@pytest.mark.slow
def test_rendered_arguments_hold_the_date_and_the_warehouse(parsed):
    """The defaults: YARN, cluster mode, the packed virtualenv, one GPU per executor and task."""
    dedup = parsed["defaults"]["dedup"]
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
    assert conf["spark.pyspark.driver.python"] == "./environment/bin/python"
    assert conf["spark.yarn.appMasterEnv.PYSPARK_PYTHON"] == "./environment/bin/python"
    assert (conf["spark.executor.resource.gpu.amount"], conf["spark.task.resource.gpu.amount"]) == ("1", "1")
    assert conf["spark.executor.resource.gpu.discoveryScript"].endswith("getGpusResources.sh")
    assert (conf["spark.executor.instances"], conf["spark.executor.cores"], conf["spark.task.cpus"]) == ("4", "8", "8")
    assert not [k for k in conf if k.startswith("spark.kubernetes.") and "driverEnv" not in k]  # no image: not sent
    cmd = dedup["command"]
    assert cmd[:5] == ["spark-submit", "--master", "yarn", "--conf", cmd[4]]
    assert submit_args(cmd, "--deploy-mode") == ["cluster"]
    assert "" not in spark_conf(cmd).values()  # an empty setting is left out, never sent empty
    verify = parsed["defaults"]["verify"]
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
    assert verify["conf"]["spark.archives"] == conf["spark.archives"]


@pytest.mark.slow
def test_variables_override_defaults_and_reach_spark_submit(parsed):
    p = parsed["with_vars"]
    cmd = p["dedup"]["command"]
    assert cmd[:3] == ["spark-submit", "--master", "yarn"]
    assert cmd[cmd.index("--deploy-mode") + 1] == "cluster"
    assert "spark.executor.resource.gpu.amount=2" in cmd
    assert cmd[cmd.index("--files") + 1] == "s3://lake/conf/prod.yaml#profile.yaml"
    # model directories ride along with the packed virtualenv, for the driver and every executor
    assert (
        "spark.archives=hdfs:///apps/listing_dedup/listing_dedup_env.tar.gz#environment,"
        "s3://lake/models/e5_full.tgz#text_model,s3://lake/models/rr.tgz#rr"
    ) in cmd
    assert p["verify"]["conf"]["spark.archives"] == p["dedup"]["conf"]["spark.archives"]
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
    assert p["dedup"]["name"] == "listing-dedup-2026-02-04"
    # the health check's warnings fail the verify task (an alert) when the Variable says so
    assert p["verify"]["application_args"][-1] == "--fail-on-health"
    assert "--fail-on-health" not in p["dedup"]["application_args"]


@pytest.mark.slow
def test_kubernetes_recipe_runs_an_image_without_archives(parsed):
    """Rendered fields, not the spark-submit line: the provider's hook builds a k8s:// command only
    where apache-airflow-providers-cncf-kubernetes is installed (not in this project's extra)."""
    for task in ("dedup", "verify"):
        t = parsed["k8s"][task]
        assert (t["conn_id"], t["deploy_mode"]) == ("spark_k8s", "cluster")
        conf = t["conf"]
        assert conf["spark.kubernetes.container.image"] == "registry.example/listing-dedup:1.4"
        assert conf["spark.kubernetes.namespace"] == "dedup"
        assert conf["spark.kubernetes.authenticate.driver.serviceAccountName"] == "spark"
        assert conf["spark.pyspark.python"] == conf["spark.pyspark.driver.python"] == "/opt/venv/bin/python"
        assert "spark.archives" not in conf  # the image holds the environment
        assert "" not in conf.values()
        assert t["py_files"] == "local:///opt/listing_dedup/listing_dedup_jobs.zip"
        assert t["application"] == "local:///opt/listing_dedup/dedup_listings.py"
        assert t["files"] == "local:///opt/listing_dedup/cluster.yaml#profile.yaml"
    dedup = parsed["k8s"]["dedup"]
    assert dedup["conf"]["spark.executor.resource.gpu.amount"] == "1"
    assert dedup["application_args"][:4] == [
        "--conf",
        "profile.yaml",
        "--input",
        "s3a://lake/listings/run_date=2026-02-05",
    ]


@pytest.mark.slow
def test_standalone_recipe_is_client_mode_without_gpus(parsed):
    cmd = parsed["standalone"]["dedup"]["command"]
    assert cmd[:3] == ["spark-submit", "--master", "spark://10.0.0.5:7077"]
    assert submit_args(cmd, "--deploy-mode") == ["client"]
    conf = spark_conf(cmd)
    assert not [k for k in conf if ".resource.gpu." in k]  # 0 GPUs: no resource requested at all
    assert "spark.archives" not in conf and "spark.kubernetes.container.image" not in conf
    assert conf["spark.pyspark.python"] == "/srv/listing-dedup/.venv/bin/python"
    assert (conf["spark.executor.cores"], conf["spark.task.cpus"], conf["spark.executor.memory"]) == ("2", "2", "3g")
    assert conf["spark.cores.max"] == "4"  # listing_dedup_spark_conf, on both tasks
    assert spark_conf(parsed["standalone"]["verify"]["command"])["spark.cores.max"] == "4"
    # client mode: the driver runs here and reads the profile itself (nothing shipped with --files)
    assert "--files" not in cmd
    app = cmd.index("/srv/listing-dedup/dist/dedup_listings.py")
    assert cmd[app + 1 :] == [
        "--conf",
        "/srv/listing-dedup/dist/local.yaml",
        "--input",
        "/data/listings/run_date=2026-02-06",
        "--run-date",
        "2026-02-06",
        "--warehouse",
        "/data/warehouse",
    ]


@pytest.mark.slow
def test_bad_variables_fail_before_spark_submit_naming_the_variable(parsed):
    names = ["deploy_mode", "python_env", "executor_gpus", "spark_conf", "fail_on_health"]
    for name, case in zip(names, parsed["bad"], strict=True):
        for task in ("dedup", "verify"):
            err = case[task]["error"]
            assert err.startswith(f"Airflow Variable listing_dedup_{name}="), err
