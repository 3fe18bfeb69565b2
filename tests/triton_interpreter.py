"""Triton kernels on CPU: a test file runs itself as a script under TRITON_INTERPRET=1 in a subprocess
(the interpreter must be switched on before triton is imported, so not in the pytest process), one
JSON line per case; its pytest fixture collects them.

    if __name__ == "__main__":
        sys.exit(interpreter_main(CASES, run_case))          # the subprocess side

    @pytest.fixture(scope="module")
    def interpreter_results():
        return run_interpreted_file(__file__)               # the pytest side
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable

import pytest


def interpreter_main(cases: Iterable[Any], run: Callable[[Any], dict], name: Callable[[Any], str] = str) -> int:
    """The subprocess's entry point: ``run(case)`` for each case, printed as one JSON line (a dict with
    "case" and "ok"); an exception is reported as that case's failure, so one failure does not hide
    the others. Exit status 1 if any case failed."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    failed = 0
    for case in cases:
        try:
            result = run(case)
        except Exception as exc:
            result = {"case": name(case), "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        failed += not result["ok"]
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


def run_interpreted_file(test_file: str) -> Dict[str, Any]:
    """Runs ``test_file`` as a script under the interpreter; returns {case name: its record}, plus
    "__returncode__" and "__stderr__" (its last 4000 characters). Skips without triton/numpy or
    with a Triton older than 3.9; fails if the subprocess printed no case."""
    triton = pytest.importorskip("triton")
    pytest.importorskip("numpy")  # the Triton interpreter runs the kernels with numpy
    if tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 9):
        # Seen with triton 3.6 + numpy 2.5 (the H100 image): every interpreted launch fails with
        # "only 0-dimensional arrays can be converted to Python scalars". There the GPU tests run the
        # kernels for real; CI installs a current triton.
        pytest.skip(f"the Triton {triton.__version__} interpreter fails on this numpy; kernels are tested on the GPU")
    path = Path(test_file).resolve()
    repo = path.parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(path)], env=env, cwd=repo, capture_output=True, text=True, timeout=600)
    results: Dict[str, Any] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            results[record["case"]] = record
    if not results:
        pytest.fail(f"interpreter subprocess produced no results (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    results["__returncode__"] = proc.returncode
    results["__stderr__"] = proc.stderr[-4000:]
    return results
