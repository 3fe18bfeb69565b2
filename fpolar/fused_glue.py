"""One shape group's momentum-first step with the glue fused: two one-pass ops around the polar factor.

The same math as ``polargrad.py``'s three phases (``pre_orthogonalize`` → ``orthogonalize`` →
``post_orthogonalize``) for a group whose ``PolarImpl.glue`` is "fused":

    X, scale, d = momentum_polar_input(M, G, …)  M ← β·M + (1−β)·G in place; d·X = V/‖V‖, V = G.lerp(M, β)
                                                 or M, wide, in the polar dtype (fpolar.kernels)
    O        = polar_wide(X, normalized=True,   the Newton–Schulz family, without its normalization pass,
                          input_scale=d)         on d·X
    s        = lr·rule·extra, or lr·⟨O, X⟩·d/scale·extra for "nuclear" (⟨O, V⟩ from the normalized X)
    W        ← decay·W − s·O                     scaled_update_ (tall groups transposed back in tiles)

d is 1 except in Gram space on the lower-tile kernels (``dispatch.defers_input_scale``): there the
iteration's first X Xᵀ and a polynomial apply the Frobenius scale in their epilogues, and the pass
that would scale X is not made for matrices whose scale is in a safe range (d = scale there).

The skip (``found``) is inside both ops: M and W are not written, X is zero. So the group needs no
snapshot of its momentum buffer (the torch glue copies it and selects it back).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .hparams import PolarGradHParams
from .kernels._glue_common import viewable
from .polar import PolarImpl, polar_wide
from .polar.dispatch import defers_input_scale
from .scale import nuclear_scale, shape_scale
from .state import PolarGradState, ShapeGroup

Scalar = Union[float, Tensor]


def fused_glue_applies(
    impl: PolarImpl, hp: PolarGradHParams, buffer: Tensor, params: Sequence[Tensor], grads: Sequence[Optional[Tensor]]
) -> bool:
    """Whether this group's step can run on the fused glue: the impl says so, momentum-first, every
    param of the group has a grad, the momentum and grads in a dtype the ops take, and every param
    (written in place) has a (k, m, n) view. Metadata only."""
    from .kernels._glue_common import GLUE_DTYPES

    return (
        impl.glue == "fused"
        and hp.order == "momentum_first"
        and all(g is not None for g in grads)
        and buffer.dtype in GLUE_DTYPES
        and buffer.is_contiguous()
        and all(g.dtype in GLUE_DTYPES for g in grads)  # type: ignore[union-attr]
        and all(viewable(p) for p in params)
    )


def fused_group_step(
    group: ShapeGroup,
    buffer: Tensor,
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    impl: PolarImpl,
    hp: PolarGradHParams,
    found: Optional[Tensor] = None,
) -> None:
    """The group's whole momentum-first step (module docstring). ``params`` and ``buffer`` are updated
    in place, neither where ``found`` (0-d bool) is True."""
    from . import kernels  # noqa: F401  (registers torch.ops.fpolar.*)

    ops = torch.ops.fpolar
    spec = hp.polar_spec
    device = buffer.device
    defer = defers_input_scale(impl, device)
    x, scale, deferred = ops.momentum_polar_input(
        buffer, list(grads), hp.momentum, hp.nesterov, impl.polar_dtype, spec.safety, spec.eps, found, defer
    )
    # X is read again only by the nuclear scale: otherwise the polar step may reuse its memory.
    o = polar_wide(
        x, spec, impl, normalized=True, consume_input=hp.scale != "nuclear", input_scale=deferred if defer else None
    )
    if hp.scale == "nuclear":
        # ⟨O, V⟩ = ⟨O, X₀⟩ / scale with X₀ = deferred·X the normalized input (V·scale up to rounding);
        # deferred is exactly 1 where nothing was deferred, so the product changes no bit there.
        step = nuclear_scale(o, x) * deferred / scale * (hp.lr * hp.extra_scale)
    else:
        step = _as_tensor(hp.lr * (shape_scale(hp.scale, group.m, group.n) * hp.extra_scale), device)
    ops.scaled_update_(list(params), o, step.float(), _decay_factor(hp, device), found)


def _decay_factor(hp: PolarGradHParams, device: torch.device) -> Tensor:
    """1 − lr·λ ("decoupled"), 1 − λ ("independent"), 1 ("l2", whose λ is in the grads) as a 1-element
    fp32 tensor: ``_apply_decay``'s factor."""
    wd = hp.weight_decay
    if hp.weight_decay_mode == "l2" or (not isinstance(wd, Tensor) and wd == 0.0):
        return torch.ones((), dtype=torch.float32, device=device)
    factor = 1 - hp.lr * wd if hp.weight_decay_mode == "decoupled" else 1 - wd
    return _as_tensor(factor, device).float()


def _as_tensor(value: Scalar, device: torch.device) -> Tensor:
    """A float, symbolic float or 0-d tensor as a 0-d tensor on ``device``. ones·value, not
    full((), value): under torch.compile a float lr that went dynamic is symbolic, and full of it
    specializes (a recompile per value); a multiply does not."""
    if isinstance(value, Tensor):
        return value.to(device)
    return torch.ones((), dtype=torch.float64, device=device) * value


def build_offsets_tables(
    params: Sequence[Tensor], grads: Sequence[Optional[Tensor]], state: PolarGradState, hp: PolarGradHParams
) -> None:
    """Builds now, eagerly, the offsets tables the one-launch glue ops will look up for this step's
    lists: each fused group's grads (read by ``momentum_polar_input``) and params (written by
    ``scaled_update_``). Call it right before capturing the step in a CUDA graph: a capture cannot copy
    a table to the device, and an op that finds none falls back to one launch per tensor. Reads only
    addresses and metadata; changes nothing but the table cache."""
    from .kernels._glue_common import matrix_offsets, matrix_view

    if getattr(state, "planned_step", None) is not None:  # a distributed state: its step has no fused glue
        return
    impls = state.polar_impls_for(hp.polar_spec)
    for group, buffer, impl in zip(state.groups, state.buffers, impls):
        group_params = [params[i] for i in group.indices]
        group_grads = [grads[i] for i in group.indices]
        if not fused_glue_applies(impl, hp, buffer, group_params, group_grads):
            continue
        matrix_offsets([matrix_view(g, group.m, group.n, writable=False) for g in group_grads])  # type: ignore[arg-type]
        matrix_offsets([matrix_view(p, group.m, group.n, writable=True) for p in group_params])
