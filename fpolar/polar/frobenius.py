"""Frobenius normalization of the polar input, scale-invariant over the whole range of the dtype.

NS needs σ_max(X) ≤ 1, and ‖X‖_F ≥ σ_max. Squaring the entries to get ‖X‖_F overflows float32 from
|x| ≈ 1.8e19 (‖X‖_F = inf, X / inf = 0: the step silently vanishes) and, with the eps added to the
norm, entries below ≈ eps/√(mn) are scaled to ≈ 0 instead of 1. Dividing by max|x| first puts every
entry in [−1, 1] with at least one of magnitude 1, so the squares neither overflow nor underflow, and
eps is relative to a norm ≥ 1: X and c·X give the same result for any c > 0 that keeps c·X finite
(up to the rounding of the division).
"""

from __future__ import annotations

import torch
from torch import Tensor


def frobenius_normalize(x: Tensor, safety: float, eps: float, dtype: torch.dtype) -> Tensor:
    """X / (safety·‖X‖_F + eps·max|X|) per matrix of the batch (…, m, n), computed in at least float32 from
    X / max|X|; result in ``dtype``. A zero matrix stays zero. Every singular value of the result is
    ≤ 1/safety."""
    acc = torch.promote_types(x.dtype, torch.float32)
    # No upcast copy of a narrower x: the max reads it as is, and the division by the (…, 1, 1)
    # float peak promotes each element on the fly (exactly) into the float result.
    peak = torch.linalg.vector_norm(x, ord=float("inf"), dim=(-2, -1), keepdim=True, dtype=acc)
    # A zero matrix keeps peak = 0; dividing by 1 instead leaves it zero.
    unit = x / torch.where(peak > 0, peak, torch.ones_like(peak))
    norm = torch.linalg.vector_norm(unit, dim=(-2, -1), keepdim=True)
    denom = norm * safety + eps
    if dtype == unit.dtype:
        return unit.div_(denom)  # unit is this function's own temporary: no second (B, m, n)
    # The division and the cast in one pass, into the result (same rounding as dividing, then .to).
    # The result is made contiguous: a tall group's X is a transposed view, and torch.compile refuses
    # ``out=`` into a non-contiguous tensor; the iteration reads a contiguous X at least as fast.
    return torch.div(unit, denom, out=torch.empty(unit.shape, dtype=dtype, device=unit.device))
