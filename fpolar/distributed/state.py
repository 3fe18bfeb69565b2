"""State of the distributed (planned) step: momentum in the parameters' own layout, plus the plan.

Momentum of a DTensor parameter is a DTensor with the parameter's mesh and placements (FSDP2: the
same ``Shard(0)`` rows), so ``torch.distributed.checkpoint`` saves and reshards it like the
parameters. There is no stacked buffer: under sharding the stack would hold pieces of matrices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor

from ..hparams import PolarGradHParams
from ..state import PolarGradState
from ..validation import check_matrix_tensor, check_tensor_list
from .plan import DistributedPlan, build_plan


@dataclass
class DistributedPolarGradState(PolarGradState):
    """``PolarGradState`` for the planned step (``buffers`` and ``groups`` are empty).

    Attributes:
        plan: the ``DistributedPlan`` (exchange groups, owners, layout).
        momentum: per param, zeros like the param (a DTensor for a DTensor param).
    """

    plan: Optional[DistributedPlan] = None

    def check_matches(self, params: Sequence[Tensor]) -> None:
        """Raise ValueError unless ``params`` have the shapes, dtypes, meshes and placements the state was
        built for (metadata only)."""
        assert self.plan is not None
        self.plan.check_matches(params)
        for i, (p, mom) in enumerate(zip(params, self.momentum)):
            if p.device != mom.device:
                raise ValueError(f"distributed state holds params[{i}]'s momentum on {mom.device}, the param is on {p.device}")
            if p.dtype not in (mom.dtype,) and self._momentum_dtype_is_param_dtype:
                raise ValueError(f"distributed state was built for params[{i}] of dtype {mom.dtype}, got {p.dtype}")
            if hasattr(p, "placements") and getattr(mom, "placements", None) != p.placements:
                raise ValueError(
                    f"params[{i}] has placements {p.placements} but its momentum {getattr(mom, 'placements', None)}"
                )

    _momentum_dtype_is_param_dtype: bool = True


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
    return DistributedPolarGradState(
        step=torch.zeros((), dtype=torch.float32, device=device),
        momentum=momentum,
        buffers=[],
        groups=(),
        shapes=tuple(p.shape for p in params),
        plan=plan,
        _momentum_dtype_is_param_dtype=mdtype is None,
    )
