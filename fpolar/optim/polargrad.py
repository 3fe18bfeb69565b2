"""``fpolar.optim.PolarGrad``: PolarGrad / PolarGradM as a torch.optim.Optimizer.

Group keys are the field names of ``fpolar.PolarGradHParams`` with the same defaults (nuclear scale,
momentum 0.95, no Nesterov, no weight decay), so a group is exactly the hparams of one functional call.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from ..hparams import PolarGradHParams
from .base import PolarOptimizer, Scalar
from .compiled_step import Compiled
from .group_state import SCHEDULED_KEYS
from .groups import optimizer_defaults

POLARGRAD_KEYS: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(PolarGradHParams) if f.init)

# The constructors take their defaults from the dataclass, so the two cannot drift apart.
HPARAM_DEFAULTS: Dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(PolarGradHParams) if f.init and f.default is not dataclasses.MISSING
}
_HP = HPARAM_DEFAULTS


class PolarGrad(PolarOptimizer):
    """PolarGrad / PolarGradM on matrix params, AdamW on the rest, in one optimizer.

    Per matrix param W with grad G (default order "momentum_first")::

        M ← β·M + (1−β)·G;  X ← G.lerp(M, β) if nesterov else M
        O ← polar(X);       W ← (1 − lr·λ)·W − lr·s·extra_scale·O,   s = ⟨O, X⟩ ≈ ‖X‖_* for "nuclear"

    Args:
        params: tensors, ``(name, tensor)`` pairs, or param-group dicts (e.g. from
            ``fpolar.optim.param_groups(model)``). A group may set ``"algorithm": "polargrad"``
            (default) or ``"adamw"``. In a "polargrad" group, params that are not matrices (0-/1-D,
            empty) are moved to an AdamW group right after it (see ``fpolar.optim.groups``).
        lr: step size, required: nuclear-norm scaling multiplies the polar factor by ‖X‖_*, so the
            useful lr depends on the gradient scale and is not Muon's (often orders of magnitude
            apart). A float ≥ 0 (what LR schedulers change) or a 0-d tensor.
        momentum, nesterov, weight_decay, weight_decay_mode, order, scale, extra_scale, polar,
        coefficients, ns_steps, schedule_overflow, eps, polar_dtype, kernels, qdwh_iters, qdwh_l0,
        polish_steps, gram_restart, momentum_dtype: as in ``fpolar.PolarGradHParams``, with its defaults.
        adamw_lr: lr of the AdamW part split off a "polargrad" group (and the default lr of explicit
            "adamw" groups). Default 1e-3 (torch.optim.AdamW's): nuclear-scaled lrs are not on AdamW's
            scale. None means "the polar group's lr".
        adamw_betas, adamw_eps: AdamW's (0.9, 0.999) and 1e-8.
        adamw_weight_decay: None (default): the AdamW part split off a "polargrad" group uses that
            group's weight_decay; an explicit "adamw" group (e.g. from ``param_groups``) uses
            torch.optim.AdamW's default 0.01.
        compiled: how ``step()`` runs the math after its eager checks. None (default): on CUDA,
            one CUDA graph per parameter layout (AdamW groups through torch's fused AdamW kernel),
            captured at a layout's second step and replayed after, recaptured when the layout changes
            (a grad becoming None, a group added, a static hparam changed); off CUDA, eager. False:
            always eager. True: the device's default program ("cuda_graph" on CUDA, "compile"
            elsewhere). "compile": ``torch.compile`` of the functional steps. See
            ``fpolar.optim.compiled_step``. Ignored inside ``torch.compile(opt.step)``.

    Params are updated in place by ``step()``; bf16/fp16/fp32/fp64 params are supported (momentum in
    the param dtype unless ``momentum_dtype``). See ``PolarOptimizer`` for state and checkpoints.
    """

    polar_keys = POLARGRAD_KEYS

    def __init__(
        self,
        params: Any,
        lr: Scalar,
        momentum: float = _HP["momentum"],
        nesterov: bool = _HP["nesterov"],
        weight_decay: Scalar = _HP["weight_decay"],
        *,
        weight_decay_mode: str = _HP["weight_decay_mode"],
        order: str = _HP["order"],
        scale: str = _HP["scale"],
        extra_scale: float = _HP["extra_scale"],
        polar: str = _HP["polar"],
        coefficients: Any = _HP["coefficients"],
        ns_steps: Optional[int] = _HP["ns_steps"],
        schedule_overflow: str = _HP["schedule_overflow"],
        eps: float = _HP["eps"],
        polar_dtype: Optional[torch.dtype] = _HP["polar_dtype"],
        kernels: str = _HP["kernels"],
        qdwh_iters: int = _HP["qdwh_iters"],
        qdwh_l0: Optional[float] = _HP["qdwh_l0"],
        polish_steps: int = _HP["polish_steps"],
        gram_restart: int = _HP["gram_restart"],
        momentum_dtype: Optional[torch.dtype] = _HP["momentum_dtype"],
        adamw_lr: Optional[Scalar] = 1e-3,
        adamw_betas: Sequence[float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: Optional[Scalar] = None,
        compiled: Compiled = None,
    ) -> None:
        # locals() holds every constructor argument by name: the defaults are exactly the arguments given.
        super().__init__(params, optimizer_defaults(self.polar_keys, locals()), compiled=compiled)

    def _polar_hparams(self, group: Mapping[str, Any], lr: Scalar, weight_decay: Scalar) -> PolarGradHParams:
        fields = {k: group[k] for k in POLARGRAD_KEYS if k not in SCHEDULED_KEYS}
        return PolarGradHParams(lr=lr, weight_decay=weight_decay, **fields)
