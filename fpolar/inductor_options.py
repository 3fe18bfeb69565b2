"""Inductor settings a compiled fpolar train step needs on the installed torch, scoped to that compile.

torch 2.11 (and older) asserts in ``torch/_inductor/scheduler.py``,
``FusedSchedulerNode.reorder_loops_by_dep_pair`` (``assert isinstance(snode, SchedulerNode)``), when
a whole train step is compiled for CUDA: the optimizer's ``torch._foreach_*`` ops lower to
``ForeachKernelSchedulerNode``s (GPU backends only; the CPU backend splits foreach ops, so it never
builds one). Once such a node has fused with a producer or consumer, its ``snodes`` hold
``FusedSchedulerNode``s, not ``SchedulerNode``s; the loop-ordering-after-fusion round
(``loop_ordering_after_fusion``, on by default) then asks the foreach node to reorder its loops to
match a neighbour and the method, inherited from ``FusedSchedulerNode``, asserts on its first
subnode. A GPT step has the ingredients (foreach AdamW over embeddings/head/norms of many shapes next
to per-tensor reductions); the small MLPs of ``compile_tests`` did not. Upstream (pytorch issue
176591, fix in PR 176849) the method returns False for such subnodes instead; torch 2.13 has that.

The avoidance: no loop reordering after fusion for this compile. It only gives up an optional
re-tiling of a few pointwise kernels; every fusion of the normal rounds still happens.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

__all__ = ["LOOP_REORDER_ASSERTS", "inductor_options"]


def _version(v: str) -> tuple:
    return tuple(int(x) for x in v.split("+")[0].split(".")[:2])


# torch releases whose reorder_loops_by_dep_pair still asserts on fused subnodes (2.13 checked fixed;
# 2.12 not checked, so it is treated as affected).
LOOP_REORDER_ASSERTS: bool = _version(torch.__version__) < (2, 13)


def inductor_options(mode: Optional[str] = None) -> Dict[str, Any]:
    """``torch.compile(..., options=inductor_options(mode))``: the Inductor options of ``mode``
    ("default", "reduce-overhead", "max-autotune", ... or None) plus what this torch needs for a
    whole fpolar train step. torch.compile takes ``mode`` or ``options``, not both: this folds the
    mode in. Raises ValueError for an unknown mode."""
    modes = torch._inductor.list_mode_options()
    key = mode or "default"
    if key not in modes:
        raise ValueError(f"unknown torch.compile mode {mode!r}; expected one of {sorted(modes)}")
    options = dict(modes[key])
    if LOOP_REORDER_ASSERTS:
        options["loop_ordering_after_fusion"] = False
    return options
