"""What the step will run for each shape group: the dispatch made visible.

``describe_plan(state, hparams)`` lists, per shape group, the batch shape handed to the polar backend
and the implementation ``kernels="auto"`` picks for it, so a user can see (and override with
``polar=``/``kernels=``) what runs.
"""

from __future__ import annotations

from typing import Dict, List


from .hparams import PolarGradHParams
from .polar.dispatch import ns_implementation
from .state import PolarGradState


def describe_plan(state: PolarGradState, hparams: PolarGradHParams) -> List[Dict[str, object]]:
    """One dict per shape group: params, batch (B, m, n) as iterated (wide), dtype and implementation."""
    spec = hparams.polar_spec
    rows = []
    for g in state.groups:
        m, n = min(g.m, g.n), max(g.m, g.n)
        dtype = spec.compute_dtype_for(g.dtype, g.device.type == "cuda")
        impl = spec.method
        if spec.method == "newton_schulz":
            impl = ns_implementation(m, n, g.device.type == "cuda", dtype, spec.kernels, spec.normalization)
            impl = {"gram": "gram_newton_schulz", "triton": "newton_schulz [triton kernels]",
                    "torch": "newton_schulz [torch matmul]"}[impl]
        rows.append(
            {
                "params": list(g.indices),
                "batch": (g.batch, m, n),
                "transposed": g.transposed,
                "polar_dtype": dtype,
                "implementation": impl,
            }
        )
    return rows
