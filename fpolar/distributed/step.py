"""The planned PolarGrad / Muon step: the one-device phases with an exchange at each seam.

    local_directions          X from momentum on local tensors (elementwise: no communication)
      ── send_to_owners       "rows": all_to_all of each matrix's rows to its owner; "replicated":
                              the owner takes its share; "local": nothing
    orthogonalize_on_owners   ``fpolar.polargrad.orthogonalize`` on whole matrices: O and lr·s·extra,
                              with ⟨O, X⟩ exact because the whole matrix is there
      ── (inside it) back     all_to_all / all_gather of O's rows and bit-cast step sizes
    apply_rows                decay, then W ← W − lr·s·D on this rank's rows (polar-first: M first)

Every group's send is issued before any polar runs, so in eager mode a group's collective is in
flight while earlier groups iterate (asynchronous functional collectives wait only when read).

``nonfinite="skip"`` (see ``fpolar.nonfinite``): before anything is written, each rank checks its own
grad shards and ``fpolar.nonfinite_ranks.agree`` makes that flag every rank's (one ``all_reduce`` of one
element on the sharded params' process group; none for replicated params, whose grads are the same on
every rank). Then the momentum keeps its bits where found, the owners orthogonalize zeros with a zero
step size, and the decay factor is 1: the call changes nothing but the counters, on every rank.
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import tensor_lists
from ..hparams import PolarGradHParams, foreach_scalar
from ..polar import PolarImpl
from ..polar.dispatch import check_kernels_device
from ..nonfinite import count_step, found_nonfinite, gated_lerp_, select_scalar, unscale_grads
from ..nonfinite_ranks import agree, shard_groups
from ..polargrad import Orthogonalized, orthogonalize, step_size
from ..validation import check_amp_tensors, check_params_and_grads
from .exchange import (
    owned_matrices,
    replicated_from_owners,
    replicated_to_owners,
    rows_from_owners,
    rows_to_owners,
)
from .layout import MatrixRef
from ..dtensor import is_dtensor, local_tensor
from .plan import ExchangeGroup


def payload_dtype(impl: PolarImpl) -> torch.dtype:
    """The dtype matrices travel in: the polar iteration's dtype (bfloat16 for NS on CUDA)."""
    return impl.polar_dtype


def matrix_rows(t: Tensor, ref: MatrixRef, n: int) -> Tensor:
    """The (rows, n) view of ``ref``'s rows in local tensor ``t`` (``n`` columns; rows may be 0)."""
    base = t[ref.stack] if t.dim() == 3 else t.reshape(t.shape[0], n)
    return base[ref.local_start : ref.local_start + ref.local_rows]


