"""QDWH: the QR-based dynamically weighted Halley iteration (Nakatsukasa, Bai & Gygi 2010).

Each step maps every singular value σ of X (scaled so σ ∈ [l, 1]) by the rational function
σ(a + bσ²)/(1 + cσ²), with (a, b, c) chosen from the current lower bound l so that [l, 1] lands as close
to 1 as a degree-(3, 2) rational can put it. From l₀ = machine eps, six steps reach fp64 accuracy.

The weights depend only on l₀, never on the data, so they are Python constants: no host sync, and the
step count is static for torch.compile.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def qdwh_weights(l: float) -> tuple[float, float, float, float]:
    """(a, b, c, l_next) of one dynamically weighted Halley step from lower bound ``l`` ∈ (0, 1]."""
    l2 = l * l
    gamma = (4.0 * (1.0 - l2) / (l2 * l2)) ** (1.0 / 3.0)
    a = math.sqrt(1.0 + gamma) + 0.5 * math.sqrt(
        8.0 - 4.0 * gamma + 8.0 * (2.0 - l2) / (l2 * math.sqrt(1.0 + gamma))
    )
    b = (a - 1.0) ** 2 / 4.0
    c = a + b - 1.0
    l_next = l * (a + b * l2) / (1.0 + c * l2)
    return a, b, c, min(l_next, 1.0)


def _halley_qr(x: Tensor, a: float, b: float, c: float) -> Tensor:
    """One step in QR form on wide x (m ≤ n): stable for any c.

    Work on the tall Y = Xᵀ (n×m): [√c·Y; I] = [Q₁; Q₂]R gives Y(I + cYᵀY)⁻¹ = Q₁Q₂ᵀ/√c.
    """
    m, n = x.shape[-2:]
    y = x.mT
    eye = torch.eye(m, dtype=x.dtype, device=x.device).expand(*x.shape[:-2], m, m)
    q, _ = torch.linalg.qr(torch.cat([math.sqrt(c) * y, eye], dim=-2))
    q1, q2 = q[..., :n, :], q[..., n:, :]
    y_next = (b / c) * y + ((a - b / c) / math.sqrt(c)) * (q1 @ q2.mT)
    return y_next.mT


def _halley_cholesky(x: Tensor, a: float, b: float, c: float) -> Tensor:
    """One step in Cholesky form on wide x: (I + cXXᵀ)⁻¹X through an m×m factorization.

    Only used once c is small (I + cXXᵀ well conditioned); cholesky_ex does not check for failure, so
    there is no host sync.
    """
    m = x.shape[-2]
    eye = torch.eye(m, dtype=x.dtype, device=x.device)
    z = eye + c * (x @ x.mT)
    chol, _ = torch.linalg.cholesky_ex(z)
    return (b / c) * x + (a - b / c) * torch.cholesky_solve(x, chol)


# Cholesky form loses about log10(κ(I + cXXᵀ)) ≈ log10(c) digits; QR form below this c is wasted work.
_CHOLESKY_MAX_C = 100.0


def qdwh_polar(
    x: Tensor,
    *,
    qdwh_iters: int = 2,
    qdwh_l0: float | None = None,
    polish_steps: int = 1,
    polar_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Polar factor of each wide matrix in ``x`` (B, m, n), m ≤ n, by QDWH.

    Args:
        qdwh_iters: weighted Halley steps. 2 is the PolarGrad paper's setting (inexact: singular values
            of the result lie in about [0.73, 1] for ill-conditioned inputs); 6 converges in fp64 for any
            condition number up to 1/qdwh_l0.
        qdwh_l0: assumed lower bound on σ_min after scaling; default machine eps of ``polar_dtype``.
        polish_steps: cubic Newton–Schulz steps X ← 1.5X − 0.5XXᵀX after the Halley steps.
        polar_dtype: float32 or float64, the dtype of the whole computation and of the result.

    The input is scaled by 1/√(‖X‖₁‖X‖_∞) ≥ 1/σ_max first. A zero matrix maps to zero.
    """
    if polar_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"qdwh runs in float32 or float64, got polar_dtype={polar_dtype}")
    x = x.to(polar_dtype)
    norm1 = x.abs().sum(dim=-2).amax(dim=-1)
    norm_inf = x.abs().sum(dim=-1).amax(dim=-1)
    alpha = torch.sqrt(norm1 * norm_inf)
    # A zero matrix keeps alpha = 0; dividing by 1 instead leaves it zero.
    alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    x = x / alpha[..., None, None]
    l = torch.finfo(polar_dtype).eps if qdwh_l0 is None else float(qdwh_l0)
    for _ in range(qdwh_iters):
        a, b, c, l = qdwh_weights(l)
        x = _halley_qr(x, a, b, c) if c > _CHOLESKY_MAX_C else _halley_cholesky(x, a, b, c)
    for _ in range(polish_steps):
        x = 1.5 * x - 0.5 * (x @ x.mT) @ x
    return x
