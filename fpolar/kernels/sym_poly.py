"""``fpolar::sym_poly``: s·I + b·A + c·A·A for symmetric A (Newton–Schulz line 2; with the shift s = a,
Gram Newton–Schulz's whole polynomial p(R) = a·I + b·R + c·R²).

For symmetric A, A·A = A·Aᵀ: the product is a Gram matrix of A's rows, so it reuses the lower-tile
Gram kernel (half the FLOPs, contiguous row loads for both operands) with b·A fused into the epilogue.
The result is symmetric and written exactly symmetric. On sm90 and later the tiles move through
TMA (``_tma``), elsewhere through pointer loads; the two kernels compute the same sums.

Unlike cuBLAS's ``baddbmm``, which first copies A into its output to add b·A, the kernel reads the
b·A tile itself just before it stores the result: no copy of A. The shift is added to the diagonal
in fp32 before the one rounding to A's dtype: no separate a·I launch, and one rounding fewer than
adding it to the rounded b·A + c·A².

With a per-matrix ``scale`` (B,) fp32 the whole polynomial is multiplied by s_b in fp32 before that
rounding: the last polynomial of Gram Newton–Schulz's first block carries the deferred Frobenius
scale of the polar input (X₁ = (s·P)·Q·V; ``fpolar.polar.gram_newton_schulz``).
"""

from __future__ import annotations

import torch

