"""The functional PolarGrad / PolarGradM / Muon step over lists of matrix parameters.

Per shape group (see ``fpolar.state``), three phases in one direction:

    pre_orthogonalize    X: the polar input, (B, m, n) in the parameters' orientation
                         (momentum-first: M ← β·M + (1−β)·G, X = M or its Nesterov blend; polar-first: G)
      ── seam: the batch X can be sent out here, whole matrices come back ──
    orthogonalize        O = polar(X) (tall groups iterated as their wide transpose), s = lr·scale·extra
      ── seam ──
    post_orthogonalize   D = O (polar-first: M ← β·M + (1−β)·O, D = M or its blend); W ← decay(W) − s·D

Which layout a group's momentum runs in (the whole stacked buffer, or per-param views) is chosen once,
in ``live_batch``; which polar implementation runs is chosen once, when the plan is built
(``PolarGradState.polar_impls``). No host sync, no ``.item()``, no branch on tensor values: the Python
control flow depends only on shapes, dtypes and hparams, so ``torch.compile(fullgraph=True)`` traces
it once.

Eagerly, a group larger than ``CHUNK_ELEMENTS`` runs the three phases on consecutive chunks of its
params (``group_chunks``), which bounds the step's workspace; the result is the whole group's.

A group whose ``PolarImpl.glue`` is "fused" (CUDA) runs the same math as two one-pass ops around the
polar factor instead (``fpolar.fused_glue``), chunked the same way.

``nonfinite="skip"`` (see ``fpolar.nonfinite``) threads one 0-d bool ``found`` through the phases: the
momentum EMA keeps the old bits where found (one select in the same op), ``orthogonalize`` sees zeros
and returns a zero step size, and the decay factor becomes 1.

Why ``found`` is a pre-pass over the grads and does not ride on the Frobenius (or max-abs) norm the
polar backend takes of X: the flag must gate every group, and the groups run one after another (group 1
writes its params before group 2's norm exists); the step count is written first; and SVD / QDWH must
not see NaN at all. Riding on the norms would mean orthogonalizing every group before writing any
(holding every group's O at once) inside the backends. The pre-pass is one read of the grads (an
estimate, not a measurement: GPT-2-small's ≈ 85 M matrix entries in fp32 are 340 MB, ≈ 0.08 ms at 4.3 TB/s).
"""

from __future__ import annotations

from functools import partial
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import tensor_lists
from .fused_glue import fused_glue_applies, fused_group_step
from .hparams import PolarGradHParams, foreach_scalar
from .nonfinite import (
    count_step,
    found_nonfinite,
    gated_lerp_,
    select_scalar,
    unscale_grads,
    zero_where,
)
from .polar import PolarImpl, polar_in_orientation
from .polar.dispatch import check_kernels_device
from .scale import nuclear_scale, shape_scale
from .side_streams import side_by_side
from .state import PolarGradState, ShapeGroup, group_views, plan_polar_impls, plan_shape_groups
from .validation import check_amp_tensors, check_params_and_grads

Scalar = Union[float, Tensor]


