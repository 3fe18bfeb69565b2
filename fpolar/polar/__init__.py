"""Batched polar factor: one interface, several backends.

``polar(x)`` takes any (…, m, n) tensor; the optimizer step calls ``polar_wide`` on (B, m, n) batches
that are already wide (m ≤ n), grouped by shape.

Backends (``method``):
    "newton_schulz"       odd-polynomial iteration with a coefficient schedule (fast, approximate)
    "gram_newton_schulz"  the same polynomials iterated on the m×m Gram matrix (fewer FLOPs when n ≫ m)
    "qdwh"                QR-based dynamically weighted Halley (accurate in few steps, fp32/fp64)
    "svd"                 exact U Vᵀ by SVD (reference; slow on GPU, host-syncs on CUDA)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence

import torch
from torch import Tensor

from ..coefficients import (
    Coefficient,
    CoefficientSpec,
    Overflow,
    expand_schedule,
    resolve_named,
)
from .dispatch import choose_ns_ops, gram_space_ops, use_gram_space
from .gram_newton_schulz import gram_newton_schulz
from .newton_schulz import TORCH_OPS, NSOps, newton_schulz
from .qdwh import qdwh_polar
from .svd import svd_polar

PolarMethod = Literal["newton_schulz", "gram_newton_schulz", "qdwh", "svd"]
KernelChoice = Literal["auto", "torch", "triton"]
POLAR_METHODS: tuple[str, ...] = ("newton_schulz", "gram_newton_schulz", "qdwh", "svd")
KERNEL_CHOICES: tuple[str, ...] = ("auto", "torch", "triton")

__all__ = [
    "PolarSpec",
    "PolarMethod",
    "polar",
    "polar_wide",
    "newton_schulz",
    "gram_newton_schulz",
    "qdwh_polar",
    "svd_polar",
]


@dataclass(frozen=True)
class PolarSpec:
    """Everything that decides how a polar factor is computed; built once, outside the step.

    ``dtype=None`` picks: bfloat16 for the Newton–Schulz family on CUDA, else the input dtype promoted
    to at least float32.
    """

    method: PolarMethod = "newton_schulz"
    schedule: tuple[Coefficient, ...] = ()
    safety: float = 1.0
    normalization: Literal["frobenius", "aol"] = "frobenius"
    eps: float = 1e-7
    dtype: Optional[torch.dtype] = None
    kernels: KernelChoice = "auto"
    qdwh_iters: int = 2
    qdwh_l0: Optional[float] = None
    polish_steps: int = 1
    gram_restart: int = 3

    @staticmethod
    def build(
        method: str = "newton_schulz",
        *,
        coefficients: CoefficientSpec = "polar_express",
        steps: Optional[int] = None,
        overflow: Overflow = "repeat_last",
        eps: float = 1e-7,
        dtype: Optional[torch.dtype] = None,
        kernels: str = "auto",
        qdwh_iters: int = 2,
        qdwh_l0: Optional[float] = None,
        polish_steps: int = 1,
        gram_restart: int = 3,
    ) -> "PolarSpec":
        """Validate user-facing options and expand the coefficient schedule; raises naming the bad value."""
        if method not in POLAR_METHODS:
            raise ValueError(f"unknown polar method {method!r}; expected one of {list(POLAR_METHODS)}")
        if kernels not in KERNEL_CHOICES:
            raise ValueError(f"unknown kernels choice {kernels!r}; expected one of {list(KERNEL_CHOICES)}")
        named = resolve_named(coefficients)
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)):
            raise TypeError(f"ns_steps must be an int or None, got {steps!r}")
        if steps is not None and steps < 0:
            raise ValueError(f"ns_steps must be ≥ 0, got {steps}")
        if overflow not in ("repeat_last", "cycle"):
            raise ValueError(f"unknown schedule overflow {overflow!r}; expected 'repeat_last' or 'cycle'")
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be a float ≥ 0, got {eps!r}")
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"polar dtype must be a floating torch.dtype or None, got {dtype!r}")
        if method == "qdwh" and dtype not in (None, torch.float32, torch.float64):
            raise ValueError(f"qdwh runs in float32 or float64, got dtype={dtype}")
        for name, v, lo in (("qdwh_iters", qdwh_iters, 0), ("polish_steps", polish_steps, 0), ("gram_restart", gram_restart, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int ≥ {lo}, got {v!r}")
        if qdwh_l0 is not None and not (0.0 < qdwh_l0 <= 1.0):
            raise ValueError(f"qdwh_l0 must lie in (0, 1], got {qdwh_l0!r}")
        n_steps = named.default_steps if steps is None else steps
        return PolarSpec(
            method=method,  # type: ignore[arg-type]
            schedule=expand_schedule(named.coefficients, n_steps, overflow),
            safety=named.safety,
            normalization=named.normalization,
            eps=float(eps),
            dtype=dtype,
            kernels=kernels,  # type: ignore[arg-type]
            qdwh_iters=qdwh_iters,
            qdwh_l0=qdwh_l0,
            polish_steps=polish_steps,
            gram_restart=gram_restart,
        )

    def check_runnable(self, groups: Sequence[Any]) -> None:
        """Raise ValueError for settings that could only fail inside a step on these shape groups
        (anything with ``.device``): Triton kernels asked for on a device without them."""
        if self.kernels == "triton" and self.method in ("newton_schulz", "gram_newton_schulz"):
            for g in groups:
                if g.device.type != "cuda":
                    raise ValueError(
                        f"kernels='triton' needs CUDA tensors, but params are on {g.device}; use 'auto' or 'torch'"
                    )

    def compute_dtype(self, x: Tensor) -> torch.dtype:
        """The dtype the iteration runs in for input ``x``."""
        return self.compute_dtype_for(x.dtype, x.is_cuda)

    def compute_dtype_for(self, input_dtype: torch.dtype, on_cuda: bool) -> torch.dtype:
        """The dtype the iteration runs in for inputs of ``input_dtype``, on CUDA or not."""
        if self.dtype is not None:
            return self.dtype
        if self.method in ("newton_schulz", "gram_newton_schulz") and on_cuda:
            return torch.bfloat16
        return torch.promote_types(input_dtype, torch.float32)


def ns_ops_for(x: Tensor, spec: PolarSpec) -> NSOps:
    """cuBLAS batched matmul or the Triton kernels, per ``spec.kernels`` (see ``fpolar.polar.dispatch``)."""
    return choose_ns_ops(x, spec.kernels, spec.compute_dtype(x))


def polar_wide(x: Tensor, spec: PolarSpec) -> Tensor:
    """Polar factor of each matrix of a wide batch ``x`` (B, m, n), m ≤ n; result in ``spec.compute_dtype(x)``.

    ``x`` is not modified. No host sync for the Newton–Schulz family and QDWH.
    """
    dtype = spec.compute_dtype(x)
    method = spec.method
    if method == "newton_schulz" and use_gram_space(x, spec.kernels, spec.normalization, dtype):
        method = "gram_newton_schulz"
    if method == "newton_schulz":
        return newton_schulz(
            x,
            spec.schedule,
            safety=spec.safety,
            normalization=spec.normalization,
            eps=spec.eps,
            dtype=dtype,
            ops=ns_ops_for(x, spec),
        )
    if method == "gram_newton_schulz":
        return gram_newton_schulz(
            x,
            spec.schedule,
            safety=spec.safety,
            eps=spec.eps,
            dtype=dtype,
            restart_every=spec.gram_restart,
            ops=gram_space_ops(x, spec.kernels, dtype),
        )
    if method == "qdwh":
        return qdwh_polar(x, iters=spec.qdwh_iters, l0=spec.qdwh_l0, polish_steps=spec.polish_steps, dtype=dtype)
    return svd_polar(x.to(dtype))


def polar(
    x: Tensor,
    method: PolarMethod = "newton_schulz",
    *,
    coefficients: CoefficientSpec = "polar_express",
    steps: Optional[int] = None,
    overflow: Overflow = "repeat_last",
    eps: float = 1e-7,
    dtype: Optional[torch.dtype] = None,
    kernels: KernelChoice = "auto",
    qdwh_iters: int = 2,
    qdwh_l0: Optional[float] = None,
    polish_steps: int = 1,
    gram_restart: int = 3,
) -> Tensor:
    """The polar factor U Vᵀ of every matrix in ``x`` (…, m, n), where each matrix = U Σ Vᵀ.

    Leading dimensions are a batch. Tall matrices are transposed internally so the iteration runs on
    the small Gram side. ``x`` is not modified; the result has ``x``'s shape and dtype. See
    ``PolarSpec.build`` for the options (``steps=None`` uses the schedule's own length; ``dtype=None``
    is bfloat16 for Newton–Schulz on CUDA, else at least float32).

    Raises TypeError/ValueError for tensors that are not real dense floating matrices.
    """
    from ..validation import check_matrix_tensor

    check_matrix_tensor(x, "x")
    spec = PolarSpec.build(
        method,
        coefficients=coefficients,
        steps=steps,
        overflow=overflow,
        eps=eps,
        dtype=dtype,
        kernels=kernels,
        qdwh_iters=qdwh_iters,
        qdwh_l0=qdwh_l0,
        polish_steps=polish_steps,
        gram_restart=gram_restart,
    )
    m, n = x.shape[-2:]
    batch = x.reshape(-1, m, n)
    tall = m > n
    wide = batch.mT if tall else batch
    out = polar_wide(wide, spec)
    if tall:
        out = out.mT
    return out.reshape(x.shape).to(x.dtype)
