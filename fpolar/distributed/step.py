"""The planned PolarGrad / Muon step: direction on the local rows → exchange → polar + scale on the
owner → exchange back → apply on the local rows.

The same math as ``fpolar.polargrad_step``, phase by phase, on each rank's own part of every matrix:

    direction   momentum (and Nesterov blend) on local tensors: elementwise, needs no communication
    exchange    "rows": all_to_all to owners; "replicated": owner takes its share; "local": nothing
    polar       the batched backend on the owner's whole matrices (orientation handled there)
    scale       ⟨O, X⟩ on the owner (the whole matrix is there), or the shape rule
    back        all_to_all / all_gather of factors and bit-cast scales
    apply       decay, then W ← W − lr·s·O (polar-first: momentum of O first) on the local rows

Every exchange is issued for every group before any polar runs, so in eager mode a group's
collective is in flight while earlier groups iterate (asynchronous functional collectives wait only
when their result is read).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import tensor_lists
from ..hparams import PolarGradHParams, foreach_scalar
from ..polar import polar_wide
from ..scale import nuclear_scale, shape_scale
from ..validation import check_params_and_grads
from .exchange import (
    owned_matrices,
    replicated_from_owners,
    replicated_to_owners,
    rows_from_owners,
    rows_to_owners,
)
from .layout import MatrixRef
from .plan import ExchangeGroup, is_dtensor, local_tensor
from .state import DistributedPolarGradState


def payload_dtype(group: ExchangeGroup, hp: PolarGradHParams) -> torch.dtype:
    """The dtype matrices travel in: the polar iteration's dtype (bfloat16 for NS on CUDA)."""
    return hp.polar_spec.compute_dtype_for(group.dtype, group.device.type == "cuda")


def matrix_rows(t: Tensor, ref: MatrixRef, n: int) -> Tensor:
    """The (rows, n) view of ``ref``'s rows in local tensor ``t`` (``n`` columns; rows may be 0)."""
    base = t[ref.stack] if t.dim() == 3 else t.reshape(t.shape[0], n)
    return base[ref.local_start : ref.local_start + ref.local_rows]


def owner_polar(x: Tensor, group: ExchangeGroup, hp: PolarGradHParams) -> Tuple[Tensor, Optional[Tensor]]:
    """Polar factors (S, m, n) of the owner's whole matrices and their nuclear scales (S,) ⟨O, X⟩, or
    None for a shape rule. Tall matrices are iterated as their wide transpose."""
    wide = x.mT if group.transposed else x
    o = polar_wide(wide, hp.polar_spec)
    o = o.mT if group.transposed else o
    return o, (nuclear_scale(o, x) if hp.scale == "nuclear" else None)


def _send(group: ExchangeGroup, mats: List[Tensor], hp: PolarGradHParams) -> Tensor:
    if group.kind == "rows":
        return rows_to_owners(group, mats, payload_dtype(group, hp))
    if group.kind == "replicated":
        return replicated_to_owners(group, mats, payload_dtype(group, hp))
    return torch.stack(mats) if len(mats) > 1 else mats[0].unsqueeze(0)


def _owned(group: ExchangeGroup, sent: Tensor) -> Tensor:
    return owned_matrices(group, sent) if group.kind == "rows" else sent


def _receive(group: ExchangeGroup, o: Tensor, s: Optional[Tensor]) -> Tuple[List[Tensor], Optional[Tensor]]:
    if group.kind == "rows":
        return rows_from_owners(group, o.contiguous(), s)
    if group.kind == "replicated":
        return replicated_from_owners(group, o.contiguous(), s)
    return list(o.unbind(0)), s


def _check_grads_agree(group_params: Sequence[int], grads: Sequence[Optional[Tensor]], params: Sequence[Tensor]) -> None:
    for i in group_params:
        g = grads[i]
        if g is not None and is_dtensor(params[i]) != is_dtensor(g):
            raise ValueError(
                f"params[{i}] is {'a DTensor' if is_dtensor(params[i]) else 'a plain tensor'} but grads[{i}] is not"
            )
        if g is not None and is_dtensor(g) and g.placements != params[i].placements:
            raise ValueError(f"grads[{i}] has placements {g.placements} but params[{i}] has {params[i].placements}")


