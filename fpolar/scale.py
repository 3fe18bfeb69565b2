"""How big the polar step is: s in W ← W − lr·s·O.

For an m×n parameter matrix (m = rows = fan-out, n = columns = fan-in; a conv weight counts as
(out, in·kh·kw)):

    name        s                    same rule elsewhere
    "nuclear"   ⟨O, X⟩_F ≈ ‖X‖_*     PolarGrad (Lau, Long & Su); Emerging-Optimizers PolarGrad
    "shape"     √max(1, m/n)         torch.optim.Muon adjust_lr_fn=None/"original"; Keller Jordan's Muon;
                                     Emerging-Optimizers scale_mode="shape_scaling"
    "spectral"  √max(m, n)           Emerging-Optimizers scale_mode="spectral"
    "rms_adamw" 0.2·√max(m, n)       torch.optim.Muon adjust_lr_fn="match_rms_adamw"; dion adjust_lr="rms_norm";
                                     Moonlight
    "unit_rms"  √(m/n)               Emerging-Optimizers scale_mode="unit_rms_norm"; dion adjust_lr="spectral_norm"
    "none"      1

X is the polar input (the momentum, or the Nesterov blend; the gradient in polar-first order). The
nuclear inner product is reduced in float32 (float64 for float64 inputs) because bf16 accumulation over
m·n terms loses the digits that set the step length.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

ScaleRule = Literal["nuclear", "shape", "spectral", "rms_adamw", "unit_rms", "none"]
SCALE_RULES: tuple[str, ...] = ("nuclear", "shape", "spectral", "rms_adamw", "unit_rms", "none")


def shape_scale(rule: str, m: int, n: int) -> float:
    """The constant s of a shape rule for an m×n parameter matrix (not for "nuclear")."""
    if rule == "shape":
        return math.sqrt(max(1.0, m / n))
    if rule == "spectral":
        return math.sqrt(max(m, n))
    if rule == "rms_adamw":
        return 0.2 * math.sqrt(max(m, n))
    if rule == "unit_rms":
        return math.sqrt(m / n)
    if rule == "none":
        return 1.0
    raise ValueError(f"{rule!r} is not a shape scale rule; expected one of {list(SCALE_RULES[1:])}")


def nuclear_scale(o: Tensor, x: Tensor) -> Tensor:
    """⟨O_b, X_b⟩_F for each matrix of the batch: (B, m, n) × (B, m, n) → (B,), at least float32.

    Equals ‖X_b‖_* when O_b is the exact polar factor of X_b.
    """
    acc = torch.promote_types(torch.promote_types(o.dtype, x.dtype), torch.float32)
    # One operand in ``acc`` is enough: the product promotes the other on the fly (exactly, since
    # acc is at least as wide), without an upcast copy of it.
    a, b = (o, x) if x.dtype == acc else (x, o) if o.dtype == acc else (o.to(acc), x)
    return torch.mul(a, b).sum(dim=(-2, -1), dtype=acc)
