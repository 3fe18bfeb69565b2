"""``adamw_step``'s math through torch's fused AdamW kernel (``torch._fused_adamw_``): one kernel per
(device, dtype) group instead of a dozen foreach passes.

The same update as ``fpolar.adamw_step`` (and torch.optim.AdamW): W ← (1 − lr·λ)·W, then the
bias-corrected moment step, with per-param float32 step tensors on the device. Two things keep the
scheduled scalars live tensors, so a CUDA graph of this step follows a schedule: the kernel's lr is
the 0-d lr tensor (its ``tensor_lr`` overload), and the decoupled decay, whose kernel argument is a
Python float, is applied here as one foreach multiply by (1 − lr·λ) before the kernel, which then
runs with weight_decay 0 (the order the kernel itself uses). ``adamw_step`` is the slow twin the
tests compare against.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .adamw import check_step_inputs
from .nonfinite import select_scalar
from .hparams import AdamWHParams, foreach_scalar
from .state import AdamWState

__all__ = ["fused_adamw_available", "fused_adamw_step"]


def fused_adamw_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch._fused_adamw_`` runs on ``device`` for ``dtype`` params (CUDA; CPU on torch
    builds that have the CPU kernel). Checked on a one-element problem, result cached."""
    key = (device.type, dtype)
    if key not in _AVAILABLE:
        try:
            p, g, m, v = (torch.zeros(1, dtype=dtype, device=device) for _ in range(4))
            step = torch.zeros((), dtype=torch.float32, device=device)
            lr = torch.zeros((), dtype=torch.float32, device=device)
            torch._fused_adamw_([p], [g], [m], [v], [], [step], lr=lr, beta1=0.9, beta2=0.999, weight_decay=0.0,
                                eps=1e-8, amsgrad=False, maximize=False)
            _AVAILABLE[key] = True
        except (RuntimeError, NotImplementedError):
            _AVAILABLE[key] = False
    return _AVAILABLE[key]


_AVAILABLE: Dict[Tuple[str, torch.dtype], bool] = {}


def fused_adamw_step(
    params: Sequence[Tensor],
    grads: Sequence[Optional[Tensor]],
    state: AdamWState,
    hparams: AdamWHParams,
    *,
    decay: bool = True,
    found_inf: Optional[Tensor] = None,
) -> AdamWState:
    """One AdamW step with torch's fused kernel; arguments, effects and errors as ``fpolar.adamw_step``.

    Args:
        params, grads, state, hparams: as ``adamw_step``. Params **and state updated in place**; a
            None grad skips its param. The lr must be a 0-d tensor on the params' device or a float.
        decay: False skips the decay multiply; only for a caller that knows the weight decay is 0
            (a float 0.0 is skipped anyway; a tensor's value is never read, so no host sync).
        found_inf: optional 0-d bool/float tensor: when nonzero the call changes nothing (the kernel
            skips on it; step counts add 0, the decay factor is 1). ``hparams.nonfinite`` is not read
            here: a caller wanting the skip computes the flag (``fpolar.nonfinite.found_nonfinite``).

    Raises TypeError/ValueError before touching any tensor, as ``adamw_step``; ValueError if the
    kernel is not available for a param's device and dtype (see ``fused_adamw_available``).
    """
    if not isinstance(hparams, AdamWHParams):
        raise TypeError(f"hparams must be AdamWHParams, got {type(hparams).__name__}")
    if not isinstance(state, AdamWState):
        raise TypeError(f"state must be an AdamWState from fpolar.init_adamw_state, got {type(state).__name__}")
    check_step_inputs(params, grads, state, hparams)  # adamw_step's checks (found_inf's form is the kernel's)
    groups = _by_device_and_dtype(params, grads)
    for device, dtype in groups:
        if not fused_adamw_available(device, dtype):
            raise ValueError(f"torch's fused AdamW kernel does not run on {device} for {dtype} params; use adamw_step")
    return _fused_update(params, grads, state, hparams, groups, decay, found_inf)


def fused_adamw_step_prechecked(
    params: Sequence[Tensor],
    grads: Sequence[Optional[Tensor]],
    state: AdamWState,
    hparams: AdamWHParams,
    *,
    decay: bool = True,
    found_inf: Optional[Tensor] = None,
) -> AdamWState:
    """``fused_adamw_step`` for inputs that already passed ``fpolar.adamw.check_step_inputs`` (the same
    objects, unchanged since) on devices and dtypes ``fused_adamw_available`` accepts, as ``fpolar.optim``
    runs its groups after checking them all."""
    return _fused_update(params, grads, state, hparams, _by_device_and_dtype(params, grads), decay, found_inf)


def _by_device_and_dtype(params: Sequence[Tensor], grads: Sequence[Optional[Tensor]]) -> Dict[Tuple[torch.device, torch.dtype], List[int]]:
    """The indices of the params with a grad, by (device, dtype): one kernel call each."""
    groups: Dict[Tuple[torch.device, torch.dtype], List[int]] = {}
    for i, g in enumerate(grads):
        if g is not None:
            groups.setdefault((params[i].device, params[i].dtype), []).append(i)
    return groups


def _fused_update(
    params: Sequence[Tensor],
    grads: Sequence[Optional[Tensor]],
    state: AdamWState,
    hparams: AdamWHParams,
    groups: Dict[Tuple[torch.device, torch.dtype], List[int]],
    decay: bool,
    found_inf: Optional[Tensor],
) -> AdamWState:
    """The decay, step counts and fused kernel per (device, dtype) group; inputs checked."""
    lr, wd = hparams.lr, hparams.weight_decay
    for (device, _), idx in groups.items():
        p = [params[i] for i in idx]
        g = [grads[i] for i in idx]  # type: ignore[misc]
        steps = [state.step[i] for i in idx]
        f = None if found_inf is None else (found_inf.reshape(()).to(device) != 0)
        if decay and (isinstance(wd, Tensor) or wd != 0.0):
            factor = 1 - lr * wd if f is None else select_scalar(f, 1.0, 1 - lr * wd)
            torch._foreach_mul_(p, foreach_scalar(factor, p[0]))
        # The kernel reads the step count after the increment, as adamw_step's bias correction does.
        if f is None:
            torch._foreach_add_(steps, 1)
        else:
            keep = (~f).to(torch.float32)
            torch._foreach_add_(steps, [keep] * len(steps))
        lr_t = lr if isinstance(lr, Tensor) else torch.tensor(float(lr), dtype=torch.float32, device=device)
        beta1, beta2 = hparams.betas
        torch._fused_adamw_(
            p, g, [state.exp_avg[i] for i in idx], [state.exp_avg_sq[i] for i in idx], [], steps,
            lr=lr_t, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=hparams.eps, amsgrad=False, maximize=False,
            found_inf=None if f is None else f.to(torch.float32),
        )
    return state
