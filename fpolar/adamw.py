"""The functional AdamW step for the parameters that are not matrices (biases, norms, embeddings, heads).

Same math as ``torch.optim.AdamW`` (decoupled decay W ← (1 − lr·λ)W, bias-corrected moments), written
with foreach ops and tensor step counts so the whole step is graph-capturable: bias corrections are
computed on the device from the step tensors, never read back to the host.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from .hparams import AdamWHParams, foreach_scalar
from .state import AdamWState
from .validation import check_params_and_grads


def adamw_step(
    params: Sequence[Tensor],
    grads: Sequence[Optional[Tensor]],
    state: AdamWState,
    hparams: AdamWHParams,
) -> AdamWState:
    """One AdamW step.

    Args:
        params: any-shape real float tensors. **Updated in place.**
        grads: one per param (same shape/dtype/device) or None to skip that param (its state untouched).
        state: from ``init_adamw_state(params)``. **Updated in place** (moments, per-param steps).
        hparams: ``AdamWHParams``.

    Returns:
        ``state``. Raises TypeError/ValueError before touching any tensor on bad input.
    """
    if not isinstance(hparams, AdamWHParams):
        raise TypeError(f"hparams must be AdamWHParams, got {type(hparams).__name__}")
    if not isinstance(state, AdamWState):
        raise TypeError(f"state must be an AdamWState from fpolar.init_adamw_state, got {type(state).__name__}")
    check_params_and_grads(params, grads, matrices=False)
    state.check_matches(params)

    live = [i for i, g in enumerate(grads) if g is not None]
    if not live:
        return state
    # AdamW is elementwise: on DTensors (FSDP2) it runs on each rank's local shard, and the state
    # stays a DTensor in the param's layout.
    p: List[Tensor] = [_local(params[i]) for i in live]
    g: List[Tensor] = [_local(grads[i]) for i in live]  # type: ignore[arg-type]
    m = [_local(state.exp_avg[i]) for i in live]
    v = [_local(state.exp_avg_sq[i]) for i in live]
    steps = [state.step[i] for i in live]
    beta1, beta2 = hparams.betas
    lr, wd = hparams.lr, hparams.weight_decay

    torch._foreach_add_(steps, 1)
    if isinstance(wd, Tensor) or wd != 0.0:
        torch._foreach_mul_(p, foreach_scalar(1 - lr * wd, p[0]))
    torch._foreach_lerp_(m, g, 1 - beta1)
    torch._foreach_mul_(v, beta2)
    torch._foreach_addcmul_(v, g, g, 1 - beta2)

    # 1 − βᵗ from the step tensors, on the device.
    bias1 = torch._foreach_pow(beta1, steps)
    torch._foreach_neg_(bias1)
    torch._foreach_add_(bias1, 1)
    bias2 = torch._foreach_pow(beta2, steps)
    torch._foreach_neg_(bias2)
    torch._foreach_add_(bias2, 1)
    torch._foreach_sqrt_(bias2)

    # update = lr/(1−β₁ᵗ) · m / (√v / √(1−β₂ᵗ) + eps)
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, bias2)
    torch._foreach_add_(denom, hparams.eps)
    step_size = torch._foreach_reciprocal(bias1)
    torch._foreach_mul_(step_size, foreach_scalar(lr, step_size[0]))
    update = torch._foreach_div(m, denom)
    torch._foreach_mul_(update, step_size)
    torch._foreach_sub_(p, update)
    return state


def _local(t: Tensor) -> Tensor:
    """A DTensor's local tensor (aliasing it), else ``t``."""
    return t.to_local() if type(t).__name__ == "DTensor" and hasattr(t, "to_local") else t
