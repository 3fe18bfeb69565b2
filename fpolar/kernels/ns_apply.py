"""``fpolar::ns_apply``: X ← a·X + Bm·X for every matrix in a batch (Newton–Schulz line 3).

One batched matmul with the a·X term fused into its epilogue: X is read once more per output tile
instead of a separate scale-and-add pass over the whole of X.
"""

from __future__ import annotations

import torch

from ._common import (
    check_batched_matrix,
    check_finite_scalar,
    check_int32_addressable,
    dot_fp32_acc,
    dot_options,
    launch_options,
    require_triton,
    tl,
    triton,
)
from .tuning import get_tuner
from ..inductor_fallbacks import register_before_lowering

__all__ = ["ns_apply", "ns_apply_reference", "launch_ns_apply"]


def ns_apply_reference(x: torch.Tensor, bm: torch.Tensor, a: float) -> torch.Tensor:
    """a·X + Bm·X per batch entry in fp32. x: (B, m, n), bm: (B, m, m) -> (B, m, n), dtype of x."""
    xf = x.float()
    return (a * xf + bm.float() @ xf).to(x.dtype)


@triton.jit
def _ns_apply_kernel(
    x_ptr,
    bm_ptr,
    out_ptr,
    coef_a,
    m,
    n,
    stride_xb,
    stride_xm,
    stride_xn,
    stride_bb,
    stride_bm,
    stride_bk,
    stride_ob,
    stride_om,
    stride_on,
    tiles_m,
    tiles_n,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    tiles = tiles_m * tiles_n
    batch = pid // tiles
    tile = pid % tiles
    # Walk tiles in column strips GROUP_M rows tall: programs running together then share rows of
    # Bm and columns of X in L2.
    per_group = GROUP_M * tiles_n
    first_m = (tile // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    tm = first_m + (tile % per_group) % group_rows
    tn = (tile % per_group) // group_rows

    x_base = x_ptr + batch.to(tl.int64) * stride_xb
    bm_base = bm_ptr + batch.to(tl.int64) * stride_bb
    out_base = out_ptr + batch.to(tl.int64) * stride_ob
    rows = tm * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tn * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    valid_rows = rows < m
    valid_cols = cols < n
    bm_ptrs = bm_base + rows[:, None] * stride_bm + ks[None, :] * stride_bk
    x_ptrs = x_base + ks[:, None] * stride_xm + cols[None, :] * stride_xn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, m, BLOCK_K):
        valid_k = (k0 + ks) < m
        bm_tile = tl.load(bm_ptrs, mask=valid_rows[:, None] & valid_k[None, :], other=0.0)
        x_tile = tl.load(x_ptrs, mask=valid_k[:, None] & valid_cols[None, :], other=0.0)
        acc = dot_fp32_acc(bm_tile, x_tile, acc, PRECISION, UPCAST)
        bm_ptrs += BLOCK_K * stride_bk
        x_ptrs += BLOCK_K * stride_xm

    in_bounds = valid_rows[:, None] & valid_cols[None, :]
    x_own = tl.load(x_base + rows[:, None] * stride_xm + cols[None, :] * stride_xn, mask=in_bounds, other=0.0)
    value = acc + coef_a * x_own.to(tl.float32)
    tl.store(
        out_base + rows[:, None] * stride_om + cols[None, :] * stride_on,
        value.to(out_ptr.dtype.element_ty),
        mask=in_bounds,
    )


def launch_ns_apply(
    x: torch.Tensor,
    bm: torch.Tensor,
    out: torch.Tensor,
    a: float,
    config: triton.Config | None = None,
) -> torch.Tensor:
    """Runs the Triton kernel: out[k] = a·x[k] + bm[k] @ x[k], fp32 accumulation.

    x: (B, m, n), bm: (B, m, m), out: (B, m, n) (must not alias x), any strides. ``config``
    overrides the heuristic (kwargs BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M). CUDA tensors, or CPU tensors
    under TRITON_INTERPRET=1.
    """
    require_triton()
    batch, m, n = x.shape
    if bm.shape != (batch, m, m):
        raise ValueError(
            f"bm must have shape {(batch, m, m)} to multiply x of shape {tuple(x.shape)}, "
            f"got {tuple(bm.shape)}"
        )
    if out.shape != x.shape:
        raise ValueError(f"out must have shape {tuple(x.shape)}, got {tuple(out.shape)}")
    for name, t in (("x", x), ("bm", bm), ("out", out)):
        check_int32_addressable(name, t)
    if out.numel() == 0:
        return out
    if config is None:  # the tuned config for this device and shape (the heuristic when not tuning)
        config = get_tuner().config_for("ns_apply", batch, m, n, x.dtype, x.device, lambda c: launch_ns_apply(x, bm, out, a, c))
    tiles_m = -(-m // config.kwargs["BLOCK_M"])
    tiles_n = -(-n // config.kwargs["BLOCK_N"])
    _ns_apply_kernel[(batch * tiles_m * tiles_n,)](
        x,
        bm,
        out,
        float(a),
        m,
        n,
        *x.stride(),
        *bm.stride(),
        *out.stride(),
        tiles_m,
        tiles_n,
        **dot_options(x.dtype, x.device),
        **launch_options(config),
    )
    return out


def _check(x: torch.Tensor, bm: torch.Tensor, a: float) -> None:
    check_batched_matrix("x", x)
    check_batched_matrix("bm", bm)
    if bm.dtype != x.dtype:
        raise TypeError(f"bm has dtype {bm.dtype} but x has dtype {x.dtype}; they must match")
    batch, m, _ = x.shape
    if tuple(bm.shape) != (batch, m, m):
        raise ValueError(
            f"bm must have shape (B, m, m) = {(batch, m, m)} for x of shape {tuple(x.shape)}, "
            f"got {tuple(bm.shape)}"
        )
    check_finite_scalar("a", a)


@torch.library.custom_op("fpolar::ns_apply", mutates_args=())
def ns_apply(x: torch.Tensor, bm: torch.Tensor, a: float) -> torch.Tensor:
    """a·X + Bm·X for x (B, m, n) and bm (B, m, m) -> (B, m, n), dtype of x, fp32 accumulation.

    This body is the implementation for devices without a kernel (CPU): the torch twin.
    """
    _check(x, bm, a)
    return ns_apply_reference(x, bm, a)


@ns_apply.register_kernel("cuda")
def _ns_apply_cuda(x: torch.Tensor, bm: torch.Tensor, a: float) -> torch.Tensor:
    _check(x, bm, a)
    x = x.contiguous()
    return launch_ns_apply(x, bm.contiguous(), torch.empty_like(x), a)


@ns_apply.register_fake
def _ns_apply_fake(x: torch.Tensor, bm: torch.Tensor, a: float) -> torch.Tensor:
    register_before_lowering(torch.ops.fpolar.ns_apply.default)  # see fpolar/inductor_fallbacks.py
    _check(x, bm, a)
    return torch.empty_like(x, memory_format=torch.contiguous_format)