def owner_orthogonalize(
    x: Tensor, impl: PolarImpl, hp: PolarGradHParams, found: Optional[Tensor] = None
) -> Orthogonalized:
    """The one-device phase on the owner's whole matrices (S, m, n): O = polar(X) and lr·s·extra, with
    s = ⟨O, X⟩ computed here where the whole matrix is. An owner with no matrix this group (S = 0)
    still returns the group's shape-rule step size (0 where ``found``)."""
    if x.shape[0] == 0:
        size = step_size(x, x, hp)
        return Orthogonalized(x, size if found is None or hp.scale == "nuclear" else select_scalar(found, 0.0, size))
    return orthogonalize(x, impl, hp, found)


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
    state: Any,
    hparams: PolarGradHParams,
    *,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> Any:
    """One PolarGrad / PolarGradM / Muon step over params laid out as ``state.plan`` says.

    Args:
        params: as given to ``init_distributed_state`` (DTensors stay DTensors). **Updated in place.**
        grads: one per param (DTensor grads for DTensor params, same placements), or None to skip.
            A skipped param's matrices still travel (as zeros) so every rank runs the same collectives.
        state: from ``init_distributed_state``. **Updated in place** (momentum, step, skipped).
        hparams: ``PolarGradHParams``.
        grad_scale: optional one-element tensor (GradScaler-style): the grads are divided by it first.
        found_inf: optional one-element tensor (GradScaler-style): nonzero makes the call a no-op. Taken
            as given: under sharding it must be the same on every rank (``ShardedGradScaler``'s and
            ``fpolar.optim``'s are); this rank's own grad check (``nonfinite="skip"``) is agreed on here.

    With ``hparams.nonfinite="skip"`` (default), a non-finite element in any rank's grad shard makes the
    call a no-op on every rank: params, momentum and ``state.step`` keep their bits, ``state.skipped``
    goes up by 1, decided on the device (no host sync). Sharded params cost one ``all_reduce`` of one
    element per call for it (replicated params none).

    Every rank of each process group must call this with the same params and the same set of None
    grads. Raises TypeError/ValueError before any tensor changes.
    """
    if not isinstance(hparams, PolarGradHParams):
        raise TypeError(f"hparams must be PolarGradHParams, got {type(hparams).__name__}")
    if getattr(state, "plan", None) is None:
        raise TypeError(f"state must come from init_distributed_state, got {type(state).__name__}")
    check_params_and_grads(params, grads, matrices=True)
    state.check_matches(params)
    plan, hp = state.plan, hparams
    impls = state.polar_impls_for(hp.polar_spec)
    for g, impl in zip(plan.groups, impls):
        _check_grads_agree(g.params, grads, params)
        check_kernels_device(impl.kernels, g.device)
    check_amp_tensors(grad_scale, found_inf)

    with torch.no_grad():
        P = [local_tensor(p) for p in params]
        G: List[Optional[Tensor]] = unscale_grads([None if g is None else local_tensor(g) for g in grads], grad_scale)
        M = [local_tensor(m) for m in state.momentum]
        if hp.weight_decay_mode == "l2":
            G = [g if g is None else g + foreach_scalar(hp.weight_decay, g) * p for p, g in zip(P, G)]
        found = agreed_skip(params, G, state, hp, found_inf)
        if found is None:
            state.step.add_(1)
        else:
            count_step(state.step, state.skipped, found)
        active = [(g, impl) for g, impl in zip(plan.groups, impls) if any(G[i] is not None for i in g.params)]

        x = local_directions(G, M, hp, found, blend_in_stack(plan, hp))
        in_flight = [send_to_owners(group, impl, x, P, hp.momentum) for group, impl in active]
        results = [
            orthogonalize_on_owners(group, impl, sent, hp, found) for (group, impl), sent in zip(active, in_flight)
        ]
        apply_rows(active, results, P, G, M, hp, found)
    return state


def agreed_skip(
    params: Sequence[Tensor],
    local_grads: Sequence[Optional[Tensor]],
    state: Any,
    hp: PolarGradHParams,
    found_inf: Optional[Tensor],
) -> Optional[Tensor]:
    """The call's skip flag, the same on every rank (0-d bool on the state's device), or None when
    nothing can skip the call. Under "skip": this rank's grad shards (and ``found_inf``) checked, then
    ``agree``d over the process groups of the sharded params (one all_reduce for one mesh; none for
    plain or ``Replicate`` params: their grads, hence their flags, are the same on every rank).
    ``found_inf`` alone ("propagate") is taken as given."""
    device = state.step.device
    if hp.nonfinite == "skip":
        return agree(found_nonfinite(local_grads, device, found_inf), shard_groups(params))
    if found_inf is not None:
        return found_nonfinite([], device, found_inf)
    return None


class Blend(NamedTuple):
    """A Nesterov blend X = G.lerp(M, β) not formed yet: its local group writes it into its stack."""

    g: Tensor
    m: Tensor


