"""The nightly DAG executed for real: Airflow 3 (``airflow dags test``, a temp AIRFLOW_HOME with
its sqlite database) runs both SparkSubmitOperators through spark-submit, client mode, against a
standalone Spark cluster on loopback (one master, one worker; bin/spark_cluster.py, stopped by
pid at the end, also on failure). One DAG run: a rerun of a date is the same job run again, which
tests/reliability/test_rerun_retry_stable.py checks in-process (same tables, a new version), so a
second Airflow run here would only repeat its ~60 s of spark-submits.

The deployment is configuration only: the ``spark_default`` connection and the DAG's Variables
come from AIRFLOW_CONN_* / AIRFLOW_VAR_* environment variables (the standalone recipe of
README.md "Airflow"); the artifacts are built as ``make package-code`` builds them, into a temp
folder. The conf profile is lexical-only on a few hundred generated listings: the cheapest conf
that still runs every stage of the job.

This is also the child-process smoke test of jobs/dedup_listings.py (under spark-submit, with
``--py-files``) and of jobs/evaluate.py (scoring the DAG's run against the sample's truth); the
exact outputs on a hand-made catalog are checked in-process by tests/test_job.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import QUICK_JVM, QUICK_SQL, require_module

require_module("airflow.sdk", "Airflow 3 is not installed (pip install '.[airflow]')")
require_module("airflow.providers.apache.spark", "the Spark provider is not installed (pip install '.[airflow]')")

from listing_dedup.quality.sample import generate_catalog  # noqa: E402
from listing_dedup.sink.delta import read_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bin"))
import spark_cluster  # noqa: E402

DAG_ID = "listing_dedup_nightly"
DATE = "2026-01-01"
VENV_BIN = Path(sys.executable).parent
TABLES = ("matches", "clusters", "rejects", "runs")
PRODUCTS = 100  # 263 listings, 5 of them bad rows
# (bench/cluster_vs_local.py --profile lexical runs the same profile)
PROFILE = """\
# lexical signal only (no text model to load), exact search, no INB round, 2 partitions
spark:
  conf:
    spark.sql.shuffle.partitions: 2
    spark.default.parallelism: 2
    spark.ui.showConsoleProgress: false
    spark.python.worker.reuse: true
input: {partitions: 2}
embed:
  text: {enabled: false}
index: {n_shards: 2}
inb: {thresholds: []}
output: {candidates: false}
"""


def package_code(dist: Path) -> None:
    """What ``make package-code`` builds: the --py-files zip (lib + jobs) and the job script."""
    dist.mkdir(parents=True)
    with zipfile.ZipFile(dist / "listing_dedup_jobs.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for root in (REPO / "lib" / "listing_dedup", REPO / "jobs"):
            for f in sorted(root.rglob("*.py")):
                z.write(f, f.relative_to(root.parent))
    shutil.copy(REPO / "jobs" / "dedup_listings.py", dist)


LATEST_RUN = "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1"


def task_states(home: Path) -> dict[str, str]:
    """task_id -> state of the task instances of the DAG's latest run in the Airflow database,
    plus ``dag_run``: that run's state."""
    for _ in range(20):
        try:
            with sqlite3.connect(home / "airflow.db", timeout=10) as db:
                rows = db.execute(
                    f"SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ({LATEST_RUN})",
                    (DAG_ID, DAG_ID),
                ).fetchall()
                run = db.execute(f"SELECT state FROM dag_run WHERE run_id = ({LATEST_RUN})", (DAG_ID,)).fetchall()
            return {t: s for t, s in rows} | ({"dag_run": run[0][0]} if run else {})
        except sqlite3.OperationalError:  # airflow holds the write lock for a moment
            time.sleep(0.5)
    raise AssertionError(f"cannot read {home / 'airflow.db'}")


