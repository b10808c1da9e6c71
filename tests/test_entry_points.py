"""The command line's dispatcher (``listing-dedup COMMAND`` / ``python -m listing_dedup``) in-process,
and one child-process smoke test for each entry point that no other test runs as a child:
jobs/make_sample.py, jobs/export_e5.py and ``python -m listing_dedup``. (The others' smoke tests:
dedup_listings.py (spark-submit, run by Airflow) and evaluate.py in tests/test_dag_run.py, tune.py
in test_tune.py, train_embedder.py in test_training.py, train_reranker.py in test_rerank.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from listing_dedup.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def child(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_dispatcher_usage_unknown_command_and_dispatch(tmp_path, capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)
    assert main([]) == 2  # no command: the usage, and a usage error
    rc = main(["dedupe"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == (
        "error: unknown command 'dedupe'; one of: " + ", ".join(COMMANDS) + " (see --help)"
    )
    # a command gets the rest of the arguments
    assert main(["make-sample", "--out", str(tmp_path / "s"), "--products", "5", "--seed", "1"]) == 0
    assert (tmp_path / "s" / "listings.parquet").is_file() and (tmp_path / "s" / "truth.csv").is_file()
    with pytest.raises(SystemExit) as e:
        main(["dedup", "--run-date", "2026-01-01"])  # the command's own argument errors: exit 2
    assert e.value.code == 2 and "--warehouse" in capsys.readouterr().err


def test_python_dash_m_listing_dedup_lists_the_commands():
    r = child("-m", "listing_dedup", "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    assert [line.split()[0] for line in r.stdout.splitlines() if line.startswith("  ")] == list(COMMANDS)


def test_make_sample_job_writes_a_catalog_with_its_truth(tmp_path):
    r = child("jobs/make_sample.py", "--out", str(tmp_path), "--products", "8", "--seed", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    listings = pd.read_parquet(tmp_path / "listings.parquet")
    truth = pd.read_csv(tmp_path / "truth.csv")
    assert {f"g{i:05d}" for i in range(8)} <= set(truth["label_group"])  # one group per product
    assert set(truth["posting_id"]) <= set(listings["posting_id"].dropna())
    assert r.stdout.startswith(f"wrote {len(listings)} listings")
    assert f"{truth['label_group'].nunique()} true groups to {tmp_path}" in r.stdout


def test_export_e5_job_missing_image_exit_2(tmp_path):
    r = child("jobs/export_e5.py", "--out", str(tmp_path / "o"), "--image", str(tmp_path / "missing.bin"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