def blend_in_stack(plan: Any, hp: PolarGradHParams) -> FrozenSet[int]:
    """The params whose Nesterov blend is written straight into their "local" groups' stacked polar
    input (eagerly, momentum-first with Nesterov, every matrix of the param in a local group), as the
    one-device step writes its blend into its stack: no per-param blend is made and then stacked.
    Under torch.compile none (Inductor fuses the blend into the stack)."""
    if hp.order != "momentum_first" or not hp.nesterov or torch.compiler.is_compiling():
        return frozenset()
    local = {r.param for g in plan.groups if g.kind == "local" for r in g.matrices}
    return frozenset(local - {r.param for g in plan.groups if g.kind != "local" for r in g.matrices})


def local_directions(
    G: List[Optional[Tensor]],
    M: List[Tensor],
    hp: PolarGradHParams,
    found: Optional[Tensor] = None,
    later: FrozenSet[int] = frozenset(),
) -> Dict[int, Any]:
    """The polar input X of every param with a grad, on local tensors (elementwise: no communication),
    once per param (a fused param spans several groups). Momentum-first: M ← β·M + (1−β)·G in place
    (M keeps its bits where ``found``), X = G.lerp(M, β) (Nesterov) or M; for a param in ``later``
    (``blend_in_stack``) the blend is a ``Blend`` its group forms. Polar-first: X = G (momentum waits
    for O). X may hold NaN on a skipped call: the owners orthogonalize zeros instead."""
    live = [i for i, g in enumerate(G) if g is not None]
    if not live:
        return {}
    if hp.order == "polar_first":
        return {i: G[i] for i in live}  # type: ignore[misc]
    gl = [G[i] if G[i].dtype == M[i].dtype else G[i].to(M[i].dtype) for i in live]  # type: ignore[union-attr]
    ml = [M[i] for i in live]
    if found is None:
        tensor_lists.lerp_(ml, gl, 1 - hp.momentum)
    else:
        gated_lerp_(ml, gl, 1 - hp.momentum, found)
    if not hp.nesterov:
        return dict(zip(live, ml))
    now = [k for k, i in enumerate(live) if i not in later]
    out: Dict[int, Any] = {live[k]: Blend(gl[k], ml[k]) for k, i in enumerate(live) if i in later}
    if now:
        out.update(zip([live[k] for k in now], tensor_lists.lerp([gl[k] for k in now], [ml[k] for k in now], hp.momentum)))
    return out


def send_to_owners(
    group: ExchangeGroup, impl: PolarImpl, x: Dict[int, Any], P: List[Tensor], beta: float = 0.0
) -> Tensor:
    """Start moving this rank's rows of the group's polar inputs to their owners (zeros for a param
    without a grad, so every rank runs the same collectives). Every group's send is issued before any
    polar runs: in eager mode a later group's collective is in flight while earlier groups iterate.
    A local group holding ``Blend``s forms their blends in its stack (``beta``: the momentum β)."""
    if group.kind == "local" and any(isinstance(x.get(r.param), Blend) for r in group.matrices):
        return blended_stack(group, x, beta)
    mats = [matrix_rows(x[r.param] if r.param in x else torch.zeros_like(P[r.param]), r, group.n) for r in group.matrices]
    if group.kind == "rows":
        return rows_to_owners(group, mats, payload_dtype(impl))
    if group.kind == "replicated":
        return replicated_to_owners(group, mats, payload_dtype(impl))
    return torch.stack(mats) if len(mats) > 1 else mats[0].unsqueeze(0)


def blended_stack(group: ExchangeGroup, x: Dict[int, Any], beta: float) -> Tensor:
    """A local group's (B, m, n) polar input with each ``Blend`` G.lerp(M, β) written into its slice
    (one pass over G and M per matrix, no per-param blend); a ready X copied in, zeros without a grad."""
    some = next(v for v in (x.get(r.param) for r in group.matrices) if isinstance(v, Blend))
    out = torch.empty((group.count, group.m, group.n), dtype=some.m.dtype, device=some.m.device)
    for j, r in enumerate(group.matrices):
        v = x.get(r.param)
        if v is None:
            out[j].zero_()
        elif isinstance(v, Blend):
            torch.lerp(matrix_rows(v.g, r, group.n), matrix_rows(v.m, r, group.n), beta, out=out[j])
        else:
            out[j].copy_(matrix_rows(v, r, group.n))
    return out


