"""``fpolar::aol_gram``: AOL preconditioning fused with the first Gram product (Turbo-Muon).

With A = X Xᵀ and s_i = 1/√(Σ_j |A_ij| + eps), returns diag(s)·X and diag(s)·A·diag(s). The scaling
bounds every singular value of diag(s)·X by 1 (s is the Gershgorin/AOL rescaling), replacing the
Frobenius normalization, and the scaled Gram matrix is the first Newton–Schulz iteration's A for free.

What is fused, in two kernels:
1. Gram kernel: lower-triangle tiles of A only (half the FLOPs), each written with its mirror into
   an fp32 scratch, and in the same pass the tile's |A| row sums (rows of the tile and, off the
   diagonal, rows of its mirror) are added into per-row fp32 accumulators with atomics. No second
   read of A for the sums. The atomic order varies, so the last bits of s may vary run to run.
2. Scale kernel (run over X and over A): s_i is formed from the row sums on the fly (no s tensor),
   and each element is scaled in fp32 and rounded once to the output dtype.
X is read twice (once per kernel): the scale needs every row sum, which exists only after the Gram.
"""

from __future__ import annotations

import torch

from ._common import (
    check_batched_matrix,
    check_finite_scalar,
    check_int32_addressable,
    dot_options,
    launch_options,
    require_triton,
    symmetric_tile_config,
    tl,
    triton,
)
from ._lower_tiles import gram_tile, lower_tile_coords, lower_tile_count, store_mirrored

__all__ = ["aol_gram", "aol_gram_reference", "launch_aol_gram"]


