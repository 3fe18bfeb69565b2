"""Real clients drive fpolar.optim.Muon: Hugging Face's Trainer and PyTorch Lightning (the examples,
run tiny). Neither package is a dependency: each test skips, saying so, when its package is missing."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

import fpolar.optim  # noqa: E402


def _need(*modules: str) -> None:
    for m in modules:
        if importlib.util.find_spec(m) is None:
            pytest.skip(f"needs {m!r} (pip install {m}); it is not a dependency of fpolar")


def test_hugging_face_trainer_runs_fpolar_muon():
    _need("transformers", "accelerate")
    import hf_trainer

    steps = 4
    result = hf_trainer.train(steps=steps)
    opt = result["optimizer"]
    # the Trainer used our optimizer as given (wrapped, not replaced): every group stepped `steps` times
    assert isinstance(opt, fpolar.optim.Muon)
    algorithms = [g["algorithm"] for g in opt.param_groups]
    assert "polargrad" in algorithms and "adamw" in algorithms
    steps_seen = {float(opt.state[p]["step"]) for g in opt.param_groups for p in g["params"] if opt.state.get(p)}
    assert steps_seen == {float(steps)}
    # the scheduler drove both groups' lr
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02 * (1 - steps / steps))
    losses = [e["loss"] for e in result["log"] if "loss" in e]
    assert losses and all(torch.isfinite(torch.tensor(float(x))) for x in losses)
    # the tied head / embedding is on AdamW, the Conv1D matrices on Muon
    wte = result["model"].transformer.wte.weight
    assert any(p is wte for g in opt.param_groups if g["algorithm"] == "adamw" for p in g["params"])


def test_lightning_configure_optimizers_runs_fpolar_muon():
    _need("lightning")
    import lightning_module

    steps = 4
    module, trainer = lightning_module.train(steps=steps)
    opt = trainer.optimizers[0]
    assert isinstance(opt, fpolar.optim.Muon) and len(module.losses) == steps
    steps_seen = {float(opt.state[p]["step"]) for g in opt.param_groups for p in g["params"] if opt.state.get(p)}
    assert steps_seen == {float(steps)}
    assert all(torch.isfinite(torch.tensor(module.losses)))
