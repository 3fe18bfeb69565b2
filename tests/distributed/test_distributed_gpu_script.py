"""benchmarks/distributed_gpu.py on CPU: a gloo world of 2 on tiny shapes (``--quick``) fills every part
with numbers or a stated reason (the CUDA-only part says "needs CUDA"), and the target line is
1.1 × one-device time / world + all_to_all time."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "distributed_gpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("distributed_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def measured_or_skipped(name: str, v) -> None:
    assert isinstance(v, dict), f"{name}: {v!r}"
    if "skipped" in v:
        assert isinstance(v["skipped"], str) and v["skipped"], f"{name}: empty skip reason"
        return
    assert "error" not in v and "timed_out" not in v, f"{name}: {v}"
    assert isinstance(v.get("ms"), float) and v["ms"] > 0, f"{name}: no time in {v}"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    if torch.cuda.is_available():  # keeps the GPU suite's "tests" part in its time; its "dist" part runs the script
        pytest.skip("the CPU smoke run; on a CUDA machine run PARTS=dist bash benchmarks/gpu_suite.sh")
    out = tmp_path_factory.mktemp("distributed_gpu")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
               OMP_NUM_THREADS="1")
    # the parts' own limits (≤ 170 s each) are under this one: a slow part is recorded, not a hung test
    res = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--world", "2", "--quick", "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads((out / "distributed_gpu.json").read_text()), (out / "distributed_gpu.md").read_text()


def test_every_part_has_numbers_or_a_reason(smoke):
    res, md = smoke
    assert res["world"] == 2 and res["backend"] == "gloo"
    parts = res["parts"]
    assert set(parts) == {"parity", "capture", "scaling", "e2e"}
    assert parts["capture"] == {"skipped": "needs CUDA"}

    parity = parts["parity"]
    assert set(parity) == {"plan_same_on_every_rank", "replicated_parity", "comm_counts"}
    for name, v in parity.items():
        assert v["ok"] is True, f"{name}: {v}"
    assert max(parity["replicated_parity"]["values"]["max_abs_error"].values()) <= 1e-5

    (set_name, rows), = parts["scaling"].items()
    assert rows["matrices"] == 8
    for name in ("one_device_fpolar_step", "fpolar functional step (eager)", "fpolar.optim.Muon (eager)", "all_to_all of the payload"):
        measured_or_skipped(name, rows[name])
    assert rows["fpolar functional step (CUDA graph)"] == {"skipped": "needs CUDA"}
    measured_or_skipped("dion Muon", rows["dion Muon"])  # a time where dion is installed, else the reason
    assert rows["all_to_all of the payload"]["bytes_per_rank"] > 0
    target = rows["target"]
    want = 1.1 * rows["one_device_fpolar_step"]["ms"] / 2 + rows["all_to_all of the payload"]["ms"]
    assert abs(target["ms"] - want) <= 1e-3 * want
    assert set(target["verdict"]) == {"fpolar functional step (eager)", "fpolar.optim.Muon (eager)"}

    e2e = parts["e2e"]
    for name in ("AdamW only (foreach)", "fpolar.optim.Muon + AdamW (eager)",
                 "fpolar.optim.Muon + AdamW (compiled='cuda_graph')", "dion Muon + its AdamW"):
        measured_or_skipped(name, e2e[name])
    assert e2e["fpolar.optim.Muon + AdamW (compiled='cuda_graph')"] == {"skipped": "needs CUDA"}
    # the fixed batch is learned: the loss falls over the few steps
    first, last = e2e["fpolar.optim.Muon + AdamW (eager)"]["loss_first_last"]
    assert last < first

    for heading in ("## Parity", "## CUDA-graph capture", "## Optimizer step per rank", "## End to end"):
        assert heading in md


def test_target_line():
    mod = load_script()
    scaling = {"set": {"matrices": 4, "params": 1, "one_device_fpolar_step": {"ms": 10.0},
                       "all_to_all of the payload": {"ms": 0.5}, "fpolar functional step (eager)": {"ms": 6.5},
                       "fpolar.optim.Muon (eager)": {"ms": 5.0}, "dion Muon": {"ms": 5.5}}}
    mod.targets(scaling, world=2)
    t = scaling["set"]["target"]
    assert t["ms"] == pytest.approx(1.1 * 10.0 / 2 + 0.5)
    assert t["verdict"]["fpolar functional step (eager)"] == {"meets_target": False, "faster_than_dion": False}
    assert t["verdict"]["fpolar.optim.Muon (eager)"] == {"meets_target": True, "faster_than_dion": True}
    scaling = {"set": {"matrices": 4, "params": 1, "one_device_fpolar_step": {"error": "x"}}}
    mod.targets(scaling, world=2)
    assert "skipped" in scaling["set"]["target"]


def test_bad_arguments_are_refused():
    mod = load_script()
    with pytest.raises(SystemExit):
        mod.parse_args(["--out", "x", "--parts", "parity,nosuch"])
    with pytest.raises(SystemExit, match="--world 0"):
        mod.main(["--out", "unused", "--device", "cpu", "--world", "0"])  # refused before anything runs
