"""The functional AdamW step for the parameters that are not matrices (biases, norms, embeddings, heads).

Same math as ``torch.optim.AdamW`` (decoupled decay W ← (1 − lr·λ)W, bias-corrected moments), written
with foreach ops and tensor step counts so the whole step is graph-capturable: bias corrections are
computed on the device from the step tensors, never read back to the host.

float16 / bfloat16 params are updated in float32 arithmetic: each (device, dtype) group of them is
gathered into flat float32 buffers (one ``cat`` per tensor list), stepped there, and written back
rounded once. In half precision eps = 1e-8 rounds to 0 and g² underflows, so zero or tiny grads gave
0/0 = NaN.

With ``nonfinite="skip"`` (see ``fpolar.nonfinite``) a call with a non-finite grad keeps every bit of
params, moments and step counts: the grads are replaced by −0 (so m·1 + (1−β₁)·(−0) = m exactly,
−0 included), β₁, β₂ and the decay factor by 1 (selects on 0-d tensors), step counts add 0, and the
step size is multiplied by exactly 0 (it is finite: bias corrections use max(step, 1)).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .dtensor import local_tensor
from .hparams import AdamWHParams, foreach_scalar
from .nonfinite import found_nonfinite, select_scalar, unscale_grads
from .nonfinite_ranks import agree, shard_groups
from .state import AdamWState
from .validation import check_amp_tensors, check_params_and_grads

LOW_PRECISION = (torch.float16, torch.bfloat16)


def adamw_step(
    params: Sequence[Tensor],
    grads: Sequence[Optional[Tensor]],
    state: AdamWState,
    hparams: AdamWHParams,
    *,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> AdamWState:
    """One AdamW step.

    Args:
        params: any-shape real float tensors, distinct. **Updated in place.**
        grads: one per param (same shape/dtype/device) or None to skip that param (its state untouched).
        state: from ``init_adamw_state(params)``. **Updated in place** (moments, per-param steps, skipped).
        hparams: ``AdamWHParams``.
        grad_scale, found_inf: optional GradScaler-style tensors, as in ``polargrad_step``.

    With ``nonfinite="skip"`` (default) a call whose live grads hold NaN/±inf changes nothing but
    ``state.skipped`` (+1), decided on the device. On sharded DTensor params (FSDP2) a NaN in any rank's
    shard makes every rank skip (one ``all_reduce`` of one element; ``found_inf`` is taken as given and
    must then be the same on every rank). The math runs under ``torch.no_grad()``.

    Returns:
        ``state``. Raises TypeError/ValueError before touching any tensor on bad input.
    """
    if not isinstance(state, AdamWState):
        raise TypeError(f"state must be an AdamWState from fpolar.init_adamw_state, got {type(state).__name__}")
    check_step_inputs(params, grads, state, hparams, grad_scale, found_inf)
    with torch.no_grad():
        _adamw_step(params, grads, state, hparams, grad_scale, found_inf)
    return state


def adamw_step_prechecked(
    params: Sequence[Tensor],
    grads: Sequence[Optional[Tensor]],
    state: AdamWState,
    hparams: AdamWHParams,
    *,
    found_inf: Optional[Tensor] = None,
) -> AdamWState:
    """``adamw_step`` for inputs that already passed ``check_step_inputs`` (the same objects, unchanged
    since), as ``fpolar.optim`` runs its groups after checking them all."""
    with torch.no_grad():
        _adamw_step(params, grads, state, hparams, None, found_inf)
    return state


def check_step_inputs(
    params: Sequence[Tensor],
    grads: Sequence[Optional[Tensor]],
    state: Optional[AdamWState],
    hparams: AdamWHParams,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> None:
    """Every check ``adamw_step`` makes before it changes anything (``state=None``: a fresh state)."""
    if not isinstance(hparams, AdamWHParams):
        raise TypeError(f"hparams must be AdamWHParams, got {type(hparams).__name__}")
    check_params_and_grads(params, grads, matrices=False)
    if state is not None:
        state.check_matches(params)
    check_amp_tensors(grad_scale, found_inf)


def _adamw_step(
    params: Sequence[Tensor],
    grads: Sequence[Optional[Tensor]],
    state: AdamWState,
    hp: AdamWHParams,
    grad_scale: Optional[Tensor],
    found_inf: Optional[Tensor],
) -> None:
    live = [i for i, g in enumerate(grads) if g is not None]
    if not live:
        return
    # AdamW is elementwise: on DTensors (FSDP2) it runs on each rank's local shard, and the state
    # stays a DTensor in the param's layout.
    grads = unscale_grads([None if g is None else local_tensor(g) for g in grads], grad_scale)
    device = state.skipped.device  # type: ignore[union-attr]
    found: Optional[Tensor] = None
    if hp.nonfinite == "skip":
        # each rank checks its own shards; on sharded params one all_reduce makes it every rank's flag
        found = agree(found_nonfinite(grads, device, found_inf), shard_groups([params[i] for i in live]))
    elif found_inf is not None:
        found = found_nonfinite([], device, found_inf)

    buckets: Dict[Tuple[torch.device, torch.dtype], List[int]] = {}
    for i in live:
        buckets.setdefault((params[i].device, params[i].dtype), []).append(i)
    for (dev, dtype), idx in buckets.items():
        f = None if found is None else (found if dev == device else found.to(dev))
        p = [local_tensor(params[i]) for i in idx]
        g: List[Tensor] = [grads[i] for i in idx]  # type: ignore[misc]
        m = [local_tensor(state.exp_avg[i]) for i in idx]
        v = [local_tensor(state.exp_avg_sq[i]) for i in idx]
        steps = [state.step[i] for i in idx]
        if f is not None:
            # a list of the one 0-d tensor: the single-Tensor overload of _foreach_add_ reads its value
            # on the host under torch.compile (a graph break)
            keep = (~f).to(torch.float32)
            torch._foreach_add_(steps, [keep] * len(steps))
        else:
            torch._foreach_add_(steps, 1)
        bias1, bias2 = _bias_corrections(steps, hp, gated=f is not None)
        if dtype in LOW_PRECISION:
            _step_flat_fp32(p, g, m, v, bias1, bias2, hp, f)
        else:
            _step_lists(p, g, m, v, bias1, bias2, hp, f)
    if found is not None:
        state.skipped.add_(found)  # type: ignore[union-attr]


def _bias_corrections(steps: List[Tensor], hp: AdamWHParams, gated: bool) -> Tuple[List[Tensor], List[Tensor]]:
    """Per param, 1 − β₁ᵗ and √(1 − β₂ᵗ) from the step tensors, on the device (float32). On a gated
    call t may still be 0 (a skipped first step): max(t, 1) keeps the corrections nonzero, so the
    step size stays finite and multiplying it by 0 gives exactly 0."""
    beta1, beta2 = hp.betas
    t = torch._foreach_maximum(steps, 1.0) if gated else steps
    bias1 = torch._foreach_pow(beta1, t)
    torch._foreach_neg_(bias1)
    torch._foreach_add_(bias1, 1)
    bias2 = torch._foreach_pow(beta2, t)
    torch._foreach_neg_(bias2)
    torch._foreach_add_(bias2, 1)
    torch._foreach_sqrt_(bias2)
    return bias1, bias2


def _step_lists(
    p: List[Tensor],
    g: List[Tensor],
    m: List[Tensor],
    v: List[Tensor],
    bias1: List[Tensor],
    bias2: List[Tensor],
    hp: AdamWHParams,
    found: Optional[Tensor],
) -> None:
    """The AdamW update over lists whose bias corrections ``bias1``/``bias2`` broadcast against them."""
    beta1, beta2 = hp.betas
    lr, wd = hp.lr, hp.weight_decay
    if found is not None:
        g = _negzero_where(found, g)
    if isinstance(wd, Tensor) or wd != 0.0:
        factor = 1 - lr * wd
        if found is not None:
            factor = select_scalar(found, 1.0, factor)
        torch._foreach_mul_(p, foreach_scalar(factor, p[0]))
    if found is None:
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(v, beta2)
    else:
        torch._foreach_mul_(m, select_scalar(found, 1.0, beta1))
        torch._foreach_add_(m, g, alpha=1 - beta1)
        torch._foreach_mul_(v, select_scalar(found, 1.0, beta2))
    torch._foreach_addcmul_(v, g, g, 1 - beta2)

    # update = lr/(1−β₁ᵗ) · m / (√v / √(1−β₂ᵗ) + eps)
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, bias2)
    torch._foreach_add_(denom, hp.eps)
    step_size = torch._foreach_reciprocal(bias1)
    torch._foreach_mul_(step_size, foreach_scalar(lr, step_size[0]))
    if found is not None:
        torch._foreach_mul_(step_size, (~found).to(step_size[0].dtype))
    update = torch._foreach_div(m, denom)
    torch._foreach_mul_(update, step_size)
    torch._foreach_sub_(p, update)


def _step_flat_fp32(
    p: List[Tensor],
    g: List[Tensor],
    m: List[Tensor],
    v: List[Tensor],
    bias1: List[Tensor],
    bias2: List[Tensor],
    hp: AdamWHParams,
    found: Optional[Tensor],
) -> None:
    """``_step_lists`` on float32 copies of half-precision lists gathered flat, then written back."""
    numels = [t.numel() for t in p]

    def flat32(ts: List[Tensor]) -> Tensor:
        return torch.cat([t.reshape(-1) for t in ts]).to(torch.float32)

    def per_element(scalars: List[Tensor]) -> Tensor:
        # one cat of expanded 0-d tensors: no host-to-device copy, so it is graph-capturable
        return torch.cat([s.reshape(1).expand(n) for s, n in zip(scalars, numels)])

    pf, gf, mf, vf = flat32(p), flat32(g), flat32(m), flat32(v)
    _step_lists([pf], [gf], [mf], [vf], [per_element(bias1)], [per_element(bias2)], hp, found)
    for dst, src in ((p, pf), (m, mf), (v, vf)):
        low = src.to(dst[0].dtype)
        torch._foreach_copy_(dst, [x.view_as(t) for x, t in zip(low.split(numels), dst)])


def _negzero_where(found: Tensor, g: List[Tensor]) -> List[Tensor]:
    """Each grad (one device and dtype), or −0 everywhere when ``found``: adding (1−β)·(−0) leaves any
    value bitwise as is. Eagerly one ``cat`` and one select for the whole list (per-tensor selects
    would be one kernel each); under torch.compile per-tensor selects, which fuse into their users."""
    negzero = torch.full((), -0.0, dtype=g[0].dtype, device=g[0].device)
    if torch.compiler.is_compiling() or len(g) == 1:
        return [torch.where(found, negzero, t) for t in g]
    numels = [t.numel() for t in g]
    flat = torch.where(found, negzero, torch.cat([t.reshape(-1) for t in g]))
    return [x.view_as(t) for x, t in zip(flat.split(numels), g)]
