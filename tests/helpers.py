"""Float64 references and random inputs shared by the tests."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def exact_polar(x: Tensor) -> Tensor:
    """U Vᵀ of each matrix, by float64 SVD (inputs here are full rank)."""
    u, _, vh = torch.linalg.svd(x.double(), full_matrices=False)
    return u @ vh


def nuclear_norm(x: Tensor) -> Tensor:
    return torch.linalg.svdvals(x.double()).sum(dim=-1)


def with_condition(m: int, n: int, kappa: float, gen: torch.Generator | None = None, batch: int = 0) -> Tensor:
    """A random float64 m×n matrix (or a batch) with singular values log-spaced in [1/κ, 1]."""
    k = min(m, n)
    shape = (batch,) if batch else ()
    u, _ = torch.linalg.qr(torch.randn(*shape, m, k, dtype=torch.float64, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(*shape, n, k, dtype=torch.float64, generator=gen))
    s = torch.logspace(0, -math.log10(kappa), k, dtype=torch.float64)
    return (u * s) @ v.mT


def orthogonality_error(o: Tensor) -> float:
    """‖OOᵀ − I‖₂ on the small side, max over a batch."""
    o = o.double()
    g = o @ o.mT if o.size(-2) <= o.size(-1) else o.mT @ o
    eye = torch.eye(g.size(-1), dtype=torch.float64)
    return torch.linalg.matrix_norm(g - eye, 2).max().item()


def rel_err(a: Tensor, b: Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def bitwise_equal(a: Tensor, b: Tensor) -> bool:
    """Same dtype, shape and bytes (so NaN == NaN and −0 ≠ +0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def run_polargrad_steps(params, grad_seq, hp):
    """``fpolar.polargrad_step`` on clones of ``params``, one call per grad list of ``grad_seq``, from a
    fresh state; returns (the stepped clones, the state). The inputs are not modified."""
    import fpolar

    params = [p.clone() for p in params]
    state = fpolar.init_state(params, hp)
    for grads in grad_seq:
        fpolar.polargrad_step(params, grads, state, hp)
    return params, state


def max_abs_agrees(out: Tensor, ref: Tensor) -> bool:
    """``fpolar::max_abs``'s contract against its twin's ``ref``: 0-d and the same dtype; the twin's bits
    where it is finite, else NaN for NaN and +inf for inf."""
    if out.shape != () or out.dtype != ref.dtype:
        return False
    if torch.isnan(ref):
        return bool(torch.isnan(out))
    if torch.isinf(ref):
        return out.item() == math.inf
    return bitwise_equal(out, ref)
