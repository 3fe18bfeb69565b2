"""Skipping a step on the device when a gradient holds NaN or ±inf.

``nonfinite="skip"`` makes a whole step call a no-op when any of its grads is non-finite: params,
momentum, AdamW moments and step counts keep their bits, and a 0-d integer counter goes up by one. The
decision is a 0-d bool tensor (``found_inf``) that never leaves the device: no ``.item()``, no Python
branch on it, so the same code runs eagerly, under ``torch.compile(fullgraph=True)`` (a skipped and a
clean step run one graph) and inside a CUDA graph. On sharded (DTensor) params every rank reaches the
same decision (``fpolar.nonfinite_ranks``).

Why selects and not multiplication by 0: NaN·0 = NaN and inf·0 = NaN, so "update × (1 − found)" would
still write NaN. Every gate below is a ``torch.where`` (or a multiply by a factor that is exactly 1 or
exactly 0 applied to values known to be finite):

* the polar input is replaced by zeros (``zero_where``), so the polar backends never see NaN (SVD and
  QDWH would raise or loop on it) and return an exactly zero factor;
* the step size is replaced by 0 and the decay factor by 1 (``select_scalar``): p·1 − 0 = p bitwise,
  also for p = −0;
* the momentum EMA writes ``where(found, M, lerp(M, V, 1 − β))`` (``gated_lerp_``): the old bits where
  found, whatever V holds (NaN included), and no copy of the momentum is kept. Under torch.compile the
  lerp and the select are one kernel, so the gate costs no memory pass;
* step counts add ``keep`` (0 or 1) instead of 1.

Detection is one max-abs reduction over the grads of the call (``found_nonfinite``), before anything is
written: one per (device, dtype) for all grads, the op ``fpolar::max_abs`` (``fpolar.kernels.max_abs``).
On CUDA it is one Triton launch over the whole list plus a tiny combine, eagerly, inside a CUDA graph
(its table built before the capture: ``build_max_abs_tables``) and under torch.compile (there as the
opaque op); elsewhere, and where the kernel does not apply, its torch twin: one multi-tensor
``_foreach_norm``, a stack and a reduce. A max-abs does not overflow on large finite grads (1e38 in
fp32 is finite, its square is not), and both propagate NaN.
"""

from __future__ import annotations

from typing import Dict, List, Literal, Optional, Sequence, Union

import torch
from torch import Tensor

from .dtensor import local_tensor
from .kernels.max_abs import build_max_abs_table, max_abs, max_abs_on_cuda, max_abs_reference

NonfiniteMode = Literal["skip", "propagate"]
NONFINITE_MODES: tuple[str, ...] = ("skip", "propagate")

Scalar = Union[float, Tensor]


def check_nonfinite_mode(mode: object) -> None:
    if mode not in NONFINITE_MODES:
        raise ValueError(f"unknown nonfinite {mode!r}; expected one of {list(NONFINITE_MODES)}")


def found_nonfinite(
    grads: Sequence[Optional[Tensor]],
    device: torch.device,
    found_inf: Optional[Tensor] = None,
) -> Tensor:
    """0-d bool on ``device``: True when any element of any grad is NaN or ±inf, or ``found_inf`` is
    nonzero (a GradScaler-style flag, any numeric dtype, any shape with one element).

    ``None`` grads are ignored; a DTensor grad is read through its local shard (this rank's verdict:
    ``fpolar.nonfinite_ranks.agree`` makes it every rank's). Grads are only read.
    """
    flags: List[Tensor] = []
    for (dev, _), gs in _buckets(grads).items():
        # Per (device, dtype): one max-abs over the whole list. A max-abs cannot overflow on finite
        # values, and it is NaN if any element is.
        flag = ~torch.isfinite(_max_abs(gs))
        flags.append(flag if dev == device else flag.to(device))
    if found_inf is not None:
        flags.append(found_inf.reshape(()).to(device=device) != 0)
    if not flags:
        return torch.zeros((), dtype=torch.bool, device=device)
    found = flags[0]
    for f in flags[1:]:
        found = found | f
    return found


def build_max_abs_tables(grads: Sequence[Optional[Tensor]]) -> None:
    """Builds now, eagerly, the device tables ``found_nonfinite(grads, …)`` will look up for its
    one-launch max-abs on CUDA: call it with the same list right before capturing that call in a CUDA
    graph (a capture cannot copy a table to the device; without one the capture runs the twin).
    Reads only addresses and metadata; changes nothing but the table cache."""
    for gs in _buckets(grads).values():
        build_max_abs_table(gs)


