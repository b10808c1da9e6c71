"""tests/conftest.py's rule: a test that cannot run for missing ``../shared/data`` or a missing
required package skips on a developer's machine and fails when ``CI`` is set. Checked on a
generated test file run by pytest in a child process (no Spark, a few seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

PROBE = """
from conftest import require_module, skip_or_fail

def test_missing_package():
    require_module("listing_dedup_no_such_package")

def test_missing_data():
    skip_or_fail("no ../shared/data here")

def test_present_package():
    assert require_module("json").dumps([1]) == "[1]"
"""


@pytest.mark.parametrize("ci, outcome", [(None, "2 skipped"), ("true", "2 failed")])
def test_missing_requirement_skips_here_and_fails_in_ci(tmp_path, ci, outcome):
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "."],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = r.stdout.strip().splitlines()[-1]
    assert outcome in summary and "1 passed" in summary, r.stdout[-3000:]
    assert "listing_dedup_no_such_package" in r.stdout and "no ../shared/data here" in r.stdout
    if ci:
        assert r.returncode == 1 and "CI is set" in r.stdout
    else:
        assert r.returncode == 0
