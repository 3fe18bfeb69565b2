"""The parameter sets and hyperparameter grids the compile tests run over.

Shapes are small on purpose (CPU CI); what is tested is how the step compiles, which depends on the
shape *groups*, not their size.
"""

from __future__ import annotations

import itertools
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

import fpolar

# wide, tall, square, a 3-D stack of wide matrices, a conv weight that joins the wide group
# ((4, 2, 2, 2) acts as 4×8), a conv weight of its own group (6×8) and a second wide matrix:
# 4 shape groups, the wide one with 4 params (5 matrices).
MIXED_SHAPES: Tuple[Tuple[int, ...], ...] = ((4, 8), (8, 4), (4, 4), (2, 4, 8), (4, 2, 2, 2), (6, 2, 2, 2), (4, 8))

# Every polar backend, and every named Newton–Schulz schedule.
POLAR_BACKENDS: Dict[str, dict] = {
    "ns_polar_express": dict(polar="newton_schulz", coefficients="polar_express"),
    "ns_muon": dict(polar="newton_schulz", coefficients="muon"),
    "ns_quintic": dict(polar="newton_schulz", coefficients="quintic"),
    "ns_aol": dict(polar="newton_schulz", coefficients="aol"),
    "gram_newton_schulz": dict(polar="gram_newton_schulz"),
    "qdwh": dict(polar="qdwh"),
    "svd": dict(polar="svd"),
}

# order × nesterov × weight-decay mode, on the default backend.
STEP_VARIANTS: Dict[str, dict] = {
    f"{order}-{'nesterov' if nesterov else 'plain'}-{mode}": dict(order=order, nesterov=nesterov, weight_decay_mode=mode)
    for order, nesterov, mode in itertools.product(
        ("momentum_first", "polar_first"), (False, True), ("decoupled", "independent", "l2")
    )
}


def make_problem(
    shapes: Sequence[Tuple[int, ...]] = MIXED_SHAPES, dtype: torch.dtype = torch.float32, seed: int = 0
) -> Tuple[List[Tensor], List[Tensor]]:
    """Fresh random params and grads of ``shapes`` (never zeros: a zero momentum hides scale bugs)."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    return params, grads


def polar_hparams(**overrides) -> fpolar.PolarGradHParams:
    """Scheduled scalars as 0-d tensors (the compile-friendly form), nonzero decay so decay code runs."""
    kw = dict(lr=torch.tensor(0.02), weight_decay=torch.tensor(0.1))
    kw.update(overrides)
    return fpolar.PolarGradHParams(**kw)


def adamw_hparams(**overrides) -> fpolar.AdamWHParams:
    kw = dict(lr=torch.tensor(1e-2), weight_decay=torch.tensor(0.05))
    kw.update(overrides)
    return fpolar.AdamWHParams(**kw)


def polar_step(params, grads, state, hp) -> None:
    """The function under test: one functional PolarGrad step (no return, as in a train loop)."""
    fpolar.polargrad_step(params, grads, state, hp)


def adamw_step(params, grads, state, hp) -> None:
    fpolar.adamw_step(params, grads, state, hp)


def clone_all(ts: Sequence[Tensor]) -> List[Tensor]:
    return [t.clone() for t in ts]


def max_abs_diff(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    return max(float((x.detach().double() - y.detach().double()).abs().max()) for x, y in zip(a, b))


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """A conv + MLP with every kind of parameter: a 4-D conv weight and 2-D weights (PolarGrad), biases
    and LayerNorm weights (AdamW). Deterministic forward (no dropout), so compiled and eager agree."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 2),  # (4, 2, 2, 2): a 4×8 matrix
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 16),
        torch.nn.LayerNorm(16),
        torch.nn.GELU(),
        torch.nn.Linear(16, 5),
    )


def tiny_batches(steps: int, batch: int = 8, seed: int = 1) -> Tuple[Tensor, Tensor]:
    """(steps, batch, 2, 5, 5) inputs and (steps, batch) labels in [0, 5)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(steps, batch, 2, 5, 5, generator=gen), torch.randint(0, 5, (steps, batch), generator=gen)


def cross_entropy_loss(model: torch.nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return torch.nn.functional.cross_entropy(model(x), y)