def distributed_polargrad_step(
    params: Sequence[Tensor],
    grads: Sequence[Optional[Tensor]],
    state: DistributedPolarGradState,
    hparams: PolarGradHParams,
) -> DistributedPolarGradState:
    """One PolarGrad / PolarGradM / Muon step over params laid out as ``state.plan`` says.

    Args:
        params: as given to ``init_distributed_state`` (DTensors stay DTensors). **Updated in place.**
        grads: one per param (DTensor grads for DTensor params, same placements), or None to skip.
            A skipped param's matrices still travel (as zeros) so every rank runs the same collectives.
        state: from ``init_distributed_state``. **Updated in place.**
        hparams: ``PolarGradHParams``.

    Every rank of each process group must call this with the same params and the same set of None
    grads. Raises TypeError/ValueError before any tensor changes.
    """
    if not isinstance(hparams, PolarGradHParams):
        raise TypeError(f"hparams must be PolarGradHParams, got {type(hparams).__name__}")
    if not isinstance(state, DistributedPolarGradState) or state.plan is None:
        raise TypeError(f"state must come from init_distributed_state, got {type(state).__name__}")
    check_params_and_grads(params, grads, matrices=True)
    state.check_matches(params)
    plan, hp, beta = state.plan, hparams, hparams.momentum
    for g in plan.groups:
        _check_grads_agree(g.params, grads, params)

    P = [local_tensor(p) for p in params]
    G: List[Optional[Tensor]] = [None if g is None else local_tensor(g) for g in grads]
    M = [local_tensor(m) for m in state.momentum]
    live = [i for i, g in enumerate(G) if g is not None]
    if hp.weight_decay_mode == "l2" and live:
        wd = foreach_scalar(hp.weight_decay, P[live[0]])
        for i in live:
            G[i] = G[i] + wd * P[i]  # type: ignore[operator]
    state.step.add_(1)

    # direction: momentum on the local tensors, once per param (a fused param spans several groups)
    if live:
        gl = [G[i] if G[i].dtype == M[i].dtype else G[i].to(M[i].dtype) for i in live]  # type: ignore[union-attr]
        if hp.order == "momentum_first":
            ml = [M[i] for i in live]
            tensor_lists.lerp_(ml, gl, 1 - beta)
            xl = tensor_lists.lerp(gl, ml, beta) if hp.nesterov else ml
        else:
            xl = [G[i] for i in live]  # type: ignore[misc]
    X: Dict[int, Tensor] = dict(zip(live, xl)) if live else {}

    # exchange there, for every group first (their collectives overlap the polar work below)
    active = [g for g in plan.groups if any(G[i] is not None for i in g.params)]
    sent = []
    for group in active:
        mats = [
            matrix_rows(X[r.param] if r.param in X else torch.zeros_like(P[r.param]), r, group.n)
            for r in group.matrices
        ]
        sent.append((mats, _send(group, mats, hp)))

    # polar + scale on the owners, exchange back
    results = []
    for group, (mats, in_flight) in zip(active, sent):
        x_owned = _owned(group, in_flight)
        if x_owned.shape[0]:
            o, s = owner_polar(x_owned, group, hp)
        else:
            o = x_owned
            s = x_owned.new_zeros(0, dtype=torch.promote_types(x_owned.dtype, torch.float32)) if hp.scale == "nuclear" else None
        results.append((mats, *_receive(group, o, s)))

    # apply: decay once per param, then the update rows
    touched = sorted({i for g in active for i in g.params if G[i] is not None})
    if touched:
        _apply_decay([P[i] for i in touched], hp)
    for group, (mats, o_rows, s) in zip(active, results):
        shape_step = None if hp.scale == "nuclear" else hp.lr * (shape_scale(hp.scale, group.m, group.n) * hp.extra_scale)
        up = torch.promote_types(group.dtype, torch.float32)
        for k, (ref, o) in enumerate(zip(group.matrices, o_rows)):
            if G[ref.param] is None or ref.local_rows == 0:
                continue
            step_size = shape_step if s is None else s[k] * (hp.lr * hp.extra_scale)
            if hp.order == "polar_first":
                m_rows = matrix_rows(M[ref.param], ref, group.n)
                om = o.to(m_rows.dtype)
                m_rows.lerp_(om, 1 - beta)
                o = om.lerp(m_rows, beta) if hp.nesterov else m_rows
            matrix_rows(P[ref.param], ref, group.n).sub_((o.to(up) * step_size).to(group.dtype))
    return state


def _apply_decay(params: List[Tensor], hp: PolarGradHParams) -> None:
    wd = hp.weight_decay
    if hp.weight_decay_mode == "l2" or (not isinstance(wd, Tensor) and wd == 0.0):
        return
    factor = 1 - hp.lr * wd if hp.weight_decay_mode == "decoupled" else 1 - wd
    tensor_lists.mul_(params, foreach_scalar(factor, params[0]))
