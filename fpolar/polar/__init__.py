"""Batched polar factor: one interface, several backends.

``polar(x)`` takes any (…, m, n) tensor. The optimizer step calls ``polar_in_orientation`` on one
(B, m, n) batch per shape group, which hands ``polar_wide`` the wide (m ≤ n) side. The implementation
(``PolarImpl``: method, kernels, iteration dtype) is decided once per shape group by
``PolarSpec.impl_for`` (see ``fpolar.polar.dispatch``).

Backends (``method``):
    "newton_schulz"       odd-polynomial iteration with a coefficient schedule (fast, approximate)
    "gram_newton_schulz"  the same polynomials iterated on the m×m Gram matrix (fewer FLOPs when n ≫ m)
    "qdwh"                QR-based dynamically weighted Halley (accurate in few steps, fp32/fp64)
    "svd"                 exact U Vᵀ by SVD (reference; slow on GPU, host-syncs on CUDA)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence

import torch
from torch import Tensor

from ..coefficients import (
    Coefficient,
    CoefficientSpec,
    Overflow,
    resolve_named,
    schedule_for,
)
from .dispatch import (
    PolarImpl,
    decide_polar_impl,
    hopper_with_tma,
    gram_ops_for,
    measured_auto_impl,
    ns_ops,
    tune_before_use,
)
from .gram_newton_schulz import gram_newton_schulz
from .newton_schulz import newton_schulz
from .qdwh import check_l0, qdwh_polar
from .svd import svd_polar
from .tensor_parallel import tensor_parallel_polar

PolarMethod = Literal["newton_schulz", "gram_newton_schulz", "qdwh", "svd"]
KernelChoice = Literal["auto", "torch", "triton", "symmetric"]
POLAR_METHODS: tuple[str, ...] = ("newton_schulz", "gram_newton_schulz", "qdwh", "svd")
KERNEL_CHOICES: tuple[str, ...] = ("auto", "torch", "triton", "symmetric")

# The options of ``PolarSpec.build`` and ``polar()``: the names of the ``PolarGradHParams`` fields they
# come from, so one option has one name from the hparams down to the backends.
POLAR_OPTIONS: tuple[str, ...] = (
    "coefficients",
    "ns_steps",
    "schedule_overflow",
    "eps",
    "polar_dtype",
    "kernels",
    "qdwh_iters",
    "qdwh_l0",
    "polish_steps",
    "gram_restart",
)

__all__ = [
    "POLAR_OPTIONS",
    "PolarImpl",
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

    Field names are the ``PolarGradHParams`` names (``method`` is its ``polar``). ``polar_dtype=None``
    picks: bfloat16 for the Newton–Schulz family on CUDA, else the input dtype promoted to at least
    float32.
    """

    method: PolarMethod = "newton_schulz"
    schedule: tuple[Coefficient, ...] = ()
    safety: float = 1.0
    normalization: Literal["frobenius", "aol"] = "frobenius"
    eps: float = 1e-7
    polar_dtype: Optional[torch.dtype] = None
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
        ns_steps: Optional[int] = None,
        schedule_overflow: Overflow = "repeat_last",
        eps: float = 1e-7,
        polar_dtype: Optional[torch.dtype] = None,
        kernels: str = "auto",
        qdwh_iters: int = 2,
        qdwh_l0: Optional[float] = None,
        polish_steps: int = 1,
        gram_restart: int = 3,
    ) -> "PolarSpec":
        """Validate user-facing options and expand the coefficient schedule; raises naming the bad value.

        The options (``POLAR_OPTIONS``) mean what the ``PolarGradHParams`` fields of the same names mean.
        """
        if method not in POLAR_METHODS:
            raise ValueError(f"unknown polar method {method!r}; expected one of {list(POLAR_METHODS)}")
        if kernels not in KERNEL_CHOICES:
            raise ValueError(f"unknown kernels choice {kernels!r}; expected one of {list(KERNEL_CHOICES)}")
        named = resolve_named(coefficients)
        if ns_steps is not None and (isinstance(ns_steps, bool) or not isinstance(ns_steps, int)):
            raise TypeError(f"ns_steps must be an int or None, got {ns_steps!r}")
        if ns_steps is not None and ns_steps < 0:
            raise ValueError(f"ns_steps must be ≥ 0, got {ns_steps}")
        if schedule_overflow not in ("repeat_last", "cycle"):
            raise ValueError(
                f"unknown schedule overflow {schedule_overflow!r}; expected 'repeat_last' or 'cycle'"
            )
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps < math.inf):
            # eps = 0 turns a zero grad into 0/0 = NaN; an infinite eps zeroes every update
            raise ValueError(f"eps must be a finite float > 0, got {eps!r}")
        if polar_dtype is not None and (not isinstance(polar_dtype, torch.dtype) or not polar_dtype.is_floating_point):
            raise TypeError(f"polar dtype must be a floating torch.dtype or None, got polar_dtype={polar_dtype!r}")
        if method in ("qdwh", "svd") and polar_dtype not in (None, torch.float32, torch.float64):
            # torch.linalg's QR / SVD have no half-precision or float8 kernels: it would fail mid-step
            raise ValueError(f"{method} runs in float32 or float64, got polar_dtype={polar_dtype}")
        for name, v, lo in (
            ("qdwh_iters", qdwh_iters, 0),
            ("polish_steps", polish_steps, 0),
            ("gram_restart", gram_restart, 1),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int ≥ {lo}, got {v!r}")
        if qdwh_l0 is not None:
            check_l0(qdwh_l0, qdwh_iters)
        return PolarSpec(
            method=method,  # type: ignore[arg-type]
            schedule=schedule_for(coefficients, ns_steps, schedule_overflow),
            safety=named.safety,
            normalization=named.normalization,
            eps=float(eps),
            polar_dtype=polar_dtype,
            kernels=kernels,  # type: ignore[arg-type]
            qdwh_iters=qdwh_iters,
            qdwh_l0=qdwh_l0,
            polish_steps=polish_steps,
            gram_restart=gram_restart,
        )

    def compute_dtype(self, x: Tensor) -> torch.dtype:
        """The dtype the iteration runs in for input ``x``."""
        return self.compute_dtype_for(x.dtype, x.is_cuda)

    def compute_dtype_for(self, input_dtype: torch.dtype, on_cuda: bool) -> torch.dtype:
        """The dtype the iteration runs in for inputs of ``input_dtype``, on CUDA or not."""
        if self.polar_dtype is not None:
            return self.polar_dtype
        if self.method in ("newton_schulz", "gram_newton_schulz") and on_cuda:
            return torch.bfloat16
        return torch.promote_types(input_dtype, torch.float32)

    def impl_for(
        self, m: int, n: int, input_dtype: torch.dtype, device: torch.device, batch: int = 1
    ) -> PolarImpl:
        """The implementation for a (batch, m, n) group of ``input_dtype`` on ``device``, either
        orientation (the iteration runs on the wide side). See ``fpolar.polar.dispatch`` for the rules;
        ``kernels="auto"`` on CUDA times the candidates here, once per key (outside any trace)."""
        on_cuda = device.type == "cuda"
        wide_m, wide_n = min(m, n), max(m, n)
        impl = decide_polar_impl(
            self.method, self.kernels, self.normalization, wide_m, wide_n, on_cuda,
            self.compute_dtype_for(input_dtype, on_cuda), input_dtype, tma=hopper_with_tma(device),
        )
        if (
            self.kernels == "auto"
            and on_cuda
            and self.method in ("newton_schulz", "gram_newton_schulz")
            and not torch.compiler.is_compiling()  # a traced step keeps the rules: no timing, no file
        ):
            key = (self.method, len(self.schedule), self.gram_restart)
            impl = measured_auto_impl(
                self.method, impl, key, max(int(batch), 1), wide_m, wide_n, input_dtype, device, self.normalization,
                lambda chosen, x: polar_wide(x, self, chosen),
            )
        elif impl.kernels in ("triton", "symmetric", "symmetric_in_graphs") and on_cuda and not torch.compiler.is_compiling():
            # the kernel configs are tuned now, before any step is traced or captured
            tune_before_use(
                ("prepare", impl.method, wide_m, wide_n, max(int(batch), 1), str(input_dtype), str(impl.polar_dtype)),
                device,
                lambda: polar_wide(torch.randn(max(int(batch), 1), wide_m, wide_n, device=device, dtype=input_dtype), self, impl),
            )
        return impl


def polar_wide(
    x: Tensor,
    spec: PolarSpec,
    impl: Optional[PolarImpl] = None,
    *,
    normalized: bool = False,
    consume_input: bool = False,
    input_scale: Optional[Tensor] = None,
) -> Tensor:
    """Polar factor of each matrix of a wide batch ``x`` (B, m, n), m ≤ n, in ``impl.polar_dtype``.

    ``impl`` is the decision ``spec.impl_for`` made for ``x``'s shape group (taken here from ``x`` when
    None). ``x`` is not modified unless ``consume_input``. No host sync for the Newton–Schulz family
    and QDWH.
    ``normalized``: ``x`` is already Frobenius-normalized (``fpolar::momentum_polar_input``'s X), so
    the Newton–Schulz family skips that pass.
    ``consume_input``: the caller does not read ``x`` after this call; Gram Newton–Schulz may then
    reuse its memory for a later iterate (less workspace; ``x``'s values are then undefined).
    ``input_scale``: (B,) fp32, with ``normalized``: the normalized input is input_scale_b·x_b, its
    scale deferred to the iteration (Gram Newton–Schulz only; ``dispatch.defers_input_scale``).
    """
    if impl is None:
        impl = spec.impl_for(x.size(-2), x.size(-1), x.dtype, x.device)
    dtype = impl.polar_dtype
    if input_scale is not None and impl.method != "gram_newton_schulz":
        raise ValueError(f"input_scale (a deferred input scale) is taken by gram_newton_schulz only, not {impl.method}")
    if impl.method == "newton_schulz":
        return newton_schulz(
            x,
            spec.schedule,
            safety=spec.safety,
            normalization=spec.normalization,
            eps=spec.eps,
            polar_dtype=dtype,
            ops=ns_ops(impl.kernels, x.device),
            normalized=normalized,
        )
    if impl.method == "gram_newton_schulz":
        return gram_newton_schulz(
            x,
            spec.schedule,
            safety=spec.safety,
            eps=spec.eps,
            polar_dtype=dtype,
            gram_restart=spec.gram_restart,
            ops=ns_ops(impl.kernels, x.device),
            normalized=normalized,
            gram_ops=gram_ops_for(impl.kernels),
            consume_input=consume_input,
            input_scale=input_scale,
        )
    if impl.method == "qdwh":
        return qdwh_polar(
            x, qdwh_iters=spec.qdwh_iters, qdwh_l0=spec.qdwh_l0, polish_steps=spec.polish_steps, polar_dtype=dtype
        )
    return svd_polar(x.to(dtype))


def polar_in_orientation(x: Tensor, spec: PolarSpec, impl: Optional[PolarImpl] = None) -> Tensor:
    """Polar factor of each matrix of ``x`` (B, m, n), either orientation, returned in that orientation
    (in ``impl.polar_dtype``): a tall batch is iterated as its wide transpose, so the Gram side is
    min(m, n). Both transposes are views."""
    tall = x.size(-2) > x.size(-1)
    o = polar_wide(x.mT if tall else x, spec, impl)
    return o.mT if tall else o


def polar(
    x: Tensor,
    method: PolarMethod = "newton_schulz",
    *,
    process_group: Any = None,
    partition_dim: Optional[int] = None,
    tp_mode: str = "distributed",
    partition_sizes: Optional[Sequence[int]] = None,
    **options: Any,
) -> Tensor:
    """The polar factor U Vᵀ of every matrix in ``x`` (…, m, n), where each matrix = U Σ Vᵀ.

    Tensor parallel: with ``process_group`` and ``partition_dim``, ``x`` is this rank's shard of matrices
    split along ``partition_dim`` (−2 rows, −1 columns) and the result is this rank's shard of their
    polar factor; ``tp_mode`` "distributed" (Newton–Schulz, the Gram matrix all-reduced each
    iteration; needs the split on the long side) or "duplicated" (gather, any method, narrow);
    ``partition_sizes``: the split dim's size on every rank when uneven. See
    ``fpolar.polar.tensor_parallel``.

    Leading dimensions are a batch. Tall matrices are transposed internally so the iteration runs on
    the small Gram side. ``x`` is not modified; the result has ``x``'s shape and dtype.

    ``method`` is ``PolarGradHParams.polar``; ``options`` are the ``POLAR_OPTIONS``, with the names and
    meanings of the ``PolarGradHParams`` fields: ``coefficients``, ``ns_steps`` (None: the schedule's
    own length), ``schedule_overflow``, ``eps``, ``polar_dtype`` (None: bfloat16 for Newton–Schulz on
    CUDA, else at least float32), ``kernels``, ``qdwh_iters``, ``qdwh_l0``, ``polish_steps``,
    ``gram_restart``. The implementation is decided once per call (``PolarSpec.impl_for``).

    Raises TypeError/ValueError for tensors that are not real dense floating matrices, unknown
    options and bad option values.
    """
    from ..validation import check_matrix_tensor, check_real_dense_float

    if process_group is None:
        check_matrix_tensor(x, "x")
    else:  # a tensor-parallel shard may be empty (more ranks than rows)
        check_real_dense_float(x, "x")
    unknown = sorted(set(options) - set(POLAR_OPTIONS))
    if unknown:
        raise TypeError(f"polar() got unknown options {unknown}; expected some of {list(POLAR_OPTIONS)}")
    spec = PolarSpec.build(method, **options)
    if process_group is not None or partition_dim is not None:
        if process_group is None or partition_dim is None:
            raise ValueError(
                f"a tensor-parallel polar needs both process_group and partition_dim, got "
                f"process_group={process_group!r}, partition_dim={partition_dim!r}"
            )
        def polar_whole(batch: Tensor) -> Tensor:
            return polar_in_orientation(batch, spec, spec.impl_for(batch.size(-2), batch.size(-1), batch.dtype, batch.device))

        return tensor_parallel_polar(
            x, spec, polar_whole, process_group=process_group, partition_dim=partition_dim, mode=tp_mode,
            partition_sizes=partition_sizes,
        )
    m, n = x.shape[-2:]
    impl = spec.impl_for(m, n, x.dtype, x.device, batch=x.numel() // max(m * n, 1))
    out = polar_in_orientation(x.reshape(-1, m, n), spec, impl)
    return out.reshape(x.shape).to(x.dtype)
