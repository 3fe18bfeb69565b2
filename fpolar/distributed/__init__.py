"""fpolar on torch.distributed: FSDP2 / DTensor, replicated (DDP) and tensor-parallel polar factors.

Every strong design orthogonalizes each *whole* matrix on one owner rank: ``plan`` decides owners and
the exchange layout once, ``exchange`` moves rows to owners and polar factors back with functional
collectives, ``step`` is the PolarGrad / Muon step around that exchange. When a matrix itself is split across a
tensor-parallel group, ``fpolar.polar(…, process_group=…, partition_dim=…)`` computes its polar factor
(``fpolar.polar.tensor_parallel``).
"""

from .owners import assign_owners, newton_schulz_cost
from .plan import DistributedPlan, ExchangeGroup, build_plan
from .state import DistributedPolarGradState, init_distributed_state
from .step import distributed_polargrad_step

__all__ = [
    "DistributedPlan",
    "DistributedPolarGradState",
    "ExchangeGroup",
    "assign_owners",
    "build_plan",
    "distributed_polargrad_step",
    "init_distributed_state",
    "newton_schulz_cost",
]
