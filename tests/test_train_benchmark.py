"""``benchmarks/train.py --quick``: the end-to-end benchmark's CPU path runs and its numbers mean what
they say (the floor's overhead is 0 by definition, every recipe trains, same math gives the same loss)."""

import importlib.util
import json
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_cpu_run(tmp_path):
    out, md = tmp_path / "train.json", tmp_path / "train.md"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "benchmarks/train.py", "--quick", "--device", "cpu", "--steps", "2", "--warmup-steps", "0",
           "--profile", "1", "--json", str(out), "--md", str(md)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    rows = {r["name"]: r for r in res["models"]["tiny"]["columns"]["eager"]["rows"]}

    floor = rows["AdamW fused, everything (the floor)"]
    # measured twice (first and after the other recipes); overheads against the lower of the two
    assert floor["ms_again"] > 0
    floor_ms = min(floor["ms"], floor["ms_again"])
    assert abs(floor["overhead_ms"] - (floor["ms"] - floor_ms)) < 1e-9 and floor["overhead_ms"] >= 0
    for name in ("torch.optim.Muon + fused AdamW", "fpolar.optim.Muon(param_groups(model))"):
        r = rows[name]
        assert r["ms"] > 0 and r["first_step_s"] > 0
        assert abs(r["overhead_ms"] - (r["ms"] - floor_ms)) < 1e-9
    ran = [r for r in rows.values() if "ms" in r]
    assert len(ran) >= 3
    for r in ran:  # --profile 1: one more step, profiled; its costliest host ops listed, costliest first
        prof = r["profile"]
        assert prof["steps"] == 1 and prof["wall_ms_per_step"] > 0 and prof["device_busy_ms_per_step"] is None
        costs = [t["ms_per_step"] for t in prof["top"]]
        assert costs and costs == sorted(costs, reverse=True) and all(t["calls_per_step"] >= 1 for t in prof["top"])
    for r in ran:  # a fixed batch: every optimizer that really steps lowers the loss
        assert r["loss_last"] < r["loss_first"] - 0.05, r
    # Same split, same Muon math (NS "muon" coefficients, 5 steps, fp32 on CPU), same AdamW: the two
    # end at the same loss up to float rounding of different op orders.
    a, b = rows["torch.optim.Muon + fused AdamW"], rows["fpolar.optim.Muon(param_groups(model))"]
    assert abs(a["loss_last"] - b["loss_last"]) < 1e-3, (a, b)
    for name, pkg in (("dion Muon (+ its AdamW)", "dion"), ("heavyball Muon + fused AdamW", "heavyball"),
                      ("Emerging-Optimizers Muon + fused AdamW", "emerging_optimizers")):
        if name in rows and importlib.util.find_spec(pkg) is None:
            assert rows[name]["error"] == "n/a (not installed)"
    assert rows["fpolar make_train_step + capture_cuda_graph"]["error"] == "n/a (needs CUDA)"
    text = md.read_text()
    assert "| fpolar.optim.Muon(param_groups(model)) |" in text and "overhead ms" in text
    assert f"(again: {floor['ms_again']:.2f})" in text
    assert torch.__version__ in res["env"]["torch"]


def test_failure_keeps_type_and_cause():
    """A failure keeps its type and the end of its message: for ``BackendCompilerFailed`` the cause is on
    the last lines, after a first line that only names the backend."""
    spec = importlib.util.spec_from_file_location("train_bench", os.path.join(ROOT, "benchmarks", "train.py"))
    train = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = train  # its dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(train)
    finally:
        del sys.modules[spec.name]

    class BackendFailed(RuntimeError):
        pass

    def compile_graph():
        raise AssertionError("the real cause: loop reordering after fusion")

    try:
        try:
            compile_graph()
        except AssertionError as cause:
            raise BackendFailed("backend='inductor' raised:\n" + "\n".join(f"frame {i}" for i in range(30))
                                + f"\n{cause}") from cause
    except BackendFailed as e:
        got = train._failure(e)
    assert got["error"] == "BackendFailed: backend='inductor' raised:"
    assert got["error_type"].endswith("BackendFailed")
    detail = got["error_detail"].splitlines()
    assert len(detail) == train.DETAIL_LINES
    assert detail[-1].endswith("the real cause: loop reordering after fusion")
    assert "frame 0" not in got["error_detail"]


def _train_module():
    spec = importlib.util.spec_from_file_location("train_bench", os.path.join(ROOT, "benchmarks", "train.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module of their class by name
    spec.loader.exec_module(module)
    return module


def test_only_selects_every_matching_recipe_and_its_floors():
    """``--only`` keeps every recipe whose name matches, also those whose builder is a closure made
    per ``recipes()`` call (compared by identity, they were once dropped), and the floors they need, in the listed order."""
    train = _train_module()
    names = [r.name for r in train.select_recipes("compiled apart,compile_train_step", no_compile=False)]
    assert names == [
        "AdamW fused, everything (the floor)",
        "fpolar step compiled apart (torch.compile)",
        train.WHOLE_STEP_FLOOR,
        "fpolar make_train_step(func) + compile_train_step",
        "fpolar step compiled apart (reduce-overhead)",
        'fpolar step compiled apart (reduce-overhead), kernels="symmetric"',
    ]
    assert [r.name for r in train.select_recipes("compiled apart", no_compile=True)] == [
        "AdamW fused, everything (the floor)"
    ]
    every = train.select_recipes(None, no_compile=False)
    assert [r.name for r in every] == [r.name for r in train.recipes()]
