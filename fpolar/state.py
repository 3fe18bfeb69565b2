"""Optimizer state as plain tensors, and the shape-group plan built with it.

The plan groups matrix parameters by (matrix shape, dtype, device). Each group keeps its momentum as
ONE stacked buffer (B, m, n); every parameter's momentum is a view into it. The momentum update writes
through the views (foreach), and the polar step reads the stacked buffer directly: no stack copy per
step.

How parameters become matrices:
    2-D (m, n)              one matrix
    3-D (k, m, n)           k independent matrices (e.g. stacked expert or head weights)
    ≥4-D (out, c, kh, kw…)  one matrix (out, c·kh·kw…), as a conv weight acts on a flattened patch
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .hparams import AdamWHParams, PolarGradHParams
from .validation import check_matrix_tensor, check_real_dense_float, check_tensor_list


def matrix_view_shape(shape: torch.Size) -> Tuple[int, int, int]:
    """(count, m, n): how many m×n matrices a parameter of ``shape`` holds (see module docstring)."""
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    if len(shape) == 3:
        return shape[0], shape[1], shape[2]
    rest = 1
    for d in shape[1:]:
        rest *= d
    return 1, shape[0], rest


@dataclass(frozen=True)
class ShapeGroup:
    """Parameters whose matrices share (m, n), dtype and device; polar runs on them as one batch.

    Attributes:
        indices: positions of the group's params in the params list.
        offsets: first matrix of each param in the stacked buffer.
        counts: matrices per param (k for a 3-D param, else 1).
        m, n: matrix shape in the parameter's own orientation (rows, columns).
        transposed: m > n; the polar step runs on the (n, m) transpose so the Gram side is small.
    """

    indices: Tuple[int, ...]
    offsets: Tuple[int, ...]
    counts: Tuple[int, ...]
    m: int
    n: int
    dtype: torch.dtype
    device: torch.device

    @property
    def batch(self) -> int:
        return sum(self.counts)

    @property
    def transposed(self) -> bool:
        return self.m > self.n


def plan_shape_groups(params: Sequence[Tensor]) -> Tuple[ShapeGroup, ...]:
    """Group matrix params by (m, n, dtype, device), in order of first appearance."""
    keyed: dict = {}
    for i, p in enumerate(params):
        k, m, n = matrix_view_shape(p.shape)
        keyed.setdefault((m, n, p.dtype, p.device), []).append((i, k))
    groups = []
    for (m, n, dtype, device), members in keyed.items():
        offsets, off = [], 0
        for _, k in members:
            offsets.append(off)
            off += k
        groups.append(
            ShapeGroup(
                indices=tuple(i for i, _ in members),
                offsets=tuple(offsets),
                counts=tuple(k for _, k in members),
                m=m,
                n=n,
                dtype=dtype,
                device=device,
            )
        )
    return tuple(groups)


def group_views(stacked: Tensor, group: ShapeGroup, shapes: Sequence[torch.Size]) -> List[Tensor]:
    """Per-parameter views of a contiguous (B, m, n) group tensor, each reshaped to its param's shape."""
    return [
        stacked[off : off + k].view(shapes[i]) if k > 1 or len(shapes[i]) == 3 else stacked[off].view(shapes[i])
        for i, off, k in zip(group.indices, group.offsets, group.counts)
    ]


@dataclass
class PolarGradState:
    """State of ``polargrad_step`` for one fixed list of matrix params.

    Attributes:
        step: 0-d float32 tensor, steps taken (on the first param's device).
        momentum: per-param momentum, each with its param's shape; views into ``buffers``.
        buffers: per shape group, the stacked momentum (B, m, n), contiguous.
        groups: the shape-group plan (metadata only).
        shapes: the param shapes the state was built for.
    """

    step: Tensor
    momentum: List[Tensor]
    buffers: List[Tensor]
    groups: Tuple[ShapeGroup, ...]
    shapes: Tuple[torch.Size, ...]

    def check_matches(self, params: Sequence[Tensor]) -> None:
        """Raise ValueError unless ``params`` are the shapes, dtypes and devices this state was built for."""
        if len(params) != len(self.shapes):
            raise ValueError(
                f"state was built for {len(self.shapes)} params but got {len(params)}; "
                "build it with init_state(params, hparams) for these params"
            )
        for g in self.groups:
            for i in g.indices:
                p = params[i]
                if p.shape != self.shapes[i] or p.dtype != g.dtype or p.device != g.device:
                    raise ValueError(
                        f"state was built for params[{i}] of shape {tuple(self.shapes[i])}, {g.dtype} on "
                        f"{g.device}, but got shape {tuple(p.shape)}, {p.dtype} on {p.device}"
                    )


