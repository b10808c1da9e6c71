"""A Spark standalone cluster on loopback: one master and N workers, started and stopped by
their process ids. Used by ``make cluster-up`` / ``make cluster-down`` and by the test that runs
the Airflow DAG for real (tests/test_dag_run.py), so there is one copy of how it is done.

    python bin/spark_cluster.py up   [--state-dir build/spark-cluster] [--port 7077] [--webui-port 8080]
                                     [--workers 2] [--cores 1] [--memory 3g]
    python bin/spark_cluster.py down [--state-dir build/spark-cluster]

``up`` starts the daemons through pyspark's own ``bin/spark-class`` (``exec``s java, so the
pid recorded is the JVM's), waits until the master reports every worker ALIVE and writes
``<state-dir>/cluster.json`` (master URL, web UI, pids); logs go to ``<state-dir>/*.log``,
the workers' application folders to ``<state-dir>/worker-<i>/``. ``down`` stops those pids
(SIGTERM: a worker's shutdown hook stops its executors; SIGKILL after a grace period) and
removes the state file. Executors run the interpreter of ``PYSPARK_PYTHON`` (default: this
one, the project's virtualenv). Exit codes: 0 ok, 2 bad arguments (a port in use, a cluster
already up in that state folder), 1 the daemons did not come up.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

HOST = "127.0.0.1"
STATE_FILE = "cluster.json"


@dataclass(frozen=True)
class Cluster:
    master_url: str  # spark://127.0.0.1:<port>
    web_ui: str  # http://127.0.0.1:<webui-port>
    port: int
    pids: tuple[int, ...]  # master first, then the workers
    state_dir: str


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex((HOST, port)) == 0


def spark_class() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SPARK_LOCAL_IP=HOST,
        # the daemons only schedule; the executors get the worker's --memory
        SPARK_DAEMON_MEMORY=env.get("SPARK_DAEMON_MEMORY", "512m"),
        SPARK_DAEMON_JAVA_OPTS=env.get("SPARK_DAEMON_JAVA_OPTS", "-XX:TieredStopAtLevel=1"),
    )
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    return env


def _alive_workers(web_ui: str) -> int:
    try:
        with urllib.request.urlopen(web_ui + "/json/", timeout=2) as r:  # noqa: S310 - loopback
            return int(json.load(r).get("aliveworkers", 0))
    except (OSError, ValueError):
        return -1


def start(
    state_dir: str | Path,
    *,
    port: int = 0,
    webui_port: int = 0,
    workers: int = 1,
    cores: int = 1,
    memory: str = "3g",
    timeout: float = 120.0,
) -> Cluster:
    """Start the master and ``workers`` workers (port 0: a free one); return when all are ALIVE.
    On any failure the daemons already started are stopped before the error is raised."""
    state = Path(state_dir).resolve()  # the daemons run in it: their paths must not be relative
    state.mkdir(parents=True, exist_ok=True)
    if (state / STATE_FILE).exists():
        raise ValueError(f"a cluster is already recorded in {state / STATE_FILE}: stop it first (down)")
    port = port or free_port()
    webui_port = webui_port or free_port()
    for p in (port, webui_port):
        if _port_taken(p):
            raise ValueError(f"port {p} on {HOST} is in use")
    master_url, web_ui = f"spark://{HOST}:{port}", f"http://{HOST}:{webui_port}"
    env, launcher = _env(), str(spark_class())
    procs: list[subprocess.Popen] = []

    def launch(name: str, args: list[str]) -> None:
        with open(state / f"{name}.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [launcher, *args],
                    env=env,
                    cwd=state,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C in the caller's terminal does not reach it
                )
            )

    try:
        launch(
            "master",
            ["org.apache.spark.deploy.master.Master", "--host", HOST, "--port", str(port)]
            + ["--webui-port", str(webui_port)],
        )
        for i in range(workers):
            work = state / f"worker-{i}"
            work.mkdir(exist_ok=True)
            launch(
                f"worker-{i}",
                ["org.apache.spark.deploy.worker.Worker", master_url, "--host", HOST]
                + ["--cores", str(cores), "--memory", memory, "--work-dir", str(work)]
                + ["--webui-port", str(free_port())],
            )
        deadline = time.monotonic() + timeout
        while _alive_workers(web_ui) < workers:
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a Spark daemon exited with {dead[0].returncode}: see the logs in {state}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{workers} worker(s) not ALIVE at {web_ui} after {timeout:.0f} s: see {state}")
            time.sleep(0.5)
    except BaseException:
        _stop_pids([p.pid for p in procs])
        raise
    cluster = Cluster(master_url, web_ui, port, tuple(p.pid for p in procs), str(state))
    (state / STATE_FILE).write_text(json.dumps(asdict(cluster), indent=1))
    return cluster


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone once reaped
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def _stop_pids(pids: list[int], grace: float = 15.0) -> None:
    """SIGTERM to the workers first (they stop their executors), then the master; SIGKILL what
    is still alive after ``grace`` seconds."""
    for pid in reversed(pids):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        if _pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def pids_under(folder: str | Path) -> list[int]:
    """Processes whose working folder is ``folder`` or below: the daemons, and the executors and
    their Python workers (they run in ``worker-<i>/<app>/<executor>``). Linux /proc; [] elsewhere."""
    root = str(Path(folder).resolve())
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if (cwd == root or cwd.startswith(root + os.sep)) and int(proc.name) != os.getpid():
            out.append(int(proc.name))
    return out


def stop(state_dir: str | Path) -> Cluster | None:
    """Stop the cluster recorded in ``state_dir`` (None when none is recorded): its daemons by
    their recorded pids, then any executor left running in its folders."""
    path = Path(state_dir) / STATE_FILE
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    cluster = Cluster(**{**d, "pids": tuple(d["pids"])})
    _stop_pids(list(cluster.pids))
    left = [p for p in pids_under(state_dir) if _pid_alive(p)]
    if left:
        _stop_pids(left, grace=5.0)
    path.unlink()
    return cluster


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="spark_cluster.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a master and workers on 127.0.0.1")
    down = sub.add_parser("down", help="stop the cluster recorded in --state-dir")
    for s in (up, down):
        s.add_argument("--state-dir", default="build/spark-cluster", help="pids, logs, worker folders")
    up.add_argument("--port", type=int, default=7077, help="master port (0: a free one)")
    up.add_argument("--webui-port", type=int, default=8080, help="master web UI port (0: a free one)")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--cores", type=int, default=1, help="cores per worker")
    up.add_argument("--memory", default="3g", help="executor memory per worker")
    args = p.parse_args(argv)
    if args.cmd == "down":
        c = stop(args.state_dir)
        print(f"stopped {c.master_url} (pids {' '.join(map(str, c.pids))})" if c else "no cluster recorded")
        return 0
    if args.workers < 1 or args.cores < 1:
        p.error("--workers and --cores must be at least 1")
    try:
        c = start(
            args.state_dir,
            port=args.port,
            webui_port=args.webui_port,
            workers=args.workers,
            cores=args.cores,
            memory=args.memory,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{c.master_url} up: {args.workers} worker(s) x {args.cores} core(s), web UI {c.web_ui}, pids {c.pids}")
    print(f"stop it with: make cluster-down  (or python bin/spark_cluster.py down --state-dir {args.state_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
