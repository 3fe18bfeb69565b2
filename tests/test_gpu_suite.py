"""benchmarks/gpu_suite.sh reports each part's own exit status: the test runner's, not a pipe's or a
later bookkeeping command's. Run on CPU with ``python3`` replaced by a stub whose pytest fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STUB = """#!/usr/bin/env bash
# pytest "fails to collect" (exit 4), as it did on a machine without expecttest; the rest is real python.
if [ "${1:-}" = "-m" ] && [ "${2:-}" = "pytest" ]; then echo "ERROR collecting compile_tests"; exit 4; fi
exec "%s" "$@"
"""


@pytest.fixture
def stub_path(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "python3"
    stub.write_text(STUB % sys.executable)
    stub.chmod(0o755)
    return bin_dir


def run_suite(parts: str, out: Path, bin_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PARTS=parts, OUT=str(out), PATH=f"{bin_dir}:{os.environ['PATH']}")
    return subprocess.run(["bash", "benchmarks/gpu_suite.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_each_part_reports_its_runners_status(stub_path, tmp_path):
    res = run_suite("compile nosuch tests", tmp_path / "out", stub_path)
    assert re.search(r"=== compile: exit 4, \d+ s ===", res.stdout), res.stdout
    assert re.search(r"=== tests: exit 4, \d+ s ===", res.stdout), res.stdout
    assert "ERROR collecting" in res.stdout  # the runner's own output is shown
    # the results merge after the part still ran, and succeeded on its own
    assert (tmp_path / "out" / "compile_results.json").exists()
    assert "unknown part nosuch; parts: tests compile polar peers lm paper" in res.stdout
    assert "=== nosuch: exit 2" in res.stdout
    assert res.returncode == 1
