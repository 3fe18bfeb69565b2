"""``fpolar::sym_gram``: the Gram matrix A = X Xᵀ of every matrix in a batch (Newton–Schulz line 1).

A is symmetric, so only its lower-triangle tiles are computed and each is also written mirrored:
half the FLOPs of ``x @ x.mT``. On sm90 and later the tiles move through TMA (``_tma``), elsewhere
through pointer loads; the two kernels compute the same sums.

With a per-matrix ``scale`` (B,) fp32 the result is s_b²·X_b X_bᵀ, multiplied in fp32 before the
one rounding: Gram Newton–Schulz's first R₀ = X₀X₀ᵀ of X₀ = s·V, read from the unscaled V
(``fpolar.fused_glue``: the Frobenius scale of the polar input is then not a pass over V).
"""

from __future__ import annotations

import torch

from ._common import (
    check_batch_scale,
    check_batched_matrix,
    check_int32_addressable,
    dot_options,
    launch_options,
    require_triton,
    tl,
    triton,
)
from .tuning import get_tuner, loaded_through
from ._lower_tiles import (
    gram_tile,
    gram_tile_tma,
    lower_tile_count,
    program_tile,
    store_mirrored,
    store_mirrored_tma,
    times_matrix_scale,
)
from ._tma import descriptor, use_tma
from ..inductor_fallbacks import register_before_lowering

__all__ = ["sym_gram", "sym_gram_reference", "launch_sym_gram"]


def sym_gram_reference(x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """X Xᵀ per batch entry, as a plain fp32 matmul, times scale_b² (as (·s)·s, in fp32) when given.
    x: (B, m, n) -> (B, m, m), dtype of x; scale: (B,) fp32."""
    xf = x.float()
    value = xf @ xf.mT
    if scale is not None:
        s = scale.float()[:, None, None]
        value = value * s * s
    return value.to(x.dtype)


@triton.jit
def _sym_gram_kernel(
    x_ptr,
    out_ptr,
    scale_ptr,
    m,
    n,
    stride_xb,
    stride_xm,
    stride_xn,
    stride_ob,
    stride_om,
    stride_on,
    lower_tiles,
    HAS_SCALE: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    batch, ti, tj = program_tile(lower_tiles)
    # int64 batch offsets: batch · stride overflows int32 for large batches of large matrices.
    x_base = x_ptr + batch.to(tl.int64) * stride_xb
    out_base = out_ptr + batch.to(tl.int64) * stride_ob
    rows_i = ti * BLOCK + tl.arange(0, BLOCK)
    rows_j = tj * BLOCK + tl.arange(0, BLOCK)
    acc = gram_tile(x_base, rows_i, rows_j, m, n, stride_xm, stride_xn, BLOCK, BLOCK_K, PRECISION, UPCAST)
    value = times_matrix_scale(acc, scale_ptr, batch, HAS_SCALE, True).to(out_ptr.dtype.element_ty)
    store_mirrored(out_base, value, rows_i, rows_j, ti == tj, m, stride_om, stride_on)


@triton.jit
def _sym_gram_tma_kernel(
    x_desc,
    out_desc,
    scale_ptr,
    n,
    lower_tiles,
    HAS_SCALE: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # The same tiles as _sym_gram_kernel, loaded and stored through TMA.
    batch, ti, tj = program_tile(lower_tiles)
    acc = gram_tile_tma(x_desc, batch, ti, tj, n, BLOCK, BLOCK_K, PRECISION, UPCAST)
    value = times_matrix_scale(acc, scale_ptr, batch, HAS_SCALE, True)
    store_mirrored_tma(out_desc, value.to(out_desc.dtype), batch, ti, tj, BLOCK)


def launch_sym_gram(
    x: torch.Tensor,
    out: torch.Tensor,
    config: triton.Config | None = None,
    *,
    tma: bool | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Runs the Triton kernel: out[b] = x[b] @ x[b]ᵀ, times scale[b]² when ``scale`` ((B,) fp32) is given.

    x: (B, m, n), any strides; out: (B, m, m), written in full (every element). fp32 accumulation.
    ``config`` overrides the tile heuristic (kwargs BLOCK, BLOCK_K). ``tma``: load and store through
    TMA (None: where the device and the layouts allow it; see ``fpolar.kernels._tma``). Works on CUDA
    tensors, and on CPU tensors when the Triton interpreter is on (TRITON_INTERPRET=1).
    """
    require_triton()
    batch, m, n = x.shape
    if out.shape != (batch, m, m):
        raise ValueError(f"out must have shape {(batch, m, m)}, got {tuple(out.shape)}")
    check_int32_addressable("x", x)
    check_int32_addressable("out", out)
    check_batch_scale("scale", scale, batch, x.device)
    if out.numel() == 0:
        return out
    if n == 0:  # an empty sum; also keeps a null data pointer away from the kernel
        return out.zero_()
    through_tma = use_tma((x, out), tma)
    if config is None:  # the tuned config for this device and shape (the heuristic when not tuning)
        config = get_tuner().config_for(
            loaded_through("sym_gram", through_tma), batch, m, n, x.dtype, x.device,
            lambda c: launch_sym_gram(x, out, c, tma=through_tma, scale=scale),
        )
    has_scale = scale is not None
    scale_arg = scale if has_scale else out  # never read without HAS_SCALE
    lower_tiles = lower_tile_count(m, config.kwargs["BLOCK"])
    if through_tma:
        block, block_k = config.kwargs["BLOCK"], config.kwargs["BLOCK_K"]
        _sym_gram_tma_kernel[(batch * lower_tiles,)](
            descriptor(x, block, block_k),
            descriptor(out, block, block),
            scale_arg,
            n,
            lower_tiles,
            HAS_SCALE=has_scale,
            **dot_options(x.dtype, x.device),
            **launch_options(config),
        )
        return out
    _sym_gram_kernel[(batch * lower_tiles,)](
        x,
        out,
        scale_arg,
        m,
        n,
        *x.stride(),
        *out.stride(),
        lower_tiles,
        HAS_SCALE=has_scale,
        **dot_options(x.dtype, x.device),
        **launch_options(config),
    )
    return out


def _check(x: torch.Tensor, scale: torch.Tensor | None) -> None:
    check_batched_matrix("x", x)
    check_batch_scale("scale", scale, x.shape[0], x.device)


@torch.library.custom_op("fpolar::sym_gram", mutates_args=())
def sym_gram(x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """A = X Xᵀ for x of shape (B, m, n) -> (B, m, m), same dtype, fp32 accumulation; with ``scale``
    ((B,) fp32, x's device) A_b = scale_b²·X_b X_bᵀ, scaled in fp32 before the one rounding.

    This body is the implementation for devices without a kernel (CPU): the torch twin.
    """
    _check(x, scale)
    return sym_gram_reference(x, scale)


@sym_gram.register_kernel("cuda")
def _sym_gram_cuda(x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    _check(x, scale)
    x = x.contiguous()
    out = torch.empty((x.shape[0], x.shape[1], x.shape[1]), dtype=x.dtype, device=x.device)
    return launch_sym_gram(x, out, scale=scale)


@sym_gram.register_fake
def _sym_gram_fake(x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    register_before_lowering(torch.ops.fpolar.sym_gram.default)  # see fpolar/inductor_fallbacks.py
    _check(x, scale)
    return x.new_empty((x.shape[0], x.shape[1], x.shape[1]))
