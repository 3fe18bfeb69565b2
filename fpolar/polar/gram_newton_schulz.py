"""Gram Newton–Schulz: the NS iteration carried out on the small Gram matrix (Zhang, Amsel, Chen, Dao 2026).

Every NS step is X_{k+1} = p_k(R_k)·X_k with R_k = X_k X_kᵀ (m×m) and p_k(R) = aI + bR + cR². So
X_k = Q_k X₀ with Q_{k+1} = p_k(R_k) Q_k, and R_{k+1} = p_k(R_k) R_k p_k(R_k) (p_k(R_k) commutes with R_k).
All the work per step is m×m; X is touched only by one Gram product and one final Q·X per block, which
wins when n ≫ m. Low-precision error accumulates in R, so the iteration restarts (X ← QX, R ← XXᵀ) every
``gram_restart`` steps (default 3: 5 steps run as blocks of 3 + 2, the same split as the reference
implementation's restart before step 2, mirrored).

FLOPs for 5 steps on m×n, in units of m³ with n = 4m: 90 for dense NS, 60 here (no symmetry used).

Which m×m products are symmetric, and so can be computed from their lower triangle (``GramOps``,
fpolar's lower-tile kernels when Triton is chosen):
- R = X Xᵀ: a Gram matrix, symmetric for any X.
- P = aI + bR + cR²: a polynomial in a symmetric R; R² = R·Rᵀ is a Gram matrix of R's rows.
- R' = P·R·P: a congruence of a symmetric R by a symmetric P, symmetric whatever P and R are. It is
  computed as U = P·R (a full product) and then P·Uᵀ from its lower triangle (row i of U is column
  i of R·P).
- Q' = P·Q is symmetric only in exact arithmetic (P and Q are both polynomials in the block's
  first R, so they commute); in rounding they commute only approximately, so it stays a full product.
  Measured on the kernels' torch twins (``benchmarks/rounding_error.py``: bf16, 4 × 128 × 512,
  against the float64 iteration of the same schedule): taking Q' from its lower triangle raised the
  rounding error by 2–6% (polar_express on a decaying spectrum: 0.157 against 0.149), so it is not
  done.

A deferred input scale (``input_scale``; ``fpolar.fused_glue``): X₀ = diag(s)·V with V given unscaled.
Only the first block reads X₀, through R₀ = X₀X₀ᵀ = s²·VVᵀ and X₁ = Q·X₀ = (s·P_last)⋯P₀·V, so s
goes into the first Gram product and into the block's last polynomial (which no congruence reads),
both in fp32 inside the kernels' epilogues: no pass over the m×n V to scale it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..coefficients import Coefficient
from .newton_schulz import TORCH_OPS, NSOps, frobenius_normalize


class GramOps(NamedTuple):
    """The m×m products of Gram Newton–Schulz (the symmetric ones may use their symmetry: module doc),
    and the Gram product of a deferred-scale input. ``scale`` arguments are (B,) fp32, one per matrix."""

    # (R, a, b, c, scale) -> scale·(a·I + b·R + c·R²), R symmetric; scale None: 1
    poly: Callable[[Tensor, float, float, float, Optional[Tensor]], Tensor]
    congruence: Callable[[Tensor, Tensor], Tensor]  # (P, R) -> P·R·P, P and R symmetric
    product: Callable[[Tensor, Tensor], Tensor]  # (P, Q) -> P·Q
    scaled_gram: Callable[[Tensor, Tensor], Tensor]  # (V, s) -> s²·V Vᵀ, V (B, m, n)


def times_per_matrix(t: Tensor, scale: Optional[Tensor]) -> Tensor:
    """t_b·scale_b for each matrix of t, multiplied in fp32 and rounded back to t's dtype (scale None: t)."""
    if scale is None:
        return t
    return (t.float() * scale.float()[:, None, None]).to(t.dtype)


def torch_scaled_gram(v: Tensor, scale: Tensor) -> Tensor:
    """s²·V Vᵀ with batched matmul: the product rounded to V's dtype, then ·s·s in fp32 and rounded again
    (``fpolar::sym_gram`` scales before its one rounding)."""
    r = torch.bmm(v, v.mT)
    s = scale.float()[:, None, None]
    return (r.float() * s * s).to(r.dtype)


