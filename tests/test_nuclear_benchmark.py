"""``benchmarks/nuclear.py --device cpu --quick``: the benchmark's code path runs on CPU, checks the op
against float64 and prints its table (the GPU run adds torch.compile and the tile sweep)."""

from __future__ import annotations

import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_cpu_run_prints_the_table_and_checks_the_op(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    spec = importlib.util.spec_from_file_location("nuclear_bench", os.path.join(ROOT, "benchmarks", "nuclear.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "nuclear.json"
    assert bench.main(["--device", "cpu", "--quick", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "layout | group | torch eager | torch compiled | op | memory" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [r["group"] for r in rows if r["layout"] == "torch"] == ["3x96x64", "2x64x160", "whole set"]
    assert all(0 <= r["op_rel_err"] <= 2e-6 and r["op_ms"] > 0 and r["torch_ms"] > 0 for r in rows)
    # memory time: 4 B per element (two bf16 operands) at 4.3e12 B/s
    fused = next(r for r in rows if r["layout"] == "fused" and r["group"] == "3x96x64")
    assert abs(fused["memory_ms"] - 3 * 96 * 64 * 4 / 4.3e12 * 1e3) < 1e-12
