"""Optimizer state as plain tensors, and the shape-group plan built with it.

The plan groups matrix parameters by (matrix shape, dtype, device). Each group keeps its momentum as
ONE stacked buffer (B, m, n); every parameter's momentum is a view into it. The momentum update writes
through the views (foreach), and the polar step reads the stacked buffer directly: no stack copy per
step. The plan also holds, per group, the one dispatch decision of how its polar factor is computed
(``PolarImpl``: method, kernels, iteration dtype), taken here and read by the step and ``describe_plan``.

How parameters become matrices:
    2-D (m, n)              one matrix
    3-D (k, m, n)           k independent matrices (e.g. stacked expert or head weights)
    ≥4-D (out, c, kh, kw…)  one matrix (out, c·kh·kw…), as a conv weight acts on a flattened patch
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import state_dict as checkpoint
from .hparams import AdamWHParams, PolarGradHParams
from .polar import PolarImpl, PolarSpec
from .routing import matrix_view_shape
from .validation import check_matrix_tensor, check_real_dense_float, check_tensor_list


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


def plan_polar_impls(groups: Sequence[ShapeGroup], spec: PolarSpec) -> Tuple[PolarImpl, ...]:
    """Per shape group, how ``spec`` computes its polar factor (``PolarSpec.impl_for``)."""
    return tuple(spec.impl_for(g.m, g.n, g.dtype, g.device, batch=g.batch) for g in groups)


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
        skipped: 0-d int64 tensor, calls skipped for a non-finite grad (``nonfinite="skip"``); such a
            call leaves ``step``, the momentum and the params unchanged.
        polar_spec: the ``PolarSpec`` that ``polar_impls`` were decided for (None: not decided yet).
        polar_impls: per group, how its polar factor is computed (see ``polar_impls_for``).
    """

    step: Tensor
    momentum: List[Tensor]
    buffers: List[Tensor]
    groups: Tuple[ShapeGroup, ...]
    shapes: Tuple[torch.Size, ...]
    skipped: Optional[Tensor] = None
    polar_spec: Optional[PolarSpec] = None
    polar_impls: Tuple[PolarImpl, ...] = ()

    def polar_impls_for(self, spec: PolarSpec) -> Tuple[PolarImpl, ...]:
        """Per group, how ``spec`` computes its polar factor: the decisions taken by ``init_state``, or,
        for a spec other than the one they were taken for (hparams changed since), the same rule applied
        now. Shapes, dtypes and options only: no tensor is read."""
        if spec is self.polar_spec or spec == self.polar_spec:
            return self.polar_impls
        return plan_polar_impls(self.groups, spec)

    def __post_init__(self) -> None:
        if self.skipped is None:
            self.skipped = torch.zeros((), dtype=torch.int64, device=self.step.device)

    def state_dict(self, hparams: Optional[PolarGradHParams] = None) -> dict:
        """A checkpoint of this state (``fpolar.state_dict``): ``torch.save`` it, load with weights_only."""
        return checkpoint.polargrad_state_dict(self, hparams)

    def load_state_dict(self, state_dict: dict, hparams: Optional[PolarGradHParams] = None) -> None:
        """Copy a checkpoint into this state in place; refuses a mismatch, unchanged (``fpolar.state_dict``)."""
        checkpoint.load_polargrad_state_dict(self, state_dict, hparams)

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
        self.check_intact()

    def check_intact(self) -> None:
        """Raise ValueError if a state tensor was replaced by one of another shape, dtype or device, or a
        momentum entry no longer views its stacked buffer (the step would write the wrong tensor)."""
        if len(self.buffers) != len(self.groups) or len(self.momentum) != len(self.shapes):
            raise ValueError(
                f"state has {len(self.buffers)} momentum buffers and {len(self.momentum)} momentum entries, "
                f"but its plan has {len(self.groups)} shape groups and {len(self.shapes)} params"
            )
        _check_counter(self.step, "state.step", torch.float32)
        _check_counter(self.skipped, "state.skipped", torch.int64, self.step.device)
        for k, (g, buf) in enumerate(zip(self.groups, self.buffers)):
            want = (g.batch, g.m, g.n)
            if not isinstance(buf, Tensor) or tuple(buf.shape) != want or buf.device != g.device or not buf.is_floating_point():
                got = f"shape {tuple(buf.shape)}, {buf.dtype} on {buf.device}" if isinstance(buf, Tensor) else type(buf).__name__
                raise ValueError(f"state.buffers[{k}] must be a floating tensor of shape {want} on {g.device}, got {got}")
            for i, off, cnt in zip(g.indices, g.offsets, g.counts):
                m = self.momentum[i]
                ok = (
                    isinstance(m, Tensor)
                    and m.shape == self.shapes[i]
                    and m.dtype == buf.dtype
                    and m.device == buf.device
                    and (torch.compiler.is_compiling() or m.data_ptr() == buf[off].data_ptr())
                )
                if not ok:
                    got = f"shape {tuple(m.shape)}, {m.dtype} on {m.device}" if isinstance(m, Tensor) else type(m).__name__
                    raise ValueError(
                        f"state.momentum[{i}] must be a view of state.buffers[{k}] of shape {tuple(self.shapes[i])}, "
                        f"{buf.dtype} on {buf.device}, got {got}; replace momentum values with "
                        "state.momentum[i].copy_(...) rather than swapping the tensor"
                    )


