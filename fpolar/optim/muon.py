"""``fpolar.optim.Muon``: torch.optim.Muon's arguments and numbers on fpolar's batched pipeline.

Muon is PolarGrad with a shape rule instead of the nuclear norm. ``adjust_lr_fn`` maps onto fpolar's
scale rules: None / "original" → "shape" (lr·√max(1, m/n)), "match_rms_adamw" → "rms_adamw"
(lr·0.2·√max(m, n)). Weight decay is decoupled with the unadjusted lr, as in torch.optim.Muon.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from ..hparams import PolarGradHParams
from .base import PolarOptimizer, Scalar
from .compiled_step import Compiled
from .group_state import SCHEDULED_KEYS
from .groups import optimizer_defaults
from .torch_migration import fpolar_state_dict_from_torch, is_torch_muon_state_dict, torch_state_dicts_from_fpolar
from .polargrad import HPARAM_DEFAULTS as _HP
from .polargrad import POLARGRAD_KEYS

ADJUST_LR_FNS: Dict[Optional[str], str] = {None: "shape", "original": "shape", "match_rms_adamw": "rms_adamw"}

# torch.optim.Muon's keys first, then fpolar's.
MUON_KEYS: Tuple[str, ...] = (
    "lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps", "adjust_lr_fn",
    "scale", "coefficients", "weight_decay_mode", "order", "extra_scale", "polar", "schedule_overflow",
    "polar_dtype", "kernels", "qdwh_iters", "qdwh_l0", "polish_steps", "gram_restart", "momentum_dtype",
)  # fmt: skip


def _check_adjust_lr_fn(value: Any) -> None:
    if not (value is None or isinstance(value, str)) or value not in ADJUST_LR_FNS:
        raise ValueError(f"unknown adjust_lr_fn {value!r}; expected None, 'original' or 'match_rms_adamw'")


class Muon(PolarOptimizer):
    """Drop-in for ``torch.optim.Muon`` (same arguments, defaults and numbers), plus AdamW routing.

    Per matrix param W with grad G::

        M ← β·M + (1−β)·G;  X ← G.lerp(M, β) if nesterov else M
        O ← NS(X)  (ns_steps Newton–Schulz steps with ns_coefficients, X / (‖X‖_F + eps) first)
        W ← (1 − lr·λ)·W − lr·s·O,   s = √max(1, m/n) ("original") or 0.2·√max(m, n) ("match_rms_adamw")

    Differences from torch.optim.Muon:
        * Params that are not 2-D are not rejected (torch.optim.Muon raises). 3-D params are stacks of
          matrices and ≥ 4-D (conv) params are flattened to (out, rest) — both run the polar step,
          with the shape rule on each matrix's (m, n). 0-/1-D params (and empty tensors) run
          AdamW in the same ``step()``: a "polargrad" group holding them is split into two groups,
          matrices then AdamW (``adamw_*`` settings). Embeddings / output heads are up to you: put them
          in an ``"algorithm": "adamw"`` group, or use ``fpolar.optim.param_groups(model)``.
        * Matrices of one shape run Newton–Schulz as one batch. The iteration runs in bf16 on CUDA
          (as torch's) and in fp32 on CPU unless ``polar_dtype`` says otherwise; the input is divided
          by ‖X‖_F + eps where torch divides by max(‖X‖_F, eps) (identical unless ‖X‖_F ≈ eps).
        * bf16 momentum is not overwritten by the normalized NS input (torch.optim.Muon does that
          when nesterov=False).
        * momentum must lie in [0, 1).

    Args:
        params: tensors, ``(name, tensor)`` pairs, or param-group dicts; a group may set
            ``"algorithm": "polargrad"`` (default; the Muon step) or ``"adamw"``.
        lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn: as in
            torch.optim.Muon, same defaults. ``lr`` / ``weight_decay``: float ≥ 0 or 0-d tensor.
        scale: fpolar scale rule overriding ``adjust_lr_fn`` (give one of the two), e.g. "nuclear"
            for PolarGrad scaling, "spectral", "unit_rms", "none". Default None: from adjust_lr_fn.
        coefficients: a named NS schedule ("muon", "polar_express", "quintic", "aol") or a list of
            (a, b, c) overriding ``ns_coefficients``. Default None: ``[ns_coefficients]`` repeated.
            ``ns_steps`` still sets the step count (None = the schedule's own length).
        weight_decay_mode, order, extra_scale, polar, schedule_overflow, polar_dtype, kernels,
        qdwh_iters, qdwh_l0, polish_steps, gram_restart, momentum_dtype: as in ``fpolar.PolarGradHParams``.
        adamw_lr: lr of the AdamW part; None (default) = the group's lr (the intent of
            "match_rms_adamw"; with the "original" rule you may want a smaller one, e.g. 3e-4).
        adamw_betas, adamw_eps: default (0.9, 0.999), 1e-8 (torch.optim.AdamW's).
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

    Raises:
        ValueError/TypeError naming the value: negative lr / weight_decay, momentum outside [0, 1),
        unknown adjust_lr_fn or scale, ns_coefficients not three numbers, …
    """

    polar_keys = MUON_KEYS

    def __init__(
        self,
        params: Any,
        lr: Scalar = 1e-3,
        weight_decay: Scalar = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: Tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: Optional[str] = None,
        *,
        scale: Optional[str] = None,
        coefficients: Any = None,
        weight_decay_mode: str = _HP["weight_decay_mode"],
        order: str = _HP["order"],
        extra_scale: float = _HP["extra_scale"],
        polar: str = _HP["polar"],
        schedule_overflow: str = _HP["schedule_overflow"],
        polar_dtype: Optional[torch.dtype] = _HP["polar_dtype"],
        kernels: str = _HP["kernels"],
        qdwh_iters: int = _HP["qdwh_iters"],
        qdwh_l0: Optional[float] = _HP["qdwh_l0"],
        polish_steps: int = _HP["polish_steps"],
        gram_restart: int = _HP["gram_restart"],
        momentum_dtype: Optional[torch.dtype] = _HP["momentum_dtype"],
        adamw_lr: Optional[Scalar] = None,
        adamw_betas: Sequence[float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: Optional[Scalar] = None,
        compiled: Compiled = None,
    ) -> None:
        _check_adjust_lr_fn(adjust_lr_fn)
        # locals() holds every constructor argument by name: the defaults are exactly the arguments given.
        super().__init__(params, optimizer_defaults(self.polar_keys, locals()), compiled=compiled)

    def _polar_hparams(self, group: Mapping[str, Any], lr: Scalar, weight_decay: Scalar) -> PolarGradHParams:
        adjust, scale = group["adjust_lr_fn"], group["scale"]
        _check_adjust_lr_fn(adjust)
        if scale is None:
            scale = ADJUST_LR_FNS[adjust]
        elif adjust is not None:
            raise ValueError(f"give scale ({scale!r}) or adjust_lr_fn ({adjust!r}), not both")
        coefficients = group["coefficients"]
        if coefficients is None:
            ns = group["ns_coefficients"]
            if isinstance(ns, str) or not isinstance(ns, (tuple, list)) or len(ns) != 3:
                raise ValueError(f"ns_coefficients must be three numbers (a, b, c), got {ns!r}")
            coefficients = [tuple(ns)]
        fields = {k: group[k] for k in POLARGRAD_KEYS if k not in SCHEDULED_KEYS}
        fields.update(scale=scale, coefficients=coefficients)
        return PolarGradHParams(lr=lr, weight_decay=weight_decay, **fields)

    # ----------------------------------------------------------------- torch.optim.Muon checkpoints

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint of this class (see ``PolarOptimizer.load_state_dict``) or of ``torch.optim.Muon``.

        A torch.optim.Muon checkpoint (recognized by its keys: no "algorithm") must come from a Muon
        built on this optimizer's "polargrad" params, in the same groups and order: its group settings
        and momenta are taken over, fpolar-only settings (``polar_dtype``, ``kernels``, …) and any "adamw"
        groups are kept. For a Muon + AdamW pair see ``load_torch_state_dicts`` / ``from_torch``. Validated
        in full first; on a mismatch the optimizer is unchanged.
        """
        if is_torch_muon_state_dict(state_dict):
            self.load_torch_state_dicts(state_dict)
            return
        super().load_state_dict(state_dict)

    def load_torch_state_dicts(
        self, muon_state_dict: Optional[Mapping[str, Any]], adamw_state_dict: Optional[Mapping[str, Any]] = None
    ) -> None:
        """Take over a torch.optim.Muon (and torch.optim.AdamW) run from their checkpoints.

        The Muon checkpoint's groups map onto this optimizer's "polargrad" groups in order, the AdamW
        checkpoint's onto its "adamw" groups in order; each pair must hold the same number of params
        (the same params, in the same order: checkpoints store positions, not names). The next steps then
        equal torch's up to Newton–Schulz rounding (``fpolar.optim.torch_migration``). Either may be None
        (that part is left as it is). Raises ValueError/TypeError naming the mismatch, leaving the
        optimizer unchanged.
        """
        converted = fpolar_state_dict_from_torch(
            super().state_dict(), self.param_groups, muon_state_dict, adamw_state_dict
        )
        super().load_state_dict(converted)

    @classmethod
    def from_torch(
        cls, muon: torch.optim.Optimizer, adamw: Optional[torch.optim.Optimizer] = None, **options: Any
    ) -> "Muon":
        """One fpolar Muon that continues a torch.optim.Muon (+ torch.optim.AdamW) run exactly where it is.

        ::

            opt = fpolar.optim.Muon.from_torch(muon, adamw)   # was: muon.step(); adamw.step()
            opt.step()

        Args:
            muon: a ``torch.optim.Muon``; its groups become "polargrad" groups with its settings.
            adamw: optional ``torch.optim.AdamW``; its groups become "adamw" groups (lr, betas, eps,
                weight_decay). amsgrad / maximize are refused.
            options: fpolar-only keyword arguments of ``Muon`` (e.g. ``polar_dtype=torch.float32``).

        Returns:
            a new optimizer over the same parameter tensors, holding copies of their momenta and moments
            (the torch optimizers are not modified). Groups: the Muon's, then the AdamW's.
        """
        groups = []
        for g in muon.param_groups:
            groups.append({k: v for k, v in g.items() if k != "param_names"})
        if adamw is not None:
            for g in adamw.param_groups:
                group = {k: g[k] for k in ("params", "lr", "betas", "eps", "weight_decay") if k in g}
                groups.append({**group, "algorithm": "adamw"})
        opt = cls(groups, **options)
        opt.load_torch_state_dicts(
            copy.deepcopy(muon.state_dict()), copy.deepcopy(adamw.state_dict()) if adamw is not None else None
        )
        return opt

    def torch_state_dicts(
        self, muon: torch.optim.Optimizer, adamw: Optional[torch.optim.Optimizer] = None
    ) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
        """The reverse of ``load_torch_state_dicts``: checkpoints to continue this run on torch.optim.

        ``muon`` (and ``adamw``) must be built on this optimizer's "polargrad" (and "adamw") params, in
        the same groups and order; load the results with ``muon.load_state_dict(...)``. Raises
        ValueError for what torch.optim.Muon cannot express (non-2-D params, ``scale="nuclear"``, a
        named or custom NS schedule, …). Nothing is modified; the state tensors are copies.
        """
        return torch_state_dicts_from_fpolar(
            self.param_groups, self.state, muon.state_dict(), adamw.state_dict() if adamw is not None else None
        )