def aol_gram_reference(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(diag(s)·X, diag(s)·A·diag(s)) with A = X Xᵀ, s = 1/√(rowsum|A| + eps), in fp32.

    x: (B, m, n) -> ((B, m, n), (B, m, m)), both in the dtype of x.
    """
    xf = x.float()
    gram = xf @ xf.mT
    s = (gram.abs().sum(dim=-1) + eps).rsqrt()
    x_scaled = s[..., :, None] * xf
    gram_scaled = gram * (s[..., :, None] * s[..., None, :])
    return x_scaled.to(x.dtype), gram_scaled.to(x.dtype)


@triton.jit
def _aol_gram_kernel(
    x_ptr,
    gram_ptr,
    row_abs_sum_ptr,
    m,
    n,
    stride_xb,
    stride_xm,
    stride_xn,
    stride_gb,
    stride_gm,
    stride_gn,
    stride_sb,
    lower_tiles,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    batch = pid // lower_tiles
    ti, tj = lower_tile_coords(pid % lower_tiles)
    x_base = x_ptr + batch.to(tl.int64) * stride_xb
    gram_base = gram_ptr + batch.to(tl.int64) * stride_gb
    sum_base = row_abs_sum_ptr + batch.to(tl.int64) * stride_sb
    rows_i = ti * BLOCK + tl.arange(0, BLOCK)
    rows_j = tj * BLOCK + tl.arange(0, BLOCK)
    acc = gram_tile(x_base, rows_i, rows_j, m, n, stride_xm, stride_xn, BLOCK, BLOCK_K, PRECISION, UPCAST)
    store_mirrored(gram_base, acc, rows_i, rows_j, ti == tj, m, stride_gm, stride_gn)
    # Out-of-range rows and columns of acc are exact zeros (masked loads), so the sums need no mask.
    abs_acc = tl.abs(acc)
    tl.atomic_add(sum_base + rows_i, tl.sum(abs_acc, axis=1), mask=rows_i < m, sem="relaxed")
    # The mirrored tile's rows are this tile's columns; a diagonal tile is its own mirror, and only
    # off the diagonal (tj < ti) do all of rows_j lie before the tile's first row ti·BLOCK.
    tl.atomic_add(
        sum_base + rows_j, tl.sum(abs_acc, axis=0), mask=(rows_j < m) & (rows_j < ti * BLOCK), sem="relaxed"
    )


@triton.jit
def _aol_scale_kernel(
    src_ptr,
    out_ptr,
    row_abs_sum_ptr,
    eps,
    n_rows,
    n_cols,
    stride_src_b,
    stride_src_r,
    stride_src_c,
    stride_out_b,
    stride_out_r,
    stride_out_c,
    stride_sb,
    tiles_r,
    tiles_c,
    SCALE_COLS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    tiles = tiles_r * tiles_c
    batch = pid // tiles
    tile = pid % tiles
    rows = (tile // tiles_c) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = (tile % tiles_c) * BLOCK_C + tl.arange(0, BLOCK_C)
    valid_rows = rows < n_rows
    valid_cols = cols < n_cols
    sum_base = row_abs_sum_ptr + batch.to(tl.int64) * stride_sb
    # Round-to-nearest sqrt and division: the approximate ones would add error s does not need.
    s_rows = tl.div_rn(1.0, tl.sqrt_rn(tl.load(sum_base + rows, mask=valid_rows, other=1.0) + eps))
    in_bounds = valid_rows[:, None] & valid_cols[None, :]
    src_base = src_ptr + batch.to(tl.int64) * stride_src_b
    value = tl.load(
        src_base + rows[:, None] * stride_src_r + cols[None, :] * stride_src_c, mask=in_bounds, other=0.0
    ).to(tl.float32)
    if SCALE_COLS:
        s_cols = tl.div_rn(1.0, tl.sqrt_rn(tl.load(sum_base + cols, mask=valid_cols, other=1.0) + eps))
        # s_i·s_j first: the product commutes, so a symmetric A stays exactly symmetric.
        value = value * (s_rows[:, None] * s_cols[None, :])
    else:
        value = value * s_rows[:, None]
    out_base = out_ptr + batch.to(tl.int64) * stride_out_b
    tl.store(
        out_base + rows[:, None] * stride_out_r + cols[None, :] * stride_out_c,
        value.to(out_ptr.dtype.element_ty),
        mask=in_bounds,
    )


# Elementwise pass: 32×128 blocks (4 warps) move 16 KiB of fp32 per program, plenty to hide latency.
_SCALE_BLOCK_R = 32
_SCALE_BLOCK_C = 128


def _launch_scale(
    src: torch.Tensor, out: torch.Tensor, row_abs_sum: torch.Tensor, eps: float, scale_cols: bool
) -> None:
    batch, n_rows, n_cols = src.shape
    tiles_r = -(-n_rows // _SCALE_BLOCK_R)
    tiles_c = -(-n_cols // _SCALE_BLOCK_C)
    _aol_scale_kernel[(batch * tiles_r * tiles_c,)](
        src,
        out,
        row_abs_sum,
        float(eps),
        n_rows,
        n_cols,
        *src.stride(),
        *out.stride(),
        row_abs_sum.stride(0),
        tiles_r,
        tiles_c,
        SCALE_COLS=scale_cols,
        BLOCK_R=_SCALE_BLOCK_R,
        BLOCK_C=_SCALE_BLOCK_C,
        num_warps=4,
    )


def launch_aol_gram(
    x: torch.Tensor,
    x_scaled: torch.Tensor,
    gram_scaled: torch.Tensor,
    eps: float,
    config: triton.Config | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs the two Triton kernels: x_scaled = diag(s)·x, gram_scaled = diag(s)·(x xᵀ)·diag(s).

    x: (B, m, n), any strides; x_scaled: (B, m, n); gram_scaled: (B, m, m); both written in full.
    Scratch: a (B, m) fp32 row-sum buffer, and for 16-bit dtypes a (B, m, m) fp32 Gram matrix (fp32
    outputs hold the unscaled Gram in gram_scaled and are scaled in place). ``config`` overrides the
    Gram kernel's heuristic (kwargs BLOCK, BLOCK_K). CUDA tensors, or CPU tensors under
    TRITON_INTERPRET=1.
    """
    require_triton()
    batch, m, n = x.shape
    if x_scaled.shape != x.shape:
        raise ValueError(f"x_scaled must have shape {tuple(x.shape)}, got {tuple(x_scaled.shape)}")
    if gram_scaled.shape != (batch, m, m):
        raise ValueError(f"gram_scaled must have shape {(batch, m, m)}, got {tuple(gram_scaled.shape)}")
    for name, t in (("x", x), ("x_scaled", x_scaled), ("gram_scaled", gram_scaled)):
        check_int32_addressable(name, t)
    if batch * m == 0:
        return x_scaled, gram_scaled
    if n == 0:  # A = 0, so diag(s)·A·diag(s) = 0; also keeps a null data pointer away from the kernel
        return x_scaled, gram_scaled.zero_()
    config = config or symmetric_tile_config(m, x.dtype)
    row_abs_sum = torch.zeros((batch, m), dtype=torch.float32, device=x.device)
    if gram_scaled.dtype == torch.float32:
        gram = gram_scaled
    else:
        gram = torch.empty((batch, m, m), dtype=torch.float32, device=x.device)
    lower_tiles = lower_tile_count(m, config.kwargs["BLOCK"])
    _aol_gram_kernel[(batch * lower_tiles,)](
        x,
        gram,
        row_abs_sum,
        m,
        n,
        *x.stride(),
        *gram.stride(),
        row_abs_sum.stride(0),
        lower_tiles,
        **dot_options(x.dtype, x.device),
        **launch_options(config),
    )
    _launch_scale(x, x_scaled, row_abs_sum, eps, scale_cols=False)
    # Elementwise and in place when gram is gram_scaled: each element reads only itself.
    _launch_scale(gram, gram_scaled, row_abs_sum, eps, scale_cols=True)
    return x_scaled, gram_scaled


def _check(x: torch.Tensor, eps: float) -> None:
    check_batched_matrix("x", x)
    eps = check_finite_scalar("eps", eps)
    if isinstance(eps, float) and eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")


@torch.library.custom_op("fpolar::aol_gram", mutates_args=())
def aol_gram(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """AOL-scaled X and Gram matrix: x (B, m, n) -> (diag(s)·X (B, m, n), diag(s)·XXᵀ·diag(s) (B, m, m)).

    s_i = 1/√(Σ_j |(XXᵀ)_ij| + eps); outputs in the dtype of x, fp32 accumulation. This body is the
    implementation for devices without a kernel (CPU): the torch twin.
    """
    _check(x, eps)
    return aol_gram_reference(x, eps)


@aol_gram.register_kernel("cuda")
def _aol_gram_cuda(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    _check(x, eps)
    x = x.contiguous()
    batch, m, _ = x.shape
    gram_scaled = torch.empty((batch, m, m), dtype=x.dtype, device=x.device)
    return launch_aol_gram(x, torch.empty_like(x), gram_scaled, eps)


@aol_gram.register_fake
def _aol_gram_fake(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    _check(x, eps)
    batch, m, _ = x.shape
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty((batch, m, m))
