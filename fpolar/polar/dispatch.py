"""Which implementation runs the three Newton–Schulz lines for a shape group.

"torch" is cuBLAS (or the CPU BLAS) batched matmul; "triton" is ``fpolar.kernels``, whose symmetric
products compute only the lower-triangle tiles. "auto" uses the Triton kernels only on CUDA and only
where ``TRITON_MIN_SIDE`` says they were measured to win (see BENCHMARKS.md); everywhere else cuBLAS.
The decision depends on shapes and dtypes only, so it is made at trace time and never recompiles.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .newton_schulz import TORCH_OPS, NSOps

# Smallest Gram side m (of a wide m×n batch) at which the Triton kernels beat cuBLAS on the H100.
# Below it the symmetric saving does not pay for the lower efficiency of a Triton GEMM.
TRITON_MIN_SIDE = 1 << 30  # set from measurement; until then "auto" means cuBLAS


def triton_ops() -> NSOps:
    from .. import kernels  # noqa: F401  (registers torch.ops.fpolar.*)

    ops = torch.ops.fpolar
    return NSOps(ops.sym_gram, ops.sym_poly, ops.ns_apply)


def choose_ns_ops(x: Tensor, kernels: str, dtype: torch.dtype) -> NSOps:
    """NS implementation for wide batch ``x`` (B, m, n) iterated in ``dtype``."""
    if kernels == "torch":
        return TORCH_OPS
    if kernels == "triton":
        if not x.is_cuda:
            raise ValueError(
                f"kernels='triton' needs CUDA tensors, got a tensor on {x.device}; use 'auto' or 'torch'"
            )
        return triton_ops()
    if x.is_cuda and dtype in (torch.bfloat16, torch.float16) and x.size(-2) >= TRITON_MIN_SIDE:
        return triton_ops()
    return TORCH_OPS