def polargrad_step(
    params: Sequence[Tensor],
    grads: Sequence[Optional[Tensor]],
    state: PolarGradState,
    hparams: PolarGradHParams,
    *,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> PolarGradState:
    """One PolarGrad / PolarGradM / Muon step (see ``PolarGradHParams`` for the math).

    Args:
        params: matrix parameters (each ≥ 2-D, real float, dense, distinct). **Updated in place.**
        grads: one per param, same shape/dtype/device, or None to skip that param this step (its
            momentum is left untouched). Not modified, also under ``weight_decay_mode="l2"``.
        state: from ``init_state(params, hparams)``. **Updated in place** (momentum, step, skipped).
        hparams: ``PolarGradHParams``.
        grad_scale: optional one-element tensor (GradScaler-style): the grads are divided by it first.
        found_inf: optional one-element tensor (GradScaler-style): nonzero makes the call a no-op, as a
            non-finite grad does under ``nonfinite="skip"`` (honoured under "propagate" too).

    With ``hparams.nonfinite="skip"`` (default), a call where any grad holds NaN/±inf leaves params,
    momentum and ``state.step`` bitwise unchanged and adds 1 to ``state.skipped``; the decision stays
    on the device (no host sync; a skipped and a clean call run the same compiled graph). For a
    distributed state (DTensor params, ``process_group``, ``split_sizes``) see
    ``fpolar.distributed.distributed_polargrad_step``: a NaN in one rank's shard skips the call on
    every rank. The math runs under ``torch.no_grad()``, so params that require grad need no context.

    Returns:
        ``state`` (the same object), for convenience.

    Raises:
        TypeError/ValueError before any tensor is modified: list length mismatch, a grad whose
        shape/dtype/device differs from its param, a 0-/1-D or non-float/complex/sparse tensor, a param
        listed twice, an expanded or inference-mode param, a state built for other params or edited
        (a momentum tensor of another shape/dtype), or ``kernels="triton"`` for params not on CUDA.
    """
    if not isinstance(state, PolarGradState):
        raise TypeError(f"state must be a PolarGradState from fpolar.init_state, got {type(state).__name__}")
    # A distributed state (``fpolar.distributed``) brings its own step around the same phases; asking
    # the state keeps this module free of imports from the layer above it.
    planned_step = getattr(state, "planned_step", None)
    if planned_step is not None:
        return planned_step(params, grads, state, hparams, grad_scale=grad_scale, found_inf=found_inf)
    impls = check_step_inputs(params, grads, state, hparams, grad_scale, found_inf)
    return _step_groups(params, grads, state, hparams, impls, grad_scale, found_inf)


def polargrad_step_prechecked(
    params: Sequence[Tensor],
    grads: Sequence[Optional[Tensor]],
    state: PolarGradState,
    hparams: PolarGradHParams,
    *,
    found_inf: Optional[Tensor] = None,
) -> PolarGradState:
    """``polargrad_step`` for inputs that already passed ``check_step_inputs`` (the same params, grads,
    state and hparams objects, unchanged since): ``fpolar.optim`` checks every group before any group
    steps, and a second pass would only cost the host its time again. A distributed state runs its
    own step, checks included."""
    planned_step = getattr(state, "planned_step", None)
    if planned_step is not None:
        return planned_step(params, grads, state, hparams, found_inf=found_inf)
    return _step_groups(params, grads, state, hparams, state.polar_impls_for(hparams.polar_spec), None, found_inf)


def _step_groups(
    params: Sequence[Tensor],
    grads: Sequence[Optional[Tensor]],
    state: PolarGradState,
    hparams: PolarGradHParams,
    impls: Sequence[PolarImpl],
    grad_scale: Optional[Tensor],
    found_inf: Optional[Tensor],
) -> PolarGradState:
    """The step over every shape group (the three phases, or the fused glue), inputs checked."""
    with torch.no_grad():
        grads = unscale_grads(grads, grad_scale)
        if hparams.weight_decay_mode == "l2":
            grads = with_l2(params, grads, hparams.weight_decay)
        found = _found(grads, state, hparams, found_inf)
        if found is None:
            state.step.add_(1)
        else:
            count_step(state.step, state.skipped, found)  # type: ignore[arg-type]
        # The groups are independent: while a CUDA graph is captured each is a branch of its own
        # (fpolar.side_streams); elsewhere they run in order.
        stepping = [
            (group, buffer, impl)
            for group, buffer, impl in zip(state.groups, state.buffers, impls)
            if any(grads[i] is not None for i in group.indices)
        ]
        side_by_side(
            state.step.device,
            [partial(_group_step, group, buffer, impl, params, grads, state, hparams, found) for group, buffer, impl in stepping],
            [group_workspace_bytes(group, buffer, impl) for group, buffer, impl in stepping],
        )
    return state


def group_workspace_bytes(group: ShapeGroup, buffer: Tensor, impl: PolarImpl) -> int:
    """An upper estimate of what one group's step allocates: four (B, m, n) tensors in the wider of
    the momentum and polar dtypes (the polar input, two Newton–Schulz iterates, the factor; the m×m
    products of the Gram form are smaller than one of them)."""
    itemsize = max(buffer.element_size(), impl.polar_dtype.itemsize)
    return 4 * group.batch * group.m * group.n * itemsize


def _group_step(
    group: ShapeGroup,
    buffer: Tensor,
    impl: PolarImpl,
    params: Sequence[Tensor],
    grads: Sequence[Optional[Tensor]],
    state: PolarGradState,
    hparams: PolarGradHParams,
    found: Optional[Tensor],
) -> None:
    """One shape group's step, chunk by chunk: the fused glue where it applies, else the three phases."""
    group_params = [params[i] for i in group.indices]
    group_grads = [grads[i] for i in group.indices]
    if fused_glue_applies(impl, hparams, buffer, group_params, group_grads):
        for chunk, chunk_buffer in group_chunks(group, buffer):
            chunk_params = [params[i] for i in chunk.indices]
            chunk_grads = [grads[i] for i in chunk.indices]
            fused_group_step(chunk, chunk_buffer, chunk_params, chunk_grads, impl, hparams, found)  # type: ignore[arg-type]
        return
    for chunk, chunk_buffer in group_chunks(group, buffer):
        batch = live_batch(chunk, chunk_buffer, params, grads, state)
        if batch is None:
            continue
        x = pre_orthogonalize(batch, hparams, found)
        orthogonalized = orthogonalize(x, impl, hparams, found)
        post_orthogonalize(batch, orthogonalized, hparams, found)


def check_step_inputs(
    params: Sequence[Tensor],
    grads: Sequence[Optional[Tensor]],
    state: Optional[PolarGradState],
    hparams: PolarGradHParams,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> Tuple[PolarImpl, ...]:
    """Every check ``polargrad_step`` makes before it changes anything; returns the groups' polar
    implementations. ``state=None`` checks against the state ``init_state(params, hparams)`` would
    build (``fpolar.optim`` validates all its groups this way before stepping any)."""
    if not isinstance(hparams, PolarGradHParams):
        raise TypeError(f"hparams must be PolarGradHParams, got {type(hparams).__name__}")
    check_params_and_grads(params, grads, matrices=True)
    if state is None:
        groups = plan_shape_groups(params)
        impls = plan_polar_impls(groups, hparams.polar_spec)
    else:
        state.check_matches(params)
        groups, impls = state.groups, state.polar_impls_for(hparams.polar_spec)
    for group, impl in zip(groups, impls):
        check_kernels_device(impl.kernels, group.device)
    check_amp_tensors(grad_scale, found_inf)
    return impls


def _found(
    grads: Sequence[Optional[Tensor]], state: PolarGradState, hp: PolarGradHParams, found_inf: Optional[Tensor]
) -> Optional[Tensor]:
    """The call's skip flag (0-d bool on the state's device), or None when nothing can skip it."""
    if hp.nonfinite == "skip":
        return found_nonfinite(grads, state.step.device, found_inf)
    if found_inf is not None:
        return found_nonfinite([], state.step.device, found_inf)
    return None


# --------------------------------------------------------------------------- what one group carries


class GroupBatch(NamedTuple):
    """One shape group's params that have a grad this step, and the layout their momentum runs in.

    Attributes:
        group: the live params' layout in a (B, m, n) stack (the whole group when all are live).
        shapes: their shapes, indexed the way ``group_views(…, group, shapes)`` expects.
        params, grads: the live params and their grads.
        buffer: the group's stacked momentum (B_group, m, n), live params or not.
        momentum: the live params' momentum views for the per-param layout; None for the stacked
            layout (the momentum update runs on ``buffer`` as one tensor).
        whole: every param of the group is live, so ``buffer`` is the live momentum stack.
    """

    group: ShapeGroup
    shapes: List[torch.Size]
    params: List[Tensor]
    grads: List[Tensor]
    buffer: Tensor
    momentum: Optional[List[Tensor]]
    whole: bool


class Orthogonalized(NamedTuple):
    """What ``orthogonalize`` returns for a (B, m, n) polar input X, in the parameters' orientation.

    Attributes:
        o: polar(X), (B, m, n) in the polar dtype.
        step_size: lr·s·extra_scale: (B, 1, 1) at least float32 for "nuclear" scaling, else a float or
            a 0-d tensor (the shape rules are one constant per group).
    """

    o: Tensor
    step_size: Union[Tensor, float]


def live_batch(
    group: ShapeGroup,
    buffer: Tensor,
    params: Sequence[Tensor],
    grads: Sequence[Optional[Tensor]],
    state: PolarGradState,
) -> Optional[GroupBatch]:
    """The group's params with a grad this step (None if none), with the momentum layout chosen once.

    Stacked (``momentum=None``) under torch.compile when every param of the group has a grad: the
    momentum update runs on the whole buffer, because per-param in-place ops on views of it are
    functionalized into one full-buffer scatter per param (measured on the H100: 0.2 ms kernels, the
    compiled step 7.7 ms vs 5.8 eager), and the grads' stack fuses into the lerp kernel. Per-param
    otherwise: eagerly, foreach over the views reads each grad once and needs no stack copy.
    """
    live = [j for j, i in enumerate(group.indices) if grads[i] is not None]
    if not live:
        return None
    whole = len(live) == len(group.indices)
    stacked = whole and torch.compiler.is_compiling()
    return GroupBatch(
        group=_live_group(group, live),
        shapes=_shapes(params, group, live),
        params=[params[group.indices[j]] for j in live],
        grads=[grads[group.indices[j]] for j in live],  # type: ignore[misc]
        buffer=buffer,
        momentum=None if stacked else _momentum_views(state, group, buffer, live),
        whole=whole,
    )


# --------------------------------------------------------------------------- the three phases


def pre_orthogonalize(batch: GroupBatch, hp: PolarGradHParams, found: Optional[Tensor] = None) -> Tensor:
    """The polar input X of the group, (B, m, n) in the parameters' orientation: the momentum buffer
    itself where it is the whole batch (no copy), else the per-param tensors stacked.

    Momentum-first: M ← β·M + (1−β)·G in place, X = G.lerp(M, β) (Nesterov) or M. Polar-first: X = G
    stacked; momentum waits for O (``post_orthogonalize``). A tall group's X stays tall here:
    ``orthogonalize`` iterates on its wide transpose. On a skipped call (``found``) M keeps its bits.
    """
    if hp.order == "polar_first":
        return stack_matrices(batch.grads, batch.group)
    return momentum_ema_(batch, batch.grads, hp, found)


def orthogonalize(x: Tensor, impl: PolarImpl, hp: PolarGradHParams, found: Optional[Tensor] = None) -> Orthogonalized:
    """O = polar(X) for a (B, m, n) polar input of either orientation, and the step size lr·s·extra.

    Reads only ``x``, ``impl`` and ``hp`` (and ``found``): no parameter and no state, so it can run on
    any subset of the batch's matrices (dim 0) and return them whole. On a skipped call (``found``)
    the backend gets zeros (SVD and QDWH must not see NaN) and the step size is a select of 0 (⟨O, X⟩
    is NaN there, and NaN·0 is NaN).
    """
    o = polar_in_orientation(x if found is None else zero_where(found, x), hp.polar_spec, impl)
    size = step_size(o, x, hp)
    return Orthogonalized(o, size if found is None else select_scalar(found, 0.0, size))


def post_orthogonalize(
    batch: GroupBatch, orthogonalized: Orthogonalized, hp: PolarGradHParams, found: Optional[Tensor] = None
) -> None:
    """W ← decay(W) − lr·s·extra·D for the live params, with D = O (momentum-first) or, polar-first,
    M ← β·M + (1−β)·O in place and D = O.lerp(M, β) (Nesterov) or M. On a skipped call the step size
    is 0 and D finite (M kept its bits), so the update is exactly 0, and the decay factor is 1."""
    o, size = orthogonalized
    direction = o if hp.order == "momentum_first" else momentum_ema_(batch, o, hp, found)
    _apply_decay(batch.params, hp, found)
    subtract_scaled_(batch, direction, size)


# --------------------------------------------------------------------------- the math of each phase


def momentum_ema_(
    batch: GroupBatch, values: Union[List[Tensor], Tensor], hp: PolarGradHParams, found: Optional[Tensor] = None
) -> Tensor:
    """M ← β·M + (1−β)·V in place, or M unchanged bit for bit where ``found`` (V may then hold NaN);
    returns V.lerp(M, β) (Nesterov) or M, stacked (B, m, n).

    ``values`` are per-param tensors (the grads) or one (B, m, n) stack (O, polar-first). The stacked
    layout updates ``batch.buffer`` as one tensor; the per-param layout updates the momentum views with
    foreach and returns the buffer itself when it is the whole live stack (no copy).
    """
    beta, group = hp.momentum, batch.group
    if batch.momentum is None:
        v = values if isinstance(values, Tensor) else stack_matrices(values, group)
        v = v.to(batch.buffer.dtype)
        if found is None:
            batch.buffer.lerp_(v, 1 - beta)
        else:
            gated_lerp_([batch.buffer], [v], 1 - beta, found)
        return v.lerp(batch.buffer, beta) if hp.nesterov else batch.buffer
    mom = batch.momentum
    if isinstance(values, Tensor):
        # lerp needs one dtype; a tall group's O stays a transposed view (no contiguous copy)
        vs = matrix_views(values.to(mom[0].dtype), group, batch.shapes)
    elif mom[0].dtype != values[0].dtype:  # momentum_dtype differs from the param dtype
        vs = [t.to(mom[0].dtype) for t in values]
    else:
        vs = values
    if found is None:
        tensor_lists.lerp_(mom, vs, 1 - beta)
    else:
        gated_lerp_(mom, vs, 1 - beta, found)
    if hp.nesterov:
        # Each param's blend written straight into its slice of the stack: one (B, m, n) tensor, no
        # per-param temporaries to concatenate.
        x = torch.empty((sum(group.counts), group.m, group.n), dtype=mom[0].dtype, device=mom[0].device)
        for v, m, out in zip(vs, mom, group_views(x, group, batch.shapes)):
            torch.lerp(v, m, beta, out=out)
        return x
    return batch.buffer if batch.whole else stack_matrices(mom, group)


def step_size(o: Tensor, x: Tensor, hp: PolarGradHParams) -> Union[Tensor, float]:
    """lr·s·extra_scale for (B, m, n) O and X: s = ⟨O, X⟩ per matrix, (B, 1, 1), for "nuclear"; else
    the shape rule's constant for m×n (a float, or a 0-d tensor when lr is one)."""
    if hp.scale == "nuclear":
        s = nuclear_scale(o, x)[:, None, None]
        return s * (hp.lr * hp.extra_scale)
    return hp.lr * (shape_scale(hp.scale, x.size(-2), x.size(-1)) * hp.extra_scale)


def subtract_scaled_(batch: GroupBatch, direction: Tensor, size: Union[Tensor, float]) -> None:
    """W ← W − size·D for the live params, D (B, m, n) in the parameters' orientation, any layout
    (a tall group's D is a transposed view) and dtype; ``size`` a float, a 0-d tensor or (B, 1, 1).

    Each param reads its own slice of D: no (B, m, n) update is made, no upcast copy and no
    contiguous copy of a transposed D. The product is formed in the promoted dtype (at least
    float32 for a float32 size or param), so lr·s is never rounded to a bf16 D's precision."""
    ds = matrix_views(direction, batch.group, batch.shapes)
    if isinstance(size, Tensor) and size.dim() == 3:  # one scale per matrix ("nuclear")
        tensor_lists.sub_scaled_(batch.params, ds, matrix_views(size, batch.group, [_scale_shape(s) for s in batch.shapes]))
    elif isinstance(size, Tensor):
        tensor_lists.sub_scaled_(batch.params, ds, [size] * len(ds))
    else:
        tensor_lists.sub_scaled_(batch.params, ds, float(size))


def matrix_views(stacked: Tensor, group: ShapeGroup, shapes: Sequence[torch.Size]) -> List[Tensor]:
    """``group_views`` for a (B, m, n) tensor of any strides: a view per param where its shape allows
    one (always for 2-D and (k, m, n) params), else a reshaped copy."""
    if stacked.is_contiguous():
        return group_views(stacked, group, shapes)
    out = []
    for i, off, k in zip(group.indices, group.offsets, group.counts):
        t = stacked[off : off + k] if k > 1 or len(shapes[i]) == 3 else stacked[off]
        out.append(t if t.shape == shapes[i] else t.reshape(shapes[i]))
    return out


def _scale_shape(shape: torch.Size) -> torch.Size:
    """The shape a param's per-matrix scale takes to broadcast over it: (k, 1, 1) for a (k, m, n)
    stack, else (1, 1) (a matrix, or a higher-dim param that is one matrix)."""
    return torch.Size((shape[0], 1, 1)) if len(shape) == 3 else torch.Size((1, 1))


# Eagerly, a shape group's matrices go through the polar step in chunks of at most this many elements
# (256 MiB of float32) per (B, m, n) stack, so the step's workspace (the polar input, the iterates, the
# Gram matrices) is bounded by the chunk, not the group: a 7B-class model's 32 × 4096 × 11008 group
# runs one matrix at a time. Why not smaller: each chunk is one more run of the whole eager step's
# launches, and on GPT-2-small (H200, ``benchmarks/step_memory.py --chunk-sweep``) the eager Muon step
# took 4.6 ms with whole groups (202.5 MiB of workspace), 7.2 ms in chunks of 2^24 elements
# (104.3 MiB) and 17.5 ms in chunks of 2^22 (33.8 MiB, torch.optim.Muon's 22 MiB × 1.5; measured
# when that bound still let some chunks hold two matrices above it, see BENCHMARKS.md): bounding a
# small model's workspace that tightly costs more time than it saves memory. Under torch.compile a
# group stays one batch (its momentum update runs on the whole stacked buffer, and Inductor plans
# the memory); so it does while a CUDA graph is captured, whose pool is allocated once and reused by
# every replay, and whose launches cost little, so the larger batch's faster products count there.
CHUNK_ELEMENTS = 1 << 26


def group_chunks(group: ShapeGroup, buffer: Tensor) -> List[Tuple[ShapeGroup, Tensor]]:
    """The group as consecutive runs of its params, each with its slice of the momentum ``buffer``,
    with as few runs as keep each under ``CHUNK_ELEMENTS`` elements and matrix counts about equal (a
    param is never split: a run holding one (k, m, n) param, or one matrix, may exceed the bound).

    Every matrix's math is independent of the others in its batch, so the chunks give the result
    of the whole group (bitwise on CPU: tested). One run (the group itself) under torch.compile and
    while a CUDA graph is captured."""
    total = sum(group.counts)
    per = group.m * group.n
    whole = torch.compiler.is_compiling() or (buffer.is_cuda and torch.cuda.is_current_stream_capturing())
    if whole or total * per <= CHUNK_ELEMENTS or len(group.indices) == 1:
        return [(group, buffer)]
    most = max(1, CHUNK_ELEMENTS // per)  # matrices a chunk may hold
    target = -(-total // -(-total // most))  # as few chunks as that allows, their counts about equal
    runs: List[List[int]] = [[]]
    filled = 0
    for j, k in enumerate(group.counts):
        if filled and filled + k > target:
            runs.append([])
            filled = 0
        runs[-1].append(j)
        filled += k
    out = []
    for run in runs:
        start = group.offsets[run[0]]
        count = sum(group.counts[j] for j in run)
        chunk = ShapeGroup(
            indices=tuple(group.indices[j] for j in run),
            offsets=tuple(group.offsets[j] - start for j in run),
            counts=tuple(group.counts[j] for j in run),
            m=group.m,
            n=group.n,
            dtype=group.dtype,
            device=group.device,
        )
        out.append((chunk, buffer[start : start + count]))
    return out


def stack_matrices(tensors: Sequence[Tensor], group: ShapeGroup) -> Tensor:
    """Per-param tensors as the group's (B, m, n) batch, in the parameters' orientation (a view for one)."""
    if len(tensors) == 1:
        return tensors[0].reshape(-1, group.m, group.n)
    return torch.cat([t.reshape(-1, group.m, group.n) for t in tensors])


def with_l2(params: Sequence[Tensor], grads: Sequence[Optional[Tensor]], wd: Scalar) -> List[Optional[Tensor]]:
    """G + λW for each live grad, as new tensors (the user's grads stay as they were)."""
    live = [i for i, g in enumerate(grads) if g is not None]
    out: List[Optional[Tensor]] = list(grads)
    if not live:
        return out
    gl = [grads[i] for i in live]
    pl = [params[i] for i in live]
    wd = foreach_scalar(wd, pl[0])
    if isinstance(wd, Tensor):
        summed = torch._foreach_add(gl, torch._foreach_mul(pl, wd))
    else:
        summed = torch._foreach_add(gl, pl, alpha=wd)
    for i, s in zip(live, summed):
        out[i] = s
    return out


# --------------------------------------------------------------------------- bookkeeping


def _apply_decay(params: List[Tensor], hp: PolarGradHParams, found: Optional[Tensor] = None) -> None:
    """W ← (1 − lr·λ)W ("decoupled") or (1 − λ)W ("independent"); nothing for "l2" or λ = 0; a factor
    of exactly 1 on a skipped call (p·1 keeps every bit)."""
    wd = hp.weight_decay
    if hp.weight_decay_mode == "l2" or (not isinstance(wd, Tensor) and wd == 0.0):
        return
    factor = 1 - hp.lr * wd if hp.weight_decay_mode == "decoupled" else 1 - wd
    if found is not None:
        factor = select_scalar(found, 1.0, factor)
    tensor_lists.mul_(params, foreach_scalar(factor, params[0]))


def _momentum_views(state: PolarGradState, group: ShapeGroup, buffer: Tensor, live: List[int]) -> List[Tensor]:
    """The live params' momentum: ``state.momentum`` eagerly; under torch.compile, views of ``buffer``
    made inside the graph. ``state.momentum`` holds views of ``buffer``, and a compiled graph whose
    inputs alias each other with one mutated is traced through a synthetic base, which discards
    every static-address mark (``mark_static``), so CUDA graphs (``mode="reduce-overhead"``) would
    be skipped for "mutated inputs". Views made in the graph leave ``buffer`` the only input."""
    if torch.compiler.is_compiling():
        views = group_views(buffer, group, state.shapes)
        return [views[j] for j in live]
    return [state.momentum[group.indices[j]] for j in live]


def _live_group(group: ShapeGroup, live: List[int]) -> ShapeGroup:
    """The group restricted to the params at positions ``live`` (offsets renumbered)."""
    if len(live) == len(group.indices):
        return group
    counts = tuple(group.counts[j] for j in live)
    offsets, off = [], 0
    for k in counts:
        offsets.append(off)
        off += k
    return ShapeGroup(
        indices=tuple(range(len(live))),
        offsets=tuple(offsets),
        counts=counts,
        m=group.m,
        n=group.n,
        dtype=group.dtype,
        device=group.device,
    )


def _shapes(params: Sequence[Tensor], group: ShapeGroup, live: List[int]) -> List[torch.Size]:
    """Shapes indexed the way ``group_views`` expects for ``_live_group(group, live)``."""
    if len(live) == len(group.indices):
        return [p.shape for p in params]
    return [params[group.indices[j]].shape for j in live]