def run_airflow(args: list[str], *, env: dict, cwd: Path, timeout: float, home: Path | None = None) -> tuple[int, str]:
    """The airflow command in its own process group: (exit code, stdout + stderr). With ``home``,
    the DAG's task states are watched while it runs: a task that failed or waits for a retry (10
    minutes later) stops the run at once, as does the timeout; the group (airflow and the
    spark-submit it started) is killed by its id."""
    with open(cwd / "airflow-output.log", "w+") as log:
        proc = subprocess.Popen(
            [str(VENV_BIN / "airflow"), *args],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline, why = time.monotonic() + timeout, ""
        try:
            while proc.poll() is None:
                time.sleep(2)
                bad = {t: s for t, s in task_states(home).items() if s in ("failed", "up_for_retry")} if home else {}
                if bad or time.monotonic() > deadline:
                    why = f"stopped: tasks {bad}" if bad else f"stopped: timeout {timeout:.0f} s"
                    break
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.seek(0)
        return (proc.returncode if not why else -9), log.read() + (f"\n{why}" if why else "")


def clusters_of(warehouse: str) -> dict[str, str]:
    return read_table(warehouse, "clusters", DATE).set_index("posting_id")["group_id"].to_dict()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One master and one 2-core worker on free loopback ports; stopped by pid at the end of the
    module whatever happened, and then no process may be left in its folders."""
    c = spark_cluster.start(tmp_path_factory.mktemp("spark_cluster"), workers=1, cores=2, memory="3g")
    try:
        yield c
    finally:
        spark_cluster.stop(c.state_dir)
        alive = [p for p in c.pids if Path(f"/proc/{p}").exists()]
        assert not alive and not spark_cluster.pids_under(c.state_dir), (alive, spark_cluster.pids_under(c.state_dir))


@pytest.fixture(scope="module")
def dag_runs(cluster, tmp_path_factory):
    """One ``airflow dags test`` run of the date: (exit code, output, task states, seconds,
    clusters); plus the warehouse, the sample and the folder."""
    tmp = tmp_path_factory.mktemp("dag_run")
    home, dist, root, wh = tmp / "airflow", tmp / "dist", tmp / "listings", str(tmp / "warehouse")
    (home / "dags").mkdir(parents=True)
    shutil.copy(REPO / "airflow_dags" / f"{DAG_ID}.py", home / "dags")
    package_code(dist)
    (tmp / "profile.yaml").write_text(PROFILE)
    sample = generate_catalog(PRODUCTS, seed=7)
    (root / f"run_date={DATE}").mkdir(parents=True)
    sample.listings.to_parquet(root / f"run_date={DATE}" / "listings.parquet", index=False)
    sample.truth.to_csv(tmp / "truth.csv", index=False)

    host, port = cluster.master_url.rsplit(":", 1)
    variables = {
        "deploy_mode": "client",
        "python_env": "preinstalled",
        "python": sys.executable,  # the project's virtualenv, on the driver and the executors
        "artifacts": str(dist),
        "conf": str(tmp / "profile.yaml"),
        "input_root": str(root),
        "warehouse": wh,
        "executor_cores": "2",
        "task_cpus": "1",
        "executor_memory": "2g",
        "executor_gpus": "0",
        "task_gpus": "0",
        "spark_conf": json.dumps(
            {
                "spark.cores.max": "2",
                "spark.driver.extraJavaOptions": QUICK_JVM,
                "spark.executor.extraJavaOptions": QUICK_JVM,
                "spark.ui.enabled": "false",
                **QUICK_SQL,
            }
        ),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST", "PYSPARK"))}
    env.pop("PYTHONPATH", None)
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW_CONN_SPARK_DEFAULT=json.dumps({"conn_type": "spark", "host": host, "port": int(port)}),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # spark-submit: the venv's pyspark
        SPARK_LOCAL_IP="127.0.0.1",
        PYSPARK_PYTHON=sys.executable,
        **{f"AIRFLOW_VAR_LISTING_DEDUP_{k.upper()}": v for k, v in variables.items()},
    )

    rc, out = run_airflow(["db", "migrate"], env=env, cwd=tmp, timeout=300)
    assert rc == 0, out[-5000:]
    t0 = time.monotonic()
    rc, out = run_airflow(["dags", "test", DAG_ID, DATE], env=env, cwd=tmp, timeout=900, home=home)
    seconds = time.monotonic() - t0
    (tmp / "dags-test.log").write_text(f"{seconds:.1f} s, exit {rc}\n{out}")
    states = task_states(home)
    assert states == {"dedup": "success", "verify": "success", "dag_run": "success"}, out[-6000:]
    runs = [{"rc": rc, "out": out, "states": states, "seconds": seconds, "clusters": clusters_of(wh)}]
    return {"runs": runs, "warehouse": wh, "sample": sample, "tmp": tmp}


@pytest.mark.slow
def test_airflow_runs_both_tasks_through_spark_submit_on_the_cluster(dag_runs, cluster):
    for run in dag_runs["runs"]:
        assert run["rc"] == 0, run["out"][-4000:]
        assert run["states"] == {"dedup": "success", "verify": "success", "dag_run": "success"}
        out = run["out"]
        # both applications were submitted to the standalone master, in client mode
        assert out.count(f"spark-submit --master {cluster.master_url}") >= 2, out[-4000:]
        assert "--deploy-mode client" in out
    # the master ran the two applications of each DAG run (dedup, verify) to the end
    import urllib.request

    with urllib.request.urlopen(cluster.web_ui + "/json/", timeout=10) as resp:  # noqa: S310 - loopback
        apps = json.load(resp)["completedapps"]
    names = sorted(a["name"] for a in apps)
    assert names == sorted(["listing-dedup-" + DATE, "listing-dedup-verify-" + DATE]), names
    assert all(a["state"] == "FINISHED" for a in apps)


@pytest.mark.slow
def test_the_date_is_in_all_four_tables_and_rows_add_up(dag_runs):
    wh, sample = dag_runs["warehouse"], dag_runs["sample"]
    n_in = len(sample.listings)
    runs = read_table(wh, "runs", DATE)
    assert runs["status"].tolist() == ["succeeded"]  # one row per attempt
    assert runs["rows_in"].tolist() == [n_in]
    assert (runs["rows_kept"] + runs["rows_rejected"]).tolist() == [n_in]
    assert runs["rows_rejected"].tolist() == [sample.n_bad_rows]
    kept = int(runs["rows_kept"].iloc[-1])
    clusters, matches, rejects = (read_table(wh, t, DATE) for t in ("clusters", "matches", "rejects"))
    assert len(clusters) == len(matches) == clusters["posting_id"].nunique() == kept
    assert set(matches["posting_id"]) == set(clusters["posting_id"])
    assert len(rejects) == sample.n_bad_rows
    for t in TABLES:
        assert set(read_table(wh, t)["run_date"].astype(str)) == {DATE}, t
    # the job's summary (health included) and the verify task's line are in the task logs that
    # Airflow printed (one log line per line of the job's output, stripped)
    out = dag_runs["runs"][-1]["out"]
    assert f"] rows in        {n_in} " in out and f"] rows rejected  {sample.n_bad_rows}  (" in out, out[-4000:]
    assert f"% of {kept} listings, " in out and "] warnings  none " in out
    assert f"verified {DATE}: {n_in} rows in, {kept} kept, {sample.n_bad_rows} rejected" in out


@pytest.mark.slow
def test_the_dag_run_found_groups(dag_runs):
    (run,) = dag_runs["runs"]
    assert len(run["clusters"]) > 0
    assert sum(1 for p, g in run["clusters"].items() if p != g) > 0  # there are groups, not only singletons


@pytest.mark.slow
def test_evaluate_job_scores_the_dag_run(dag_runs):
    """jobs/evaluate.py in a child process (that entry point's smoke test): one JSON line, the
    same JSON in --json-out, scores against the generator's known groups."""
    tmp, wh = dag_runs["tmp"], dag_runs["warehouse"]
    out = tmp / "score.json"
    r = subprocess.run(
        [sys.executable, "jobs/evaluate.py", "--warehouse", wh, "--run-date", DATE]
        + ["--truth", str(tmp / "truth.csv"), "--json-out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert json.loads(out.read_text()) == res
    assert res["run_date"] == DATE and res["n"] == len(dag_runs["sample"].listings) - dag_runs["sample"].n_bad_rows
    # 0.927 / 0.976 here (the same in local mode: bench/cluster_vs_local.py)
    assert res["matches"]["f1"] > 0.85 and res["clusters"]["f1"] > 0.9, res
