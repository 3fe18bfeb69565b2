"""What the step will run for each shape group: the dispatch made visible.

``describe_plan(state, hparams)`` lists, per shape group, the batch shape handed to the polar backend
and the implementation decided for it when the plan was built (``PolarGradState.polar_impls_for``,
the same decision the step runs), so a user can see (and override with ``polar=``/``kernels=``) what
runs.
"""

from __future__ import annotations

from typing import Dict, List

from .hparams import PolarGradHParams
from .state import PolarGradState


def describe_plan(state: PolarGradState, hparams: PolarGradHParams) -> List[Dict[str, object]]:
    """One dict per shape group: params, batch (B, m, n) as iterated (wide), dtype, implementation,
    ``decided_by``: "rule", or for ``kernels="auto"`` on CUDA the measurement behind it (every
    candidate's µs on this device; ``fpolar.polar.dispatch``), and ``glue``: "fused" (the one-pass
    momentum/normalize and apply ops, CUDA) or "torch".

    A distributed state (``fpolar.distributed``) describes its exchange groups instead: kind, owners
    per rank, slots, exchange dtype and the bytes this rank sends per step, beside the same fields.
    """
    describe_exchange = getattr(state, "describe_exchange", None)
    if describe_exchange is not None:
        return describe_exchange(hparams)
    rows = []
    for g, impl in zip(state.groups, state.polar_impls_for(hparams.polar_spec)):
        rows.append(
            {
                "params": list(g.indices),
                "batch": (g.batch, min(g.m, g.n), max(g.m, g.n)),
                "transposed": g.transposed,
                "polar_dtype": impl.polar_dtype,
                "implementation": impl.label,
                # measured: every candidate's µs on this device (kernels="auto" on CUDA); else the rule
                "decided_by": impl.reason or "rule",
                "glue": impl.glue,
            }
        )
    return rows
