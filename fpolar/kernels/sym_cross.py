"""``fpolar::sym_cross``: the symmetric product A·Bᵀ from its lower triangle (Gram Newton–Schulz).

Gram Newton–Schulz updates R ← P·R·P with P = p(R) symmetric. With U = P·R, the row i of U is
column i of R·P (R, P symmetric), so P·R·P = P·Uᵀ: a product of rows of P with rows of U whose
result is symmetric for any symmetric P and R (a congruence), whatever their rounding. So only its
lower-triangle tiles are computed and each is also written mirrored: half the FLOPs of ``a @ b.mT``,
with the lower-tile machinery of ``sym_gram`` (one tile of A's rows times one tile of B's rows).

The op's meaning is "the lower triangle of A·Bᵀ, reflected": for A·Bᵀ symmetric that is A·Bᵀ, and
for any A, B it is exactly symmetric (the twin computes the same thing in torch). On sm90 and later
the tiles move through TMA (``_tma``), elsewhere through pointer loads; the two kernels compute the
same sums.
"""

from __future__ import annotations

import torch

from ._common import (
    check_batched_matrix,
    check_int32_addressable,
    dot_options,
    launch_options,
    require_triton,
    tl,
    triton,
)
from ._lower_tiles import (
    cross_tile,
    cross_tile_tma,
    lower_tile_count,
    program_tile,
    store_mirrored,
    store_mirrored_tma,
)
from ._tma import descriptor, use_tma
from .tuning import get_tuner, loaded_through
from ..inductor_fallbacks import register_before_lowering

__all__ = ["sym_cross", "sym_cross_reference", "launch_sym_cross"]


def sym_cross_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The lower triangle of A·Bᵀ (fp32 matmul) reflected onto the upper one. a, b: (B, m, k) -> (B, m, m)."""
    full = a.float() @ b.float().mT
    return (full.tril() + full.tril(-1).mT).to(a.dtype)


@triton.jit
def _sym_cross_kernel(
    a_ptr,
    b_ptr,
    out_ptr,
    m,
    k,
    stride_ab,
    stride_am,
    stride_ak,
    stride_bb,
    stride_bm,
    stride_bk,
    stride_ob,
    stride_om,
    stride_on,
    lower_tiles,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    batch, ti, tj = program_tile(lower_tiles)
    a_base = a_ptr + batch.to(tl.int64) * stride_ab
    b_base = b_ptr + batch.to(tl.int64) * stride_bb
    out_base = out_ptr + batch.to(tl.int64) * stride_ob
    rows_i = ti * BLOCK + tl.arange(0, BLOCK)
    rows_j = tj * BLOCK + tl.arange(0, BLOCK)
    acc = cross_tile(
        a_base, b_base, rows_i, rows_j, m, k, stride_am, stride_ak, stride_bm, stride_bk, BLOCK, BLOCK_K, PRECISION, UPCAST
    )
    store_mirrored(out_base, acc.to(out_ptr.dtype.element_ty), rows_i, rows_j, ti == tj, m, stride_om, stride_on)


@triton.jit
def _sym_cross_tma_kernel(
    a_desc,
    b_desc,
    out_desc,
    k,
    lower_tiles,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # The same tiles as _sym_cross_kernel, loaded and stored through TMA.
    batch, ti, tj = program_tile(lower_tiles)
    acc = cross_tile_tma(a_desc, b_desc, batch, ti, tj, k, BLOCK, BLOCK_K, PRECISION, UPCAST)
    store_mirrored_tma(out_desc, acc.to(out_desc.dtype), batch, ti, tj, BLOCK)


def launch_sym_cross(
    a: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor,
    config: triton.Config | None = None,
    *,
    tma: bool | None = None,
) -> torch.Tensor:
    """Runs the Triton kernel: out[k] = lower triangle of a[k] @ b[k]ᵀ, mirrored; fp32 accumulation.

    a, b: (B, m, k) of one dtype, any strides; out: (B, m, m), written in full and exactly symmetric.
    ``config`` overrides the tuned / heuristic choice (kwargs BLOCK, BLOCK_K). ``tma``: load and store
    through TMA (None: where the device and the layouts allow it; see ``fpolar.kernels._tma``). CUDA
    tensors, or CPU tensors under TRITON_INTERPRET=1.
    """
    require_triton()
    batch, m, k = a.shape
    if b.shape != a.shape:
        raise ValueError(f"b must have the shape of a {tuple(a.shape)}, got {tuple(b.shape)}")
    if out.shape != (batch, m, m):
        raise ValueError(f"out must have shape {(batch, m, m)}, got {tuple(out.shape)}")
    for name, t in (("a", a), ("b", b), ("out", out)):
        check_int32_addressable(name, t)
    if out.numel() == 0:
        return out
    if k == 0:  # an empty sum
        return out.zero_()
    through_tma = use_tma((a, b, out), tma)
    if config is None:  # the tuned config for this device and shape (the heuristic when not tuning)
        config = get_tuner().config_for(
            loaded_through("sym_cross", through_tma), batch, m, k, a.dtype, a.device,
            lambda cfg: launch_sym_cross(a, b, out, cfg, tma=through_tma),
        )
    lower_tiles = lower_tile_count(m, config.kwargs["BLOCK"])
    if through_tma:
        block, block_k = config.kwargs["BLOCK"], config.kwargs["BLOCK_K"]
        _sym_cross_tma_kernel[(batch * lower_tiles,)](
            descriptor(a, block, block_k),
            descriptor(b, block, block_k),
            descriptor(out, block, block),
            k,
            lower_tiles,
            **dot_options(a.dtype, a.device),
            **launch_options(config),
        )
        return out
    _sym_cross_kernel[(batch * lower_tiles,)](
        a,
        b,
        out,
        m,
        k,
        *a.stride(),
        *b.stride(),
        *out.stride(),
        lower_tiles,
        **dot_options(a.dtype, a.device),
        **launch_options(config),
    )
    return out


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    check_batched_matrix("a", a)
    check_batched_matrix("b", b)
    if b.dtype != a.dtype:
        raise TypeError(f"b has dtype {b.dtype} but a has dtype {a.dtype}; they must match")
    if tuple(b.shape) != tuple(a.shape):
        raise ValueError(f"b must have the shape of a {tuple(a.shape)}, got {tuple(b.shape)}")


@torch.library.custom_op("fpolar::sym_cross", mutates_args=())
def sym_cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Lower triangle of A·Bᵀ reflected (= A·Bᵀ when that is symmetric) for a, b (B, m, k) -> (B, m, m),
    dtype of a, fp32 accumulation.

    This body is the implementation for devices without a kernel (CPU): the torch twin.
    """
    _check(a, b)
    return sym_cross_reference(a, b)


@sym_cross.register_kernel("cuda")
def _sym_cross_cuda(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    _check(a, b)
    a, b = a.contiguous(), b.contiguous()
    out = torch.empty((a.shape[0], a.shape[1], a.shape[1]), dtype=a.dtype, device=a.device)
    return launch_sym_cross(a, b, out)


@sym_cross.register_fake
def _sym_cross_fake(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    register_before_lowering(torch.ops.fpolar.sym_cross.default)  # see fpolar/inductor_fallbacks.py
    _check(a, b)
    return a.new_empty((a.shape[0], a.shape[1], a.shape[1]))
