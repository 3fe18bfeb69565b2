"""State of the distributed (planned) step: momentum in the parameters' own layout, plus the plan.

Momentum of a DTensor parameter is a DTensor with the parameter's mesh and placements (FSDP2: the
same ``Shard(0)`` rows), so ``torch.distributed.checkpoint`` saves and reshards it like the
parameters. There is no stacked buffer: under sharding the stack would hold pieces of matrices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..hparams import PolarGradHParams
from ..polar import PolarImpl, PolarSpec
from ..state import PolarGradState
from ..state import init_state as init_one_device_state
from ..validation import check_matrix_tensor, check_tensor_list
from .exchange import scale_slots
from ..dtensor import is_dtensor
from .plan import DistributedPlan, build_plan
from .step import distributed_polargrad_step


@dataclass
class DistributedPolarGradState(PolarGradState):
    """``PolarGradState`` for the planned step (``buffers`` and ``groups`` are empty).

    Attributes:
        plan: the ``DistributedPlan`` (exchange groups, owners, layout).
        param_dtypes: the dtypes of the params the state was built for.
        momentum: per param, zeros like the param (a DTensor for a DTensor param).
    """

    plan: Optional[DistributedPlan] = None
    param_dtypes: Tuple[torch.dtype, ...] = ()
    # ``fpolar.polargrad_step`` hands a state that carries a step to that step.
    planned_step: ClassVar[Callable[..., Any]] = staticmethod(distributed_polargrad_step)

    def polar_impls_for(self, spec: PolarSpec) -> Tuple[PolarImpl, ...]:
        """Per exchange group, how ``spec`` computes its polar factor: decided by ``init_state`` for its
        hparams, or by the same rule now for other ones (metadata only)."""
        if self.polar_spec is not None and (spec is self.polar_spec or spec == self.polar_spec):
            return self.polar_impls
        assert self.plan is not None
        return tuple(spec.impl_for(g.m, g.n, g.dtype, g.device) for g in self.plan.groups)

    def describe_exchange(self, hparams: PolarGradHParams) -> List[Dict[str, object]]:
        """``fpolar.describe_plan`` for this state: per exchange group its kind ("rows", "replicated",
        "local"), shape, matrices, world size, owners (group matrix indices per rank), slots per rank,
        exchange dtype, bytes this rank sends per step, and the polar implementation."""
        assert self.plan is not None
        impls = self.polar_impls_for(hparams.polar_spec)
        rows = []
        for g, impl in zip(self.plan.groups, impls):
            k = scale_slots(impl.polar_dtype) if hparams.scale == "nuclear" else 0
            rows.append(
                {
                    "kind": g.kind,
                    "shape": (g.m, g.n),
                    "matrices": g.count,
                    "params": list(g.params),
                    "world_size": g.world_size,
                    "owners": [list(o) for o in g.owned],
                    "slots_per_rank": g.slots,
                    "exchange_dtype": impl.polar_dtype,
                    "bytes_sent_per_step": g.bytes_sent(impl.polar_dtype.itemsize, k),
                    "polar_dtype": impl.polar_dtype,
                    "implementation": impl.label,
                }
            )
        return rows

    def check_matches(self, params: Sequence[Tensor]) -> None:
        """Raise ValueError unless ``params`` have the shapes, dtypes, meshes and placements the state was
        built for (metadata only)."""
        assert self.plan is not None
        self.plan.check_matches(params)
        for i, (p, mom) in enumerate(zip(params, self.momentum)):
            if p.device != mom.device:
                raise ValueError(f"distributed state holds params[{i}]'s momentum on {mom.device}, the param is on {p.device}")
            if p.dtype != self.param_dtypes[i]:
                raise ValueError(f"distributed state was built for params[{i}] of dtype {self.param_dtypes[i]}, got {p.dtype}")
            if hasattr(p, "placements") and getattr(mom, "placements", None) != p.placements:
                raise ValueError(
                    f"params[{i}] has placements {p.placements} but its momentum {getattr(mom, 'placements', None)}"
                )


def init_distributed_state(
    params: Sequence[Tensor],
    hparams: Optional[PolarGradHParams] = None,
    *,
    process_group: Any = None,
    split_sizes: Optional[Dict[int, Sequence[int]]] = None,
) -> DistributedPolarGradState:
    """Fresh state for the planned step: zero momentum in each param's layout, step 0, the plan.

    Args:
        params: matrix params (≥ 2-D): plain tensors, or DTensors ``Shard(0)``/``Replicate`` on 1-D meshes.
        hparams: for ``momentum_dtype`` (None: the param dtype).
        process_group: plain params replicated on its ranks (DDP) share the polar work over it.
        split_sizes: {param index: row sizes of the fused matrices along dim 0} (see ``build_plan``).

    Params are not modified. Raises TypeError/ValueError (see ``build_plan``) before allocating.
    """
    params = check_tensor_list(params, "params")
    for i, p in enumerate(params):
        check_matrix_tensor(p, f"params[{i}]")
    plan = build_plan(params, process_group=process_group, split_sizes=split_sizes)
    mdtype = hparams.momentum_dtype if hparams is not None else None
    momentum = [torch.zeros_like(p, dtype=mdtype or p.dtype) for p in params]
    device = momentum[0].to_local().device if momentum and hasattr(momentum[0], "to_local") else (
        params[0].device if params else torch.device("cpu")
    )
    spec = hparams.polar_spec if hparams is not None else None
    return DistributedPolarGradState(
        step=torch.zeros((), dtype=torch.float32, device=device),
        momentum=momentum,
        buffers=[],
        groups=(),
        shapes=tuple(p.shape for p in params),
        polar_spec=spec,
        polar_impls=tuple(spec.impl_for(g.m, g.n, g.dtype, g.device) for g in plan.groups) if spec else (),
        plan=plan,
        param_dtypes=tuple(p.dtype for p in params),
    )


def init_state(
    params: Sequence[Tensor],
    hparams: Optional[PolarGradHParams] = None,
    *,
    process_group: Any = None,
    split_sizes: Optional[Dict[int, Sequence[int]]] = None,
) -> PolarGradState:
    """``fpolar.init_state``: fresh ``polargrad_step`` state for ``params`` (each ≥ 2-D), any layout.

    Plain tensors without ``process_group`` or ``split_sizes``: the one-device state
    (``fpolar.state.init_state``, stacked momentum per shape group). DTensor params (FSDP2 ``Shard(0)``,
    ``Replicate``), a ``process_group`` over which replicated plain params share the polar work (DDP),
    or ``split_sizes`` ({param index: row sizes of fused matrices along dim 0}): a
    ``DistributedPolarGradState`` (``init_distributed_state``). ``polargrad_step`` takes either.
    Params are not modified. Raises TypeError/ValueError naming the bad value.
    """
    listed = list(params) if isinstance(params, (list, tuple)) else None
    if process_group is not None or split_sizes is not None or (listed is not None and any(is_dtensor(p) for p in listed)):
        return init_distributed_state(params, hparams, process_group=process_group, split_sizes=split_sizes)
    return init_one_device_state(params, hparams)
