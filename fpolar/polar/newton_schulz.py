"""Newton–Schulz iteration for the polar factor of a batch of wide matrices.

Each step on X (B, m, n), m ≤ n, is the odd polynomial

    A = X Xᵀ            (B, m, m), symmetric
    B = b·A + c·A·A      symmetric again
    X ← a·X + B·X

which maps every singular value σ to aσ + bσ³ + cσ⁵ and leaves the singular vectors alone, so a
schedule tuned to push [0, 1] towards 1 converges to U Vᵀ. The three lines are the ``NSOps``
interface: a pure-torch implementation here (cuBLAS batched matmul on GPU) and the Triton kernels of
``fpolar.kernels`` share it.
"""

from __future__ import annotations

from typing import Callable, Literal, NamedTuple, Sequence

import torch
from torch import Tensor

from ..coefficients import Coefficient
from .frobenius import frobenius_normalize  # noqa: F401  (re-exported: Gram NS uses it too)


class NSOps(NamedTuple):
    """The three lines of one NS step, as functions on batches (dim 0)."""

    gram: Callable[[Tensor], Tensor]  # X -> X Xᵀ
    poly: Callable[[Tensor, float, float], Tensor]  # (A, b, c) -> b·A + c·A·A
    apply: Callable[[Tensor, Tensor, float], Tensor]  # (X, B, a) -> a·X + B·X


def _torch_gram(x: Tensor) -> Tensor:
    return torch.bmm(x, x.mT)


def _torch_poly(a: Tensor, b: float, c: float) -> Tensor:
    # baddbmm fuses the scale-and-add into the matmul epilogue.
    return torch.baddbmm(a, a, a, beta=b, alpha=c)


def _torch_apply(x: Tensor, bm: Tensor, a: float) -> Tensor:
    # a·X in the epilogue, in fp32. Folding a·I into B instead ((B + a·I)·X, no copy of X as baddbmm's
    # β operand) rounds B + a·I to bf16: 1.7× (muon) and 3.6× (polar_express) the rounding error
    # against the float64 iteration on Gaussian 4 × 192 × 192 batches (benchmarks/rounding_error.py).
    return torch.baddbmm(x, bm, x, beta=a, alpha=1.0)


TORCH_OPS = NSOps(_torch_gram, _torch_poly, _torch_apply)



def aol_precondition(x: Tensor, eps: float, ops: NSOps) -> tuple[Tensor, Tensor]:
    """AOL row scaling (Turbo-Muon): with A = XXᵀ and s_i = 1/√(Σ_j |A_ij|), return (diag(s)X, diag(s)A diag(s)).

    By Gershgorin, diag(s)·A·diag(s) has spectral norm ≤ 1, so the scaled X has σ_max ≤ 1 with a much
    tighter lower end than Frobenius scaling; the scaled Gram matrix is reused by the first NS step.
    """
    a = ops.gram(x)
    s = torch.rsqrt(a.abs().sum(dim=-1, dtype=torch.float32) + eps)  # (B, m)
    xs = (x * s.unsqueeze(-1)).to(x.dtype)
    as_ = (a * s.unsqueeze(-1) * s.unsqueeze(-2)).to(a.dtype)
    return xs, as_


def newton_schulz(
    x: Tensor,
    schedule: Sequence[Coefficient],
    *,
    safety: float = 1.0,
    normalization: Literal["frobenius", "aol"] = "frobenius",
    eps: float = 1e-7,
    polar_dtype: torch.dtype = torch.bfloat16,
    ops: NSOps = TORCH_OPS,
    normalized: bool = False,
) -> Tensor:
    """Polar factor of each wide matrix in ``x`` by Newton–Schulz.

    Args:
        x: (B, m, n) with m ≤ n, any float dtype; not modified.
        schedule: the (a, b, c) of each step, already expanded to the step count.
        safety, normalization, eps: how X is scaled before the first step (see ``coefficients``):
            X / (safety·‖X‖_F + eps), then for "aol" also the AOL row scaling (``aol_precondition``).
        polar_dtype: the dtype the iteration runs in (matmuls accumulate in fp32 on GPU).
        ops: the implementation of the three lines.
        normalized: ``x`` is already X / (safety·‖X‖_F + eps·max|X|): skip that pass (AOL still runs).

    Returns:
        (B, m, n) in ``polar_dtype``. A zero matrix maps to zero.
    """
    if x.size(-2) > x.size(-1):
        raise ValueError(f"newton_schulz expects wide matrices (m ≤ n), got shape {tuple(x.shape)}")
    # Every schedule starts from X/‖X‖_F, cast to the iteration dtype. AOL then scales the rows; its
    # s_i are invariant to a scalar factor on X, so the Frobenius step before it changes the result
    # only through eps and rounding.
    # normalized: X arrives divided by its norm already (the fused glue), in the iteration dtype.
    x = x.to(polar_dtype) if normalized else frobenius_normalize(x, safety, eps, polar_dtype)
    if ops is not TORCH_OPS:
        # A tall group arrives as a transposed view; cuBLAS takes that as is, the Triton ops would
        # copy it inside each call. One copy here, fused into the normalization under compile.
        x = x.contiguous()
    gram = None
    if normalization == "aol":
        x, gram = aol_precondition(x, eps, ops)
    for a, b, c in schedule:
        if gram is None:
            gram = ops.gram(x)
        x = ops.apply(x, ops.poly(gram, b, c), a)
        gram = None
    return x