def torch_polynomial(r: Tensor, a: float, b: float, c: float, scale: Optional[Tensor] = None) -> Tensor:
    """scale·(a·I + b·R + c·R²) with batched matmul: ``baddbmm`` fuses b·R into the product's epilogue,
    a·I is added to the rounded result, and ``scale`` (if given) multiplies the rounded polynomial.
    (``fpolar::sym_poly`` adds a·I and applies the scale in fp32 before its one rounding: on the torch
    twins, bf16, 4 × 128 × 512, a·I inside takes the rounding error of polar_express Gram NS5 against
    the float64 iteration from 0.062 to 0.019 on Gaussian inputs and from 0.154 to 0.149 on a
    decaying spectrum; ``benchmarks/rounding_error.py``.)"""
    p = torch.baddbmm(r, r, r, beta=b, alpha=c)
    p.diagonal(dim1=-2, dim2=-1).add_(a)  # a·I in place on a fresh tensor: the m diagonal entries only
    return times_per_matrix(p, scale)


def torch_congruence(p: Tensor, r: Tensor) -> Tensor:
    """P·R·P as two full batched products."""
    return torch.bmm(p, torch.bmm(r, p))


TORCH_GRAM_OPS = GramOps(torch_polynomial, torch_congruence, torch.bmm, torch_scaled_gram)


def gram_newton_schulz(
    x: Tensor,
    schedule: Sequence[Coefficient],
    *,
    safety: float = 1.0,
    eps: float = 1e-7,
    polar_dtype: torch.dtype = torch.bfloat16,
    gram_restart: int = 3,
    ops: NSOps = TORCH_OPS,
    gram_ops: GramOps = TORCH_GRAM_OPS,
    normalized: bool = False,
    consume_input: bool = False,
    input_scale: Optional[Tensor] = None,
) -> Tensor:
    """Polar factor of each wide matrix in ``x`` (B, m, n), m ≤ n; same result as ``newton_schulz``
    with the same schedule, up to rounding. Returns (B, m, n) in ``polar_dtype``.

    ``ops`` runs the two products that touch the m×n matrix (R = XXᵀ and X ← Q·X, as
    ``ops.apply(x, q, 0)``); ``gram_ops`` runs the m×m products.
    ``consume_input``: the caller gives ``x`` up (it is not read after this call), so its memory may
    hold a later iterate, and the result may share it; else ``x`` is not modified.
    ``input_scale``: (B,) fp32 on x's device, with ``normalized``: the normalized input is
    X₀ = input_scale_b·x_b, its scale not yet applied (module doc)."""
    if x.size(-2) > x.size(-1):
        raise ValueError(f"gram_newton_schulz expects wide matrices (m ≤ n), got shape {tuple(x.shape)}")
    if gram_restart < 1:
        raise ValueError(f"gram_restart must be ≥ 1, got {gram_restart}")
    if input_scale is not None and not normalized:
        raise ValueError("input_scale is the deferred scale of a normalized input: it needs normalized=True")
    # normalized: X arrives divided by its norm already (the fused glue), in the iteration dtype.
    given = x
    x = x.to(polar_dtype) if normalized else frobenius_normalize(x, safety, eps, polar_dtype)
    if ops is not TORCH_OPS:
        x = x.contiguous()  # see newton_schulz: one copy instead of one per Triton call
    # The block that restarts from X₁ = Q·X₀ no longer reads X₀, so when nobody else holds X₀ its memory
    # takes that block's Q·X₁: one (B, m, n) iterate less at the step's peak (on GPT-2-small's
    # 12 × 768 × 3072 group, 54 of the eager step's 202 MiB). Eager only: under torch.compile Inductor
    # plans the buffers, and an out= would be functionalized into a copy. The same product
    # (cuBLAS with β = 0), into a contiguous buffer as a fresh one would be, so the same bits.
    spare = (
        x
        if (x is not given or consume_input)
        and ops.apply is TORCH_OPS.apply  # the product below is the one ops.apply would run
        and x.is_contiguous()
        and not torch.compiler.is_compiling()
        else None
    )
    for start in range(0, len(schedule), gram_restart):
        block = schedule[start : start + gram_restart]
        owed = input_scale if start == 0 else None  # X₀ = owed·x (module doc)
        r = ops.gram(x) if owed is None else gram_ops.scaled_gram(x, owed)
        q = None
        for k, (a, b, c) in enumerate(block):
            # p = a·I + b·R + c·R²; the block's last p, read only by Q, also carries what X₀ owes
            p = gram_ops.poly(r, a, b, c, owed if k + 1 == len(block) else None)
            q = p if q is None else gram_ops.product(p, q)
            if k + 1 < len(block):  # the last step of a block needs no new R
                r = gram_ops.congruence(p, r)
        if spare is not None and spare is not x:
            x, spare = torch.bmm(q, x, out=spare), x  # the last iterate becomes the next spare
        else:
            x = ops.apply(x, q, 0.0)
    return x
