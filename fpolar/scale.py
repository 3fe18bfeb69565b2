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
m·n terms loses the digits that set the step length; on CUDA by the ``fpolar::batched_inner`` kernel.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .kernels._common import HAS_TRITON, SUPPORTED_DTYPES
from .kernels.batched_inner import batched_inner_reference

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
    """⟨O_b, X_b⟩_F for each matrix of the batch: (B, m, n) × (B, m, n) → (B,), at least float32
    (float64 if either is float64). Any strides; nothing is mutated. Equals ‖X_b‖_* when O_b is the
    exact polar factor of X_b.

    On CUDA, eagerly and inside CUDA-graph capture, for bf16 / fp16 / fp32 operands: the
    ``fpolar::batched_inner`` kernel (one read of O and X, fp32 sums in a fixed order). Under
    torch.compile, on other devices and for float64: the torch expression
    (``batched_inner_reference``), which Inductor fuses into one reduction of its own.
    """
    if _kernel_applies(o, x):
        return torch.ops.fpolar.batched_inner(o, x)
    return batched_inner_reference(o, x)


def _kernel_applies(o: Tensor, x: Tensor) -> bool:
    # Plain tensors only: a tensor subclass (DTensor, a fake tensor) keeps the torch ops it knows.
    return (
        not torch.compiler.is_compiling()
        and o.is_cuda
        and type(o) is Tensor
        and type(x) is Tensor
        and o.dim() == 3
        and o.shape == x.shape
        and o.device == x.device
        and o.dtype in SUPPORTED_DTYPES
        and x.dtype in SUPPORTED_DTYPES
        and HAS_TRITON
    )
