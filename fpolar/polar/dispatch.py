"""Which implementation runs a Newton–Schulz polar step for a shape group, when ``kernels="auto"``.

Two independent choices, made from shapes and dtypes only (at trace time, so they never recompile):

1. **Gram space or not.** Gram Newton–Schulz iterates on the m×m Gram matrix and touches the m×n
   matrix only at restarts; it does fewer FLOPs once n is a few times m. Measured on the H100
   (torch 2.11, bf16, 5 steps; BENCHMARKS.md): 12×768×2304 1.09 → 0.87 ms, 12×768×3072 1.38 → 0.98 ms,
   1×4096×16384 10.2 → 6.8 ms; square loses (12×768×768 0.55 → 0.76 ms, 4096² 3.4 → 4.1 ms).
   Used for n ≥ ``GRAM_MIN_ASPECT``·m, on CUDA, with Frobenius normalization.
2. **cuBLAS or Triton** for the three NS lines. The Triton kernels compute only the lower triangle of
   the symmetric products. Measured (5 bf16 steps): 1×4096² 3.51 → 2.86 ms, 4×2048² a tie (1.99 vs
   2.01 ms), 12×768×3072 1.39 → 1.40 ms, 12×768² 0.57 → 1.52 ms. Used where the Gram side
   m ≥ ``TRITON_MIN_SIDE``.

CPU always gets the torch path (the Triton kernels run on CPU only in the interpreter, for tests).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .newton_schulz import TORCH_OPS, NSOps

GRAM_MIN_ASPECT = 2.0
TRITON_MIN_SIDE = 4096


def triton_ops() -> NSOps:
    from .. import kernels  # noqa: F401  (registers torch.ops.fpolar.*)

    ops = torch.ops.fpolar
    return NSOps(ops.sym_gram, ops.sym_poly, ops.ns_apply)


def ns_implementation(m: int, n: int, on_cuda: bool, dtype: torch.dtype, kernels: str, normalization: str) -> str:
    """"gram", "triton" or "torch": what runs NS on a wide (·, m, n) batch (m ≤ n) iterated in ``dtype``."""
    if kernels == "torch":
        return "torch"
    if kernels == "triton":
        return "triton"
    if on_cuda and normalization == "frobenius" and n >= GRAM_MIN_ASPECT * m:
        return "gram"
    if on_cuda and dtype in (torch.bfloat16, torch.float16) and m >= TRITON_MIN_SIDE:
        return "triton"
    return "torch"


def use_gram_space(x: Tensor, kernels: str, normalization: str, dtype: torch.dtype) -> bool:
    """Whether wide batch ``x`` (B, m, n) runs as Gram Newton–Schulz."""
    return ns_implementation(x.size(-2), x.size(-1), x.is_cuda, dtype, kernels, normalization) == "gram"


def choose_ns_ops(x: Tensor, kernels: str, dtype: torch.dtype) -> NSOps:
    """The three-line NS implementation for wide batch ``x`` (B, m, n) iterated in ``dtype``."""
    # Gram space was decided by the caller (use_gram_space); "aol" here asks only cuBLAS vs Triton.
    impl = ns_implementation(x.size(-2), x.size(-1), x.is_cuda, dtype, kernels, "aol")
    if impl == "triton":
        if not x.is_cuda:
            raise ValueError(
                f"kernels='triton' needs CUDA tensors, got a tensor on {x.device}; use 'auto' or 'torch'"
            )
        return triton_ops()
    return TORCH_OPS


# In Gram space only R = XXᵀ and Q·X touch the m×n matrix. With the Triton kernels for those two the
# GPT-2-small polar step took 4.95 ms against 3.50 ms on cuBLAS (H100, BENCHMARKS.md), so auto keeps
# cuBLAS; kernels="triton" still selects them.
GRAM_SPACE_TRITON = False


def gram_space_ops(x: Tensor, kernels: str, dtype: torch.dtype) -> NSOps:
    """Implementation of the two m×n products of Gram Newton–Schulz on wide batch ``x``."""
    if kernels == "triton" or (
        kernels == "auto" and GRAM_SPACE_TRITON and x.is_cuda and dtype in (torch.bfloat16, torch.float16)
    ):
        return choose_ns_ops(x, "triton", dtype)
    return TORCH_OPS