def init_state(
    params: Sequence[Tensor],
    hparams: Optional[PolarGradHParams] = None,
    *,
    process_group: Optional[Any] = None,
    split_sizes: Optional[Dict[int, Sequence[int]]] = None,
) -> PolarGradState:
    """Fresh ``polargrad_step`` state for ``params`` (each ≥ 2-D): zero momentum, step 0.

    Momentum buffers have the param dtype (or ``hparams.momentum_dtype``) and device. Params are not
    modified. Raises TypeError/ValueError for non-matrix or non-float params.

    Distributed (``fpolar.distributed``): DTensor params (FSDP2 ``Shard(0)``, ``Replicate``), a
    ``process_group`` over which replicated plain params share the polar work (DDP), or ``split_sizes``
    ({param index: row sizes of fused matrices along dim 0}) give a ``DistributedPolarGradState``
    whose momentum keeps each param's layout; ``polargrad_step`` takes it the same way.
    """
    if process_group is not None or split_sizes is not None or any(_is_dtensor(p) for p in _as_list(params)):
        from .distributed.state import init_distributed_state

        return init_distributed_state(params, hparams, process_group=process_group, split_sizes=split_sizes)
    params = check_tensor_list(params, "params")
    for i, p in enumerate(params):
        check_matrix_tensor(p, f"params[{i}]")
    mdtype = hparams.momentum_dtype if hparams is not None else None
    groups = plan_shape_groups(params)
    shapes = tuple(p.shape for p in params)
    momentum: List[Optional[Tensor]] = [None] * len(params)
    buffers = []
    for g in groups:
        buf = torch.zeros(g.batch, g.m, g.n, dtype=mdtype or g.dtype, device=g.device)
        buffers.append(buf)
        for i, view in zip(g.indices, group_views(buf, g, shapes)):
            momentum[i] = view
    device = params[0].device if params else torch.device("cpu")
    step = torch.zeros((), dtype=torch.float32, device=device)
    return PolarGradState(step=step, momentum=momentum, buffers=buffers, groups=groups, shapes=shapes)  # type: ignore[arg-type]


def _as_list(params: Any) -> list:
    return list(params) if isinstance(params, (list, tuple)) else []


def _is_dtensor(t: Any) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "device_mesh")


@dataclass
class AdamWState:
    """State of ``adamw_step``: per-param first/second moments and per-param 0-d float32 step counts
    (per param, as in torch.optim.AdamW, so that a param skipped for lack of a grad keeps its own bias
    correction)."""

    step: List[Tensor]
    exp_avg: List[Tensor]
    exp_avg_sq: List[Tensor]
    shapes: Tuple[torch.Size, ...]

    def check_matches(self, params: Sequence[Tensor]) -> None:
        if len(params) != len(self.shapes):
            raise ValueError(f"AdamW state was built for {len(self.shapes)} params but got {len(params)}")
        for i, (p, s) in enumerate(zip(params, self.shapes)):
            if p.shape != s or p.dtype != self.exp_avg[i].dtype or p.device != self.exp_avg[i].device:
                raise ValueError(
                    f"AdamW state was built for params[{i}] of shape {tuple(s)}, {self.exp_avg[i].dtype} on "
                    f"{self.exp_avg[i].device}, but got shape {tuple(p.shape)}, {p.dtype} on {p.device}"
                )


def init_adamw_state(params: Sequence[Tensor], hparams: Optional[AdamWHParams] = None) -> AdamWState:
    """Fresh ``adamw_step`` state for ``params`` (any shape): zero moments in the param dtype, steps 0."""
    params = check_tensor_list(params, "params")
    for i, p in enumerate(params):
        check_real_dense_float(p, f"params[{i}]")
    return AdamWState(
        step=[torch.zeros((), dtype=torch.float32, device=p.device) for p in params],
        exp_avg=[torch.zeros_like(p, memory_format=torch.preserve_format) for p in params],
        exp_avg_sq=[torch.zeros_like(p, memory_format=torch.preserve_format) for p in params],
        shapes=tuple(p.shape for p in params),
    )
