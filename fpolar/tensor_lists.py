"""In-place arithmetic over lists of tensors: one foreach kernel eagerly, per-tensor ops under compile.

Eagerly, ``torch._foreach_*`` launches one kernel for the whole list, which is what makes the step
cheap without a compiler. Under torch.compile the per-tensor form is better and, on torch 2.11, needed:
Inductor (CUDA) lowers foreach ops to a ForeachKernelSchedulerNode, and when that node writes through
views of a stacked buffer that another node reads whole (the momentum stack, the update stack), its
loop-reordering pass fails with ``AssertionError`` in ``reorder_loops_by_dep_pair`` (seen on the H100,
torch 2.11.0). Per-tensor ops become ordinary pointwise nodes that Inductor fuses with their producer
(e.g. ``p -= o·s`` in one kernel, with no update buffer in between).
"""

from __future__ import annotations

from typing import List, Sequence, Union

import torch
from torch import Tensor

Scalar = Union[float, Tensor]


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def lerp_(xs: Sequence[Tensor], ys: Sequence[Tensor], weight: float) -> None:
    """x ← x + weight·(y − x) for each pair, in place."""
    if _compiling():
        for x, y in zip(xs, ys):
            x.lerp_(y, weight)
    else:
        torch._foreach_lerp_(list(xs), list(ys), weight)


def lerp(xs: Sequence[Tensor], ys: Sequence[Tensor], weight: float) -> List[Tensor]:
    """x + weight·(y − x) for each pair, as new tensors."""
    if _compiling():
        return [x.lerp(y, weight) for x, y in zip(xs, ys)]
    return list(torch._foreach_lerp(list(xs), list(ys), weight))


def mul_(xs: Sequence[Tensor], factor: Scalar) -> None:
    """x ← factor·x, in place (factor a float or a 0-d tensor)."""
    if _compiling():
        for x in xs:
            x.mul_(factor)
    else:
        torch._foreach_mul_(list(xs), factor)


def sub_(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
    """x ← x − y for each pair, in place."""
    if _compiling():
        for x, y in zip(xs, ys):
            x.sub_(y)
    else:
        torch._foreach_sub_(list(xs), list(ys))



def sub_scaled_(xs: Sequence[Tensor], ys: Sequence[Tensor], scales: Union[float, Sequence[Tensor]]) -> None:
    """x ← x − s·y for each pair, in place, with s one float or one tensor per pair that broadcasts
    over y (a 0-d step size, or (1, 1) / (k, 1, 1) per matrix). y may have a narrower dtype than x
    (a bf16 polar factor): s·y is formed in x's dtype promoted to at least float32, never in y's,
    and no scaled or upcast copy of y is kept.

    Eagerly one kernel per param (``addcmul_``, or one foreach ``add_`` for a float s; foreach takes
    its per-tensor fallback anyway when the dtypes differ). Under torch.compile ``x −= y·s`` with y
    upcast: Inductor fuses the cast, product and subtraction into the param's write."""
    if _compiling():
        for i, (x, y) in enumerate(zip(xs, ys)):
            s = scales if isinstance(scales, float) else scales[i]
            x.sub_(y.to(torch.promote_types(x.dtype, torch.float32)) * s)
    elif isinstance(scales, float):
        torch._foreach_add_(list(xs), list(ys), alpha=-scales)
    else:
        for x, y, s in zip(xs, ys, scales):
            x.addcmul_(y, s, value=-1.0)
