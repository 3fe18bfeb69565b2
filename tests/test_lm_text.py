"""benchmarks/lm_text.py: the tuning plan's stages, resumable runs, and the --quick pipeline end to end."""

import json
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import lm_text  # noqa: E402
from lm_text import QUICK, RunSpec, TuningPlan, plan_all, plan_family, train_run  # noqa: E402
from text_corpus import load_corpus  # noqa: E402

PLAN = TuningPlan(grids={"adamw": (1e-3, 2e-3, 4e-3, 8e-3), "polargrad": (0.01, 0.02)},
                  aux={"adamw": None, "polargrad": 3e-3}, variants=(("polargrad", "qdwh"),))


def _finish(results, specs, loss):
    """Mark ``specs`` done with final loss ``loss(spec)``."""
    for s in specs:
        results[s.run_id] = {"run_id": s.run_id, "status": "done", "final_val": loss(s), "spec": s.__dict__,
                             "curve": [(0, 5.0)], "steps": 1}


def test_plan_stages_follow_the_results():
    results = {}
    first = plan_family(PLAN, "adamw", results)
    assert [(st, s.lr, s.aux_lr) for st, s in first] == [("lr", lr, lr) for lr in (1e-3, 2e-3, 4e-3, 8e-3)]
    # best at the top edge: one more point outwards, nothing else yet
    _finish(results, [s for _, s in first], lambda s: 1.0 - s.lr)  # larger lr, lower loss
    ext = plan_family(PLAN, "adamw", results)
    assert [s.lr for st, s in ext] == [1e-3, 2e-3, 4e-3, 8e-3, 16e-3]
    # the new point is worse: 8e-3 is interior now; aux stage at 8e-3 × (0.5, 2)
    _finish(results, [ext[-1][1]], lambda s: 10.0)
    nxt = plan_family(PLAN, "adamw", results)
    aux = [s for st, s in nxt if st == "aux"]
    assert [(s.lr, s.aux_lr) for s in aux] == [(8e-3, 4e-3), (8e-3, 16e-3)]
    assert not [s for st, s in nxt if st == "seed"]
    # the base aux (8e-3) stays best: interior, no extension; then seed 1 of (8e-3, 8e-3)
    _finish(results, aux, lambda s: 1.0)
    final = plan_family(PLAN, "adamw", results)
    seeds = [s for st, s in final if st == "seed"]
    assert seeds == [RunSpec("adamw", 8e-3, 8e-3, seed=1)]


def test_plan_diverged_runs_are_never_best_and_variants_use_the_stage1_best():
    results = {}
    first = [s for _, s in plan_family(PLAN, "polargrad", results)]
    assert all(s.aux_lr == 3e-3 for s in first)
    results[first[0].run_id] = {"run_id": first[0].run_id, "status": "done", "final_val": 2.0}
    results[first[1].run_id] = {"run_id": first[1].run_id, "status": "diverged", "final_val": math.nan}
    runs = plan_family(PLAN, "polargrad", results)
    assert sorted(s.lr for st, s in runs if st == "lr") == [0.005, 0.01, 0.02]  # best (0.01) at the low edge
    variants = plan_all(PLAN, {**results, **{s.run_id: {"run_id": s.run_id, "status": "done", "final_val": 3.0}
                                             for st, s in runs if st == "lr" and s.run_id not in results}})
    var = [s for st, s in variants if st == "variant"]
    assert var == [RunSpec("polargrad", 0.01, 3e-3, variant="qdwh")]
    assert variants[-1][0] == "variant"  # variants run last


def test_runspec_rejects_bad_values():
    with pytest.raises(ValueError, match="'sgd'"):
        RunSpec("sgd", 1e-3, 1e-3)
    with pytest.raises(ValueError, match="'fast'"):
        RunSpec("adamw", 1e-3, 1e-3, variant="fast")
    with pytest.raises(ValueError, match="-0.1"):
        RunSpec("adamw", -0.1, 1e-3)
    assert lm_text.parse_runs("polargrad:0.01:0.002:qdwh:1") == [RunSpec("polargrad", 0.01, 0.002, 1, "qdwh")]


@pytest.mark.parametrize("family", ["adamw", "polargrad", "muon_rms"])
def test_resumed_run_matches_an_uninterrupted_one(tmp_path, family):
    torch.set_num_threads(1)
    corpus = load_corpus()
    cfg = QUICK
    spec = RunSpec(family, 0.01, 0.004)
    whole = train_run(spec, cfg, corpus, torch.device("cpu"))
    part = train_run(spec, cfg, corpus, torch.device("cpu"), run_dir=str(tmp_path), stop_after=5)
    assert part["status"] == "incomplete" and part["steps"] == 5
    assert os.path.exists(tmp_path / (spec.run_id + ".ckpt"))
    rest = train_run(spec, cfg, corpus, torch.device("cpu"), run_dir=str(tmp_path))
    assert rest["status"] == "done" and rest["steps"] == cfg.steps
    assert rest["curve"] == whole["curve"] and rest["final_val"] == whole["final_val"]
    assert not os.path.exists(tmp_path / (spec.run_id + ".ckpt"))
    assert whole["curve"][-1][1] < whole["curve"][0][1]  # it learns


def test_quick_pipeline_end_to_end(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    rc = lm_text.main(["--quick", "--device", "cpu", "--out", str(out), "--run-dir", str(runs)])
    assert rc == 0
    data = json.loads((out / "lm_text.json").read_text())
    assert data["pending"] == [] and data["errors"] == []
    assert set(data["summary"]["best"]) == set(lm_text.QUICK_PLAN.grids)
    assert all(b["seeds"] == 2 for b in data["summary"]["best"].values())
    assert all(math.isfinite(r["final_val"]) for r in data["runs"])
    assert data["corpus"]["python"] and data["corpus"]["bytes"]["train"] > 0
    md = (out / "lm_text.md").read_text()
    assert "| muon_rms + polar_express |" in md and "Python" in md
    # a second call finds everything done and trains nothing
    rc = lm_text.main(["--quick", "--device", "cpu", "--out", str(out), "--run-dir", str(runs)])
    assert rc == 0 and json.loads((out / "lm_text.json").read_text())["runs"] == data["runs"]