def _buckets(grads: Sequence[Optional[Tensor]]) -> Dict[tuple, List[Tensor]]:
    """The non-empty grads (DTensors as their local shards) by (device, dtype), in order."""
    buckets: Dict[tuple, List[Tensor]] = {}
    for g in grads:
        g = None if g is None else local_tensor(g)
        if g is not None and g.numel() > 0:  # an empty tensor holds nothing to check (and max has no identity)
            buckets.setdefault((g.device, g.dtype), []).append(g)
    return buckets


def _max_abs(gs: List[Tensor]) -> Tensor:
    """max |g| over every element of every tensor of ``gs`` (one device and dtype, none empty), 0-d in
    their dtype; NaN if any element is NaN. Eagerly on CUDA the op's CUDA implementation without its
    dispatch (``gs`` is already checked)."""
    if torch.compiler.is_compiling():
        return max_abs(gs)
    if gs[0].is_cuda:
        return max_abs_on_cuda(gs)
    return max_abs_reference(gs)


def unscale_grads(grads: Sequence[Optional[Tensor]], grad_scale: Optional[Tensor]) -> List[Optional[Tensor]]:
    """Grads divided by a GradScaler-style ``grad_scale`` (0-d tensor), as new tensors; the inputs are
    not modified. Multiplies by the reciprocal computed in float64, as ``torch.amp.GradScaler`` does."""
    if grad_scale is None:
        return list(grads)
    live = [i for i, g in enumerate(grads) if g is not None]
    out: List[Optional[Tensor]] = list(grads)
    if not live:
        return out
    inv = grad_scale.reshape(()).double().reciprocal().float()
    gl = [grads[i] for i in live]
    scaled = torch._foreach_mul(gl, inv.to(gl[0].device))  # type: ignore[arg-type]
    for i, s in zip(live, scaled):
        out[i] = s
    return out


def zero_where(found: Tensor, x: Tensor) -> Tensor:
    """``x`` with every element replaced by +0 where ``found`` (a 0-d bool) is True."""
    return torch.where(found, torch.zeros((), dtype=x.dtype, device=x.device), x)


def select_scalar(found: Tensor, if_found: float, value: Scalar) -> Tensor:
    """``if_found`` where ``found`` else ``value`` (a float, 0-d or broadcastable tensor), as a tensor on
    ``found``'s device: a float becomes float64 (a Python float's own precision; as a 0-d tensor it
    does not promote the tensors it multiplies), a tensor keeps its dtype promoted to float32."""
    if isinstance(value, Tensor):
        dtype = torch.promote_types(value.dtype, torch.float32)
        return torch.where(found, torch.full((), if_found, dtype=dtype, device=value.device), value.to(dtype))
    # ones · value, not full((), value): under torch.compile a float lr that went dynamic is a symbolic
    # float, and full/scalar_tensor of it specialize (recompile per value); a multiply does not.
    one = torch.ones((), dtype=torch.float64, device=found.device)
    return torch.where(found, one * if_found, one * value)


def count_step(step: Tensor, skipped: Tensor, found: Tensor) -> None:
    """step += 1 unless found; skipped += 1 if found. In place, on the device."""
    step.add_(~found)
    skipped.add_(found)


def gated_lerp_(xs: Sequence[Tensor], ys: Sequence[Tensor], weight: float, found: Tensor) -> None:
    """x ← x + weight·(y − x) for each pair, in place, except where ``found`` (0-d bool): there every x
    keeps its bits, whatever y holds (NaN, ±inf).

    ``where(found, x, lerp(x, y, w))``, not a lerp by a gated weight: a weight of 0 still reads y
    (NaN·0 = NaN) and x + 0·(y − x) turns −0 into +0. Under torch.compile the lerp, the select and the
    write are one kernel (no extra pass over x). Eagerly one multi-tensor lerp into new tensors, then
    one select per tensor written back into x (a select whose output is an input at the same index).
    """
    if torch.compiler.is_compiling():
        for x, y in zip(xs, ys):
            x.copy_(torch.where(found, x, x.lerp(y, weight)))
        return
    xs = list(xs)
    if len(xs) == 1:
        new = [xs[0].lerp(ys[0], weight)]
    else:
        new = list(torch._foreach_lerp(xs, list(ys), weight))
    for x, n in zip(xs, new):
        torch.where(found, x, n, out=x)
