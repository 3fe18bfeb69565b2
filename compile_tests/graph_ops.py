"""The captured aten graph of a compiled function, normalized for snapshots and counts.

``aten_graph(fn, *args)`` compiles ``fn`` with ``fullgraph=True`` through AOTAutograd (so the graph is
functionalized aten, what Inductor receives) and returns that graph. ``op_sequence`` lists its compute
ops in order as ``namespace.op`` — overload suffixes (``.default``, ``.Tensor``, ``.List``) and node ids
dropped, pure view ops dropped — so a snapshot shows what runs, not how torch names it this release.
``compress`` folds repeats (``(bmm baddbmm baddbmm) x5``) so a reviewer reads the pipeline at a glance.
"""

from __future__ import annotations

import collections
import operator
from typing import Callable, List, Sequence

import torch
from torch import fx

# Ops that only reinterpret a tensor's metadata; which of them appear (view vs reshape vs as_strided)
# changes between torch releases without any change in the work done.
VIEW_OPS = frozenset(
    {
        "aten.alias",
        "aten.as_strided",
        "aten.detach",
        "aten.expand",
        "aten.permute",
        "aten.reshape",
        "aten.select",
        "aten.slice",
        "aten.squeeze",
        "aten.t",
        "aten.transpose",
        "aten.unsqueeze",
        "aten.view",
        "aten._unsafe_view",
        "aten._reshape_alias",
    }
)


def aten_graph(fn: Callable, *args) -> fx.GraphModule:
    """Compile ``fn`` (fullgraph) with an AOTAutograd backend that records its forward graph; run it once
    on ``args`` (which it may mutate) and return that graph."""
    from torch._dynamo.backends.common import aot_autograd

    graphs: List[fx.GraphModule] = []

    def record(gm: fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(fn, backend=aot_autograd(fw_compiler=record), fullgraph=True)
    compiled(*args)
    if len(graphs) != 1:
        raise AssertionError(f"expected one forward graph, got {len(graphs)}")
    return graphs[0]


def op_name(target) -> str:
    """``aten.bmm`` for ``aten.bmm.default``; ``fpolar.sym_gram`` for a custom op; the function name else."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target.overloadpacket.__name__.split('.')[-1]}"
    if isinstance(target, torch._ops.OpOverloadPacket):
        return f"{target._qualified_op_name.replace('::', '.')}"
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"hop.{target.name()}"
    return getattr(target, "__name__", str(target))


def op_sequence(gm: fx.GraphModule) -> List[str]:
    """The graph's compute ops in execution order (views and tuple indexing dropped)."""
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        name = op_name(node.target)
        if name not in VIEW_OPS:
            out.append(name)
    return out


def compress(seq: Sequence[str], max_period: int = 4) -> str:
    """One line per run: ``op`` or ``op xk`` or ``(op1 op2 op3) xk``, the namespace ``aten.`` dropped.

    Greedy: at each position take the period (1..max_period) whose repeats cover the most ops.
    """
    names = [s[len("aten."):] if s.startswith("aten.") else s for s in seq]
    lines, i = [], 0
    while i < len(names):
        best_k, best_reps = 1, 1
        for k in range(1, max_period + 1):
            reps = 1
            while names[i + reps * k : i + (reps + 1) * k] == names[i : i + k]:
                reps += 1
            if reps > 1 and k * reps > best_k * best_reps:
                best_k, best_reps = k, reps
        unit = names[i : i + best_k]
        if best_reps == 1:
            lines.append(unit[0])
            i += 1
            continue
        body = unit[0] if best_k == 1 else "(" + " ".join(unit) + ")"
        lines.append(f"{body} x{best_reps}")
        i += best_k * best_reps
    return "\n".join(lines)


def op_counts(seq: Sequence[str]) -> str:
    """``op xcount`` per distinct op, sorted by name: insensitive to the order Inductor receives them."""
    counts = collections.Counter(s[len("aten."):] if s.startswith("aten.") else s for s in seq)
    return "\n".join(f"{name} x{n}" for name, n in sorted(counts.items()))


class _Recorded(Exception):
    """Raised by ``post_grad_graph``'s hook once it holds the graph: nothing after it is needed."""


def post_grad_graph(fn: Callable, *args) -> fx.GraphModule:
    """The graph Inductor lowers for ``fn`` (fullgraph): after its post-grad passes, i.e. after the
    re-inplacing of functionalized in-place ops and the decomposition of ``auto_functionalized``, so a
    mutated buffer that was cloned instead of written in place shows as ``aten.clone``/``aten.copy_``.

    Compilation stops right after (no code is generated or run: ``args`` are not mutated). Pinned to
    Inductor's internals (``compile_fx.post_grad_passes``), like the graph snapshots."""
    import unittest.mock

    from torch._inductor import compile_fx
    from torch._inductor import config as inductor_config

    graphs: List[fx.GraphModule] = []
    original = compile_fx.post_grad_passes

    def record(gm: fx.GraphModule, is_inference: bool) -> None:
        original(gm, is_inference)
        graphs.append(gm)
        raise _Recorded

    with unittest.mock.patch.object(compile_fx, "post_grad_passes", record), inductor_config.patch(
        fx_graph_cache=False
    ):
        try:
            torch.compile(fn, fullgraph=True)(*args)
        except Exception as e:  # noqa: BLE001 - the hook's stop arrives wrapped by dynamo
            if not graphs:
                raise
            del e
    if len(graphs) != 1:
        raise AssertionError(f"expected one graph, got {len(graphs)}")
    return graphs[0]


def copies(gm: fx.GraphModule) -> List[str]:
    """Every node of a post-grad graph that copies a tensor into new memory, as ``op(args)`` strings:
    ``clone``, ``copy_`` into anything but a graph input or a diagonal view (an input's write-back
    is the in-place update itself; ``diagonal().add_`` is the a·I add), and what is left of
    ``auto_functionalized`` (it clones every mutated argument it was not re-inplaced onto)."""
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = op_name(node.target)
        if name == "aten.clone" or "auto_functionalized" in name:
            out.append(f"{name}({node.args[0] if node.args else ''})")
        elif name == "aten.copy_":
            dst = node.args[0]
            if dst.op == "placeholder" or (dst.op == "call_function" and op_name(dst.target) == "aten.diagonal"):
                continue
            out.append(f"{name}({dst})")
    return out


def beta_products(gm: fx.GraphModule) -> int:
    """``baddbmm``/``addmm`` nodes with β ≠ 0. On CUDA each copies its β-operand into its output
    before the GEMM (ATen: ``out.copy_(self)`` when β ≠ 0): one device-to-device memcpy per node."""
    n = 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and op_name(node.target) in ("aten.baddbmm", "aten.addmm"):
            if node.kwargs.get("beta", 1) != 0:
                n += 1
    return n