from ._common import (
    check_batch_scale,
    check_batched_matrix,
    check_finite_scalar,
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

__all__ = ["sym_poly", "sym_poly_reference", "launch_sym_poly"]


def sym_poly_reference(
    a: torch.Tensor, b: float, c: float, shift: float = 0.0, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """shift·I + b·A + c·A·A per batch entry in fp32, times scale_b when given. a: (B, m, m) -> (B, m, m),
    dtype of a; scale: (B,) fp32."""
    af = a.float()
    value = b * af + c * (af @ af)
    if shift != 0.0:
        value.diagonal(dim1=-2, dim2=-1).add_(shift)
    if scale is not None:
        value = value * scale.float()[:, None, None]
    return value.to(a.dtype)


@triton.jit
def _sym_poly_kernel(
    a_ptr,
    out_ptr,
    scale_ptr,
    coef_b,
    coef_c,
    shift,
    m,
    stride_ab,
    stride_am,
    stride_an,
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
    a_base = a_ptr + batch.to(tl.int64) * stride_ab
    out_base = out_ptr + batch.to(tl.int64) * stride_ob
    rows_i = ti * BLOCK + tl.arange(0, BLOCK)
    rows_j = tj * BLOCK + tl.arange(0, BLOCK)
    a_squared = gram_tile(
        a_base, rows_i, rows_j, m, m, stride_am, stride_an, BLOCK, BLOCK_K, PRECISION, UPCAST
    )
    in_bounds = (rows_i[:, None] < m) & (rows_j[None, :] < m)
    a_tile = tl.load(
        a_base + rows_i[:, None] * stride_am + rows_j[None, :] * stride_an, mask=in_bounds, other=0.0
    )
    value = coef_b * a_tile.to(tl.float32) + coef_c * a_squared
    if ti == tj:
        value += tl.where(rows_i[:, None] == rows_j[None, :], shift, 0.0)
    value = times_matrix_scale(value, scale_ptr, batch, HAS_SCALE, False)
    store_mirrored(
        out_base, value.to(out_ptr.dtype.element_ty), rows_i, rows_j, ti == tj, m, stride_om, stride_on
    )


@triton.jit
def _sym_poly_tma_kernel(
    a_rows_desc,
    a_tile_desc,
    out_desc,
    scale_ptr,
    coef_b,
    coef_c,
    shift,
    m,
    lower_tiles,
    HAS_SCALE: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # The same tiles as _sym_poly_kernel through TMA: a_rows_desc moves (BLOCK, BLOCK_K) boxes of A's
    # rows for A·Aᵀ, a_tile_desc the (BLOCK, BLOCK) tile of A for b·A.
    batch, ti, tj = program_tile(lower_tiles)
    a_squared = gram_tile_tma(a_rows_desc, batch, ti, tj, m, BLOCK, BLOCK_K, PRECISION, UPCAST)
    a_tile = a_tile_desc.load([batch, ti * BLOCK, tj * BLOCK]).reshape(BLOCK, BLOCK)
    value = coef_b * a_tile.to(tl.float32) + coef_c * a_squared
    if ti == tj:
        r = tl.arange(0, BLOCK)
        value += tl.where(r[:, None] == r[None, :], shift, 0.0)
    value = times_matrix_scale(value, scale_ptr, batch, HAS_SCALE, False)
    store_mirrored_tma(out_desc, value.to(out_desc.dtype), batch, ti, tj, BLOCK)


def launch_sym_poly(
    a: torch.Tensor,
    out: torch.Tensor,
    b: float,
    c: float,
    config: triton.Config | None = None,
    *,
    tma: bool | None = None,
    shift: float = 0.0,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Runs the Triton kernel: out[k] = shift·I + b·a[k] + c·a[k]·a[k], fp32 accumulation, times
    scale[k] when ``scale`` ((B,) fp32) is given.

    a: (B, m, m), symmetric (the kernel computes A·Aᵀ and reads only A's lower-tile entries for the
    b·A term); out: (B, m, m), written in full and exactly symmetric. ``config`` overrides the
    heuristic (kwargs BLOCK, BLOCK_K). ``tma``: load and store through TMA (None: where the device
    and the layouts allow it; see ``fpolar.kernels._tma``). CUDA tensors, or CPU tensors under
    TRITON_INTERPRET=1.
    """
    require_triton()
    batch, m, _ = a.shape
    if out.shape != a.shape:
        raise ValueError(f"out must have shape {tuple(a.shape)}, got {tuple(out.shape)}")
    check_int32_addressable("a", a)
    check_int32_addressable("out", out)
    check_batch_scale("scale", scale, batch, a.device)
    if out.numel() == 0:
        return out
    through_tma = use_tma((a, out), tma)
    if config is None:  # the tuned config for this device and shape (the heuristic when not tuning)
        config = get_tuner().config_for(
            loaded_through("sym_poly", through_tma), batch, m, m, a.dtype, a.device,
            lambda cfg: launch_sym_poly(a, out, b, c, cfg, tma=through_tma, shift=shift, scale=scale),
        )
    has_scale = scale is not None
    scale_arg = scale if has_scale else out  # never read without HAS_SCALE
    lower_tiles = lower_tile_count(m, config.kwargs["BLOCK"])
    if through_tma:
        block, block_k = config.kwargs["BLOCK"], config.kwargs["BLOCK_K"]
        _sym_poly_tma_kernel[(batch * lower_tiles,)](
            descriptor(a, block, block_k),
            descriptor(a, block, block),
            descriptor(out, block, block),
            scale_arg,
            float(b),
            float(c),
            float(shift),
            m,
            lower_tiles,
            HAS_SCALE=has_scale,
            **dot_options(a.dtype, a.device),
            **launch_options(config),
        )
        return out
    _sym_poly_kernel[(batch * lower_tiles,)](
        a,
        out,
        scale_arg,
        float(b),
        float(c),
        float(shift),
        m,
        *a.stride(),
        *out.stride(),
        lower_tiles,
        HAS_SCALE=has_scale,
        **dot_options(a.dtype, a.device),
        **launch_options(config),
    )
    return out


def _check(a: torch.Tensor, b: float, c: float, shift: float, scale: torch.Tensor | None) -> None:
    check_batched_matrix("a", a)
    if a.shape[-1] != a.shape[-2]:
        raise ValueError(f"a must be a batch of square matrices (B, m, m), got shape {tuple(a.shape)}")
    check_finite_scalar("b", b)
    check_finite_scalar("c", c)
    check_finite_scalar("shift", shift)
    check_batch_scale("scale", scale, a.shape[0], a.device)


@torch.library.custom_op("fpolar::sym_poly", mutates_args=())
def sym_poly(
    a: torch.Tensor, b: float, c: float, shift: float = 0.0, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """shift·I + b·A + c·A·A for symmetric a of shape (B, m, m) -> (B, m, m), same dtype, fp32
    accumulation, one rounding; with ``scale`` ((B,) fp32, a's device) matrix k is multiplied by
    scale[k] in fp32 before that rounding.

    This body is the implementation for devices without a kernel (CPU): the torch twin.
    """
    _check(a, b, c, shift, scale)
    return sym_poly_reference(a, b, c, shift, scale)


@sym_poly.register_kernel("cuda")
def _sym_poly_cuda(
    a: torch.Tensor, b: float, c: float, shift: float = 0.0, scale: torch.Tensor | None = None
) -> torch.Tensor:
    _check(a, b, c, shift, scale)
    a = a.contiguous()
    return launch_sym_poly(a, torch.empty_like(a), b, c, shift=shift, scale=scale)


@sym_poly.register_fake
def _sym_poly_fake(
    a: torch.Tensor, b: float, c: float, shift: float = 0.0, scale: torch.Tensor | None = None
) -> torch.Tensor:
    register_before_lowering(torch.ops.fpolar.sym_poly.default)  # see fpolar/inductor_fallbacks.py
    _check(a, b, c, shift, scale)
    return torch.empty_like(a, memory_format=torch.contiguous_format)
