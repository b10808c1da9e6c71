"""`make package-code`: the --py-files zip holds the library and the jobs, and the job script
runs from it alone (as under spark-submit, where the zip is on the driver's sys.path)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from _rel import REPO
from conftest import skip_or_fail


@pytest.mark.slow
def test_py_files_zip_runs_the_job_entry_point(tmp_path):
    if shutil.which("make") is None or shutil.which("zip") is None:
        skip_or_fail("`make package-code` needs make and zip on PATH")
    dist = tmp_path / "dist"
    r = subprocess.run(["make", "-s", "package-code", f"DIST={dist}"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    zf = dist / "listing_dedup_jobs.zip"
    names = set(zipfile.ZipFile(zf).namelist())
    assert {"listing_dedup/__init__.py", "listing_dedup/pipeline.py", "listing_dedup/backfill.py",
            "jobs/dedup_listings.py"} <= names  # fmt: skip
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert {p.name for p in dist.iterdir()} == {"listing_dedup_jobs.zip", "dedup_listings.py", "cluster.yaml",
                                                "local.yaml"}  # fmt: skip

    env = dict(os.environ, PYTHONPATH=str(zf))
    probe = "import listing_dedup.pipeline as p, listing_dedup.ingest.images as i; print(p.__file__); print(i.__file__)"
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert all(line.startswith(str(zf)) for line in r.stdout.split()), r.stdout  # imported from the zip
    r = subprocess.run([sys.executable, str(dist / "dedup_listings.py"), "--help"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "--from-date" in r.stdout and "--verify-only" in r.stdout