def orthogonalize_on_owners(
    group: ExchangeGroup, impl: PolarImpl, sent: Tensor, hp: PolarGradHParams, found: Optional[Tensor] = None
) -> Tuple[List[Tensor], Any]:
    """O and lr·s·extra on the owners' whole matrices (the one-device ``orthogonalize``), then back:
    per matrix this rank's rows of O, and the step sizes ((B,) for "nuclear", else the group's one).
    Where ``found`` (the same on every rank) O is 0 and every step size 0."""
    x_owned = owned_matrices(group, sent) if group.kind == "rows" else sent
    o, size = owner_orthogonalize(x_owned, impl, hp, found)
    per_matrix = size.reshape(-1) if hp.scale == "nuclear" else None
    if group.kind == "rows":
        o_rows, sizes = rows_from_owners(group, o.contiguous(), per_matrix)
    elif group.kind == "replicated":
        o_rows, sizes = replicated_from_owners(group, o.contiguous(), per_matrix)
    else:
        o_rows, sizes = list(o.unbind(0)), per_matrix
    return o_rows, (sizes if per_matrix is not None else size)


def apply_rows(
    active: List[Tuple[ExchangeGroup, PolarImpl]],
    results: List[Tuple[List[Tensor], Any]],
    P: List[Tensor],
    G: List[Optional[Tensor]],
    M: List[Tensor],
    hp: PolarGradHParams,
    found: Optional[Tensor] = None,
) -> None:
    """Decay each param with a grad once, then W ← W − lr·s·D on this rank's rows of every matrix, with
    D = O, or (polar-first) M ← β·M + (1−β)·O on those rows and D = M or O.lerp(M, β). Where ``found``:
    decay factor 1, M kept, step size 0 on a finite D, so nothing changes."""
    touched = sorted({i for g, _ in active for i in g.params if G[i] is not None})
    if touched:
        _apply_decay([P[i] for i in touched], hp, found)
    beta = hp.momentum
    for (group, _), (o_rows, size) in zip(active, results):
        rows, directions, sizes = [], [], []
        for k, (ref, o) in enumerate(zip(group.matrices, o_rows)):
            if G[ref.param] is None or ref.local_rows == 0:
                continue
            if hp.order == "polar_first":
                m_rows = matrix_rows(M[ref.param], ref, group.n)
                om = o.to(m_rows.dtype)
                if found is None:
                    m_rows.lerp_(om, 1 - beta)
                else:
                    gated_lerp_([m_rows], [om], 1 - beta, found)
                o = om.lerp(m_rows, beta) if hp.nesterov else m_rows
            rows.append(matrix_rows(P[ref.param], ref, group.n))
            directions.append(o)
            sizes.append(size[k] if hp.scale == "nuclear" else size)
        if not rows:
            continue
        # one kernel per matrix, lr·s·D formed in at least float32 inside it: no upcast copy of D and no
        # update tensor (the one-device step's ``subtract_scaled_``)
        if isinstance(size, Tensor):
            tensor_lists.sub_scaled_(rows, directions, sizes)
        else:
            tensor_lists.sub_scaled_(rows, directions, float(size))


def _apply_decay(params: List[Tensor], hp: PolarGradHParams, found: Optional[Tensor] = None) -> None:
    wd = hp.weight_decay
    if hp.weight_decay_mode == "l2" or (not isinstance(wd, Tensor) and wd == 0.0):
        return
    factor = 1 - hp.lr * wd if hp.weight_decay_mode == "decoupled" else 1 - wd
    if found is not None:
        factor = select_scalar(found, 1.0, factor)  # p·1 keeps every bit
    tensor_lists.mul_(params, foreach_scalar(factor, params[0]))