def _check_counter(t: object, what: str, dtype: torch.dtype, device: Optional[torch.device] = None) -> None:
    if not isinstance(t, Tensor) or t.dim() != 0 or t.dtype != dtype or (device is not None and t.device != device):
        got = f"shape {tuple(t.shape)}, {t.dtype} on {t.device}" if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{what} must be a 0-d {dtype} tensor{'' if device is None else f' on {device}'}, got {got}")


def init_state(params: Sequence[Tensor], hparams: Optional[PolarGradHParams] = None) -> PolarGradState:
    """Fresh ``polargrad_step`` state for ``params`` (each ≥ 2-D): zero momentum, step 0.

    Momentum buffers have the param dtype (or ``hparams.momentum_dtype``) and device. With ``hparams``,
    each shape group's polar implementation is decided here (``PolarGradState.polar_impls``). Params are
    not modified. Raises TypeError/ValueError for non-matrix or non-float params.
    """
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
    spec = hparams.polar_spec if hparams is not None else None
    impls = plan_polar_impls(groups, spec) if spec is not None else ()
    return PolarGradState(
        step=step,
        momentum=momentum,  # type: ignore[arg-type]
        buffers=buffers,
        groups=groups,
        shapes=shapes,
        polar_spec=spec,
        polar_impls=impls,
    )


@dataclass
class AdamWState:
    """State of ``adamw_step``: per-param first/second moments and per-param 0-d float32 step counts
    (per param, as in torch.optim.AdamW, so that a param skipped for lack of a grad keeps its own bias
    correction)."""

    step: List[Tensor]
    exp_avg: List[Tensor]
    exp_avg_sq: List[Tensor]
    shapes: Tuple[torch.Size, ...]
    skipped: Optional[Tensor] = None  # 0-d int64: calls skipped for a non-finite grad

    def __post_init__(self) -> None:
        if self.skipped is None:
            device = self.step[0].device if self.step else torch.device("cpu")
            self.skipped = torch.zeros((), dtype=torch.int64, device=device)

    def state_dict(self, hparams: Optional[AdamWHParams] = None) -> dict:
        """A checkpoint of this state (``fpolar.state_dict``): ``torch.save`` it, load with weights_only."""
        return checkpoint.adamw_state_dict(self, hparams)

    def load_state_dict(self, state_dict: dict, hparams: Optional[AdamWHParams] = None) -> None:
        """Copy a checkpoint into this state in place; refuses a mismatch, unchanged (``fpolar.state_dict``)."""
        checkpoint.load_adamw_state_dict(self, state_dict, hparams)

    def check_matches(self, params: Sequence[Tensor]) -> None:
        if len(params) != len(self.shapes):
            raise ValueError(f"AdamW state was built for {len(self.shapes)} params but got {len(params)}")
        for name in ("step", "exp_avg", "exp_avg_sq"):
            if len(getattr(self, name)) != len(self.shapes):
                raise ValueError(f"AdamW state has {len(getattr(self, name))} {name} entries for {len(self.shapes)} params")
        for i, (p, s) in enumerate(zip(params, self.shapes)):
            m = self.exp_avg[i]
            if not isinstance(m, Tensor) or p.shape != s or p.dtype != m.dtype or p.device != m.device:
                got = f"{m.dtype} on {m.device}" if isinstance(m, Tensor) else type(m).__name__
                raise ValueError(
                    f"AdamW state was built for params[{i}] of shape {tuple(s)}, {got}, "
                    f"but got shape {tuple(p.shape)}, {p.dtype} on {p.device}"
                )
            for name in ("exp_avg", "exp_avg_sq"):
                t = getattr(self, name)[i]
                if not isinstance(t, Tensor) or t.shape != p.shape or t.dtype != p.dtype or t.device != p.device:
                    got = f"shape {tuple(t.shape)}, {t.dtype} on {t.device}" if isinstance(t, Tensor) else type(t).__name__
                    raise ValueError(
                        f"AdamW state.{name}[{i}] must have params[{i}]'s shape {tuple(p.shape)}, {p.dtype} on "
                        f"{p.device}, got {got}"
                    )
            _check_counter(self.step[i], f"AdamW state.step[{i}]", torch.float32, p.device)
        if params:
            _check_counter(self.skipped, "AdamW state.skipped", torch.int64, self.step[0].device)


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
