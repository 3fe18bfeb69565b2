"""Hyperparameters: frozen, validated at construction, cheap to read in the step.

Scheduled scalars (``lr``, ``weight_decay``) may be 0-d tensors: update them in place
(``hp.lr.fill_(new_lr)``) and a compiled step sees the new value without recompiling. A Python float
works too, but torch.compile specializes on it: the first new value recompiles once, then dynamo marks
it dynamic (see README, "Compile your whole train step").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Tuple, Union

import torch
from torch import Tensor

from .coefficients import CoefficientSpec, Overflow
from .nonfinite import NonfiniteMode, check_nonfinite_mode
from .polar import POLAR_OPTIONS, PolarMethod, PolarSpec
from .scale import SCALE_RULES, ScaleRule
from .validation import check_scalar

Scalar = Union[float, Tensor]


def foreach_scalar(value: Scalar, like: Tensor) -> Scalar:
    """``value`` in a form a ``torch._foreach_*`` scalar argument can take without recompiling.

    Once dynamo has marked a Python-float lr dynamic, values derived from it are symbolic floats. A
    symbolic float given to a foreach op as its scalar (or to ``torch.scalar_tensor``/``torch.full``)
    is specialized by AOTAutograd: every new lr value then recompiles, until the recompile limit sends
    the step back to eager (measured, torch 2.13). Multiplying a tensor by it does not specialize, so
    under compile the float becomes ``ones(()) * value``, a 0-d tensor on ``like``'s device for the
    foreach ``Tensor`` overloads. Eagerly it stays a float (one kernel fewer). Tensors pass through.
    """
    if isinstance(value, Tensor) or not torch.compiler.is_compiling():
        return value
    one = torch.ones((), dtype=torch.promote_types(like.dtype, torch.float32), device=like.device)
    return one * value


WeightDecayMode = Literal["decoupled", "independent", "l2"]
Order = Literal["momentum_first", "polar_first"]
WEIGHT_DECAY_MODES = ("decoupled", "independent", "l2")
ORDERS = ("momentum_first", "polar_first")


@dataclass(frozen=True, eq=False)
class PolarGradHParams:
    """Hyperparameters of ``polargrad_step`` (PolarGrad, PolarGradM, Muon).

    Per matrix parameter W with gradient G (momentum-first order, the default)::

        M ← β·M + (1−β)·G                      # EMA momentum, β = momentum
        X ← G.lerp(M, β) if nesterov else M
        O ← polar(X)
        W ← decay(W) − lr·s·extra_scale·O       # s from `scale`

    Polar-first order: O ← polar(G); M ← β·M + (1−β)·O; W ← decay(W) − lr·s·extra_scale·M
    (Nesterov: O.lerp(M, β) instead of M), with s = ⟨O, G⟩ for "nuclear".

    Attributes:
        lr: step size, float or 0-d float tensor (on the params' device for CUDA graphs). No default:
            nuclear scaling and shape scaling need lrs orders of magnitude apart.
        momentum: β ∈ [0, 1). Default 0.95.
        nesterov: default False (PolarGrad). torch.optim.Muon defaults to True.
        weight_decay: λ ≥ 0, float or 0-d tensor. Default 0.0.
        weight_decay_mode: "decoupled" W ← (1 − lr·λ)W (torch.optim.Muon/AdamW, with the lr before any
            scale rule); "independent" W ← (1 − λ)W; "l2" G ← G + λW before momentum (the user's grad
            tensors are not modified). Default "decoupled". Same names as Emerging-Optimizers.
        order: "momentum_first" (default) or "polar_first" (PolarGradM's two forms).
        scale: "nuclear" (default; PolarGrad), or a Muon shape rule: "shape", "spectral",
            "rms_adamw", "unit_rms", "none". See ``fpolar.scale`` for formulas and peers' names.
        extra_scale: constant multiplier on the update. Default 1.0.
        polar: "newton_schulz" (default), "gram_newton_schulz", "qdwh", "svd".
        coefficients: NS schedule: "polar_express" (default: accurate enough that ⟨O, X⟩ ≈ ‖X‖_*),
            "muon", "quintic", "aol", or an explicit sequence of (a, b, c).
        ns_steps: NS steps; None (default) = the schedule's own length (5; 4 for "aol").
        schedule_overflow: past the end of the list, "repeat_last" (default) or "cycle".
        eps: added to the norm before normalizing the polar input. Default 1e-7.
        polar_dtype: dtype of the polar iteration; None (default) = bfloat16 for Newton–Schulz on CUDA,
            else the param dtype promoted to at least float32.
        kernels: "auto" (default), "torch" (cuBLAS batched matmul), "triton" (fpolar's kernels for every
            product) or "symmetric" (the products whose result is symmetric on fpolar's lower-tile
            kernels at every launch, the rest on cuBLAS; CUDA only: for a step replayed as a CUDA graph
            by ``torch.compile(mode="reduce-overhead")``; "auto" does the same by itself only inside
            the graphs fpolar captures). See ``fpolar.polar.dispatch``.
        qdwh_iters, qdwh_l0, polish_steps: QDWH settings; defaults are the PolarGrad paper's
            (2 weighted Halley steps from l₀ = machine eps, then 1 Newton–Schulz polish step).
        gram_restart: Gram Newton–Schulz restart period in steps. Default 3.
        momentum_dtype: dtype of the momentum buffers; None (default) = the param dtype.
        nonfinite: "skip" (default): a call whose grads hold any NaN/±inf changes nothing (params,
            momentum, step) and adds 1 to ``state.skipped``, decided on the device without a host
            sync (on sharded params every rank decides alike: one all_reduce of one element);
            "propagate": no check, the non-finite values flow into the update.
        polar_spec: derived, not an argument: the ``PolarSpec`` built from ``polar`` and the fields
            named in ``fpolar.polar.POLAR_OPTIONS`` (the same names ``fpolar.polar()`` takes).
    """

    lr: Scalar
    momentum: float = 0.95
    nesterov: bool = False
    weight_decay: Scalar = 0.0
    weight_decay_mode: WeightDecayMode = "decoupled"
    order: Order = "momentum_first"
    scale: ScaleRule = "nuclear"
    extra_scale: float = 1.0
    polar: PolarMethod = "newton_schulz"
    coefficients: CoefficientSpec = "polar_express"
    ns_steps: Optional[int] = None
    schedule_overflow: Overflow = "repeat_last"
    eps: float = 1e-7
    polar_dtype: Optional[torch.dtype] = None
    kernels: Literal["auto", "torch", "triton", "symmetric"] = "auto"
    qdwh_iters: int = 2
    qdwh_l0: Optional[float] = None
    polish_steps: int = 1
    gram_restart: int = 3
    momentum_dtype: Optional[torch.dtype] = None
    nonfinite: NonfiniteMode = "skip"
    polar_spec: PolarSpec = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_scalar(self.lr, "lr")
        check_scalar(self.momentum, "momentum", low=0.0, high=1.0, high_open=True)
        if isinstance(self.momentum, Tensor):
            raise TypeError("momentum must be a Python float (it is not a scheduled scalar)")
        if not isinstance(self.nesterov, bool):
            raise TypeError(f"nesterov must be a bool, got {self.nesterov!r}")
        check_scalar(self.weight_decay, "weight_decay")
        if self.weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(
                f"unknown weight_decay_mode {self.weight_decay_mode!r}; expected one of {list(WEIGHT_DECAY_MODES)}"
            )
        if self.order not in ORDERS:
            raise ValueError(f"unknown order {self.order!r}; expected one of {list(ORDERS)}")
        if self.scale not in SCALE_RULES:
            raise ValueError(f"unknown scale {self.scale!r}; expected one of {list(SCALE_RULES)}")
        check_scalar(self.extra_scale, "extra_scale")
        if isinstance(self.extra_scale, Tensor):
            raise TypeError("extra_scale must be a Python float")
        if self.momentum_dtype is not None and (
            not isinstance(self.momentum_dtype, torch.dtype) or not self.momentum_dtype.is_floating_point
        ):
            raise TypeError(f"momentum_dtype must be a floating torch.dtype or None, got {self.momentum_dtype!r}")
        check_nonfinite_mode(self.nonfinite)
        spec = PolarSpec.build(self.polar, **{name: getattr(self, name) for name in POLAR_OPTIONS})
        object.__setattr__(self, "polar_spec", spec)


@dataclass(frozen=True, eq=False)
class AdamWHParams:
    """Hyperparameters of ``adamw_step``; the same math and defaults as ``torch.optim.AdamW``.

    Attributes:
        lr: float or 0-d float tensor ≥ 0. Default 1e-3.
        betas: (β₁, β₂), each in [0, 1). Default (0.9, 0.999).
        eps: added to √v̂. Default 1e-8.
        weight_decay: decoupled, W ← (1 − lr·λ)W; float or 0-d tensor. Default 1e-2.
        nonfinite: "skip" (default) or "propagate", as in ``PolarGradHParams``.
    """

    lr: Scalar = 1e-3
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: Scalar = 1e-2
    nonfinite: NonfiniteMode = "skip"

    def __post_init__(self) -> None:
        check_scalar(self.lr, "lr")
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {self.betas!r}")
        for i, b in enumerate(self.betas):
            if isinstance(b, Tensor):
                raise TypeError(f"betas[{i}] must be a Python float")
            check_scalar(b, f"betas[{i}]", low=0.0, high=1.0, high_open=True)
        object.__setattr__(self, "betas", (float(self.betas[0]), float(self.betas[1])))
        check_scalar(self.eps, "eps", low_open=True)
        if isinstance(self.eps, Tensor):
            raise TypeError("eps must be a Python float")
        check_scalar(self.weight_decay, "weight_decay")
        check_nonfinite_mode(self.nonfinite)
