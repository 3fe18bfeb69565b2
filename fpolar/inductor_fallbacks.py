"""fpolar's custom ops registered with Inductor as fallback kernels before it lowers a graph holding one.

Why: Inductor meets a custom op it has no lowering for by making an implicit fallback, and in
torch 2.11 (and earlier releases) it logs that with the message built eagerly, whatever the log level:
``log.info("Creating implicit fallback for:\\n%s", error.operator_str(target, args, kwargs))``. The
message prints the op's inputs as Inductor IR, and an input at the end of a whole train step (the
grads ``fpolar::max_abs`` reads, computed by the whole backward) prints the IR it came from, node by
node, a shared node once per path to it. On the H200 (torch 2.11) the first ``mode="reduce-overhead"``
compile of a small MLP's whole train step was still in that ``operator_str`` after 110 s; it had
taken 7.9 s in a process where an earlier compile had already met the ops (the fallback, once made,
is kept for the process). Later torch builds the message lazily. An op registered beforehand, with
the layout constraint the implicit path would pick, is found among Inductor's lowerings, and that
line is never reached: the same fallback, made without the message.

When: from each op's fake implementation, which runs while torch.compile traces a graph holding
the op, so every way of compiling one is covered (fpolar's entry points, a user's own
``torch.compile``). Only when Inductor's lowering module is already loaded (it is by the time
Inductor traces), so a trace for another backend or a meta-device run imports nothing and pays
nothing.
"""

from __future__ import annotations

import sys

import torch

__all__ = ["register_before_lowering"]


def register_before_lowering(op: "torch._ops.OpOverload") -> None:
    """Makes ``op`` an Inductor fallback kernel, as Inductor's implicit path would (same layout
    constraint: the op's tag, with Inductor's default), unless Inductor is not loaded, already has a
    lowering for it, or lacks the helpers that path uses (another torch version: its own path then
    runs as before)."""
    lowering = sys.modules.get("torch._inductor.lowering")
    if lowering is None or op in lowering.lowerings:
        return
    tag_of = getattr(lowering, "get_layout_constraint_tag", None)
    constraint_of = getattr(lowering, "tag_to_layout_constraint", None)
    make_fallback = getattr(lowering, "make_fallback", None)
    if tag_of is None or constraint_of is None or make_fallback is None:
        return
    make_fallback(op, layout_constraint=constraint_of(tag_of(op, with_default=True)), warn=False)
