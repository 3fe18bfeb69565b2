"""make_train_step's AdamW part on torch's fused kernel (``fused_adamw``, chosen on CUDA) against
``adamw_step``, its foreach twin: the same parameters after a few steps, on CPU, where torch 2.13
also has the fused kernel."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fpolar
from fpolar.adamw_fused import fused_adamw_available
from fpolar.compile import make_train_step

pytestmark = pytest.mark.skipif(
    not fused_adamw_available(torch.device("cpu"), torch.float32), reason="this torch has no CPU fused AdamW"
)


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 50))


def _loss(model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(tokens), targets)


def test_fused_adamw_part_matches_the_foreach_step() -> None:
    polar = fpolar.PolarGradHParams(lr=0.02, momentum=0.9, weight_decay=0.01, polar_dtype=torch.float32)
    adamw = fpolar.AdamWHParams(lr=1e-2, weight_decay=0.1)
    base = _model(0)
    runs = {}
    for fused in (False, True):
        model = copy.deepcopy(base)
        step = make_train_step(model, _loss, polar, adamw)
        assert step.fused_adamw is False  # CPU params: the foreach step unless asked
        step.fused_adamw = fused
        gen = torch.Generator().manual_seed(1)
        for _ in range(4):
            tokens = torch.randint(0, 50, (8,), generator=gen)
            step(tokens, torch.randint(0, 50, (8,), generator=gen))
        runs[fused] = dict(model.named_parameters())
    moved = 0.0
    for name, p in runs[True].items():
        ref = runs[False][name]
        # Same math, another kernel: rounding-level differences over 4 steps (fp32).
        torch.testing.assert_close(p, ref, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, (p - dict(base.named_parameters())[name]).abs().max().item())
    assert moved > 1e-3  # the steps did change the weights


def test_a_nan_grad_leaves_the_fused_adamw_params_unchanged() -> None:
    model = _model(2)
    step = make_train_step(model, _loss, fpolar.PolarGradHParams(lr=0.02), fpolar.AdamWHParams(lr=1e-2))
    step.fused_adamw = True
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model[0].weight[3, 0] = float("nan")  # the embedding row used below: its grads become NaN
    before["0.weight"] = model[0].weight.detach().clone()
    step(torch.tensor([3, 3, 3]), torch.tensor([1, 2, 3]))
    for name, p in model.named_parameters():
        assert torch.equal(p.nan_to_num(7.0), before[name].nan_to_num(7.0)), name
    assert all(t.item() == 0 for t in step.adamw_state.step)  # the fused kernel counted no step
