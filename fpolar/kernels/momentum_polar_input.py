"""``fpolar::momentum_polar_input``: a shape group's momentum update and its Frobenius-normalized polar
input, from one pass over the grads and the momentum.

Per matrix b of the group (the grads' matrices stacked in order, B in all), with w = 1 − β:

    M_b ← M_b.lerp(G_b, w)                    in place (torch's lerp formula, in the momentum dtype)
    V_b  = G_b.lerp(M_b, β)  (Nesterov)  or  M_b
    V_b  ← V_bᵀ where the group is tall (m > n): the polar step iterates on the wide side
    X_b  = V_b / (safety·‖V_b‖_F + eps·max|V_b|)   in the polar dtype: ``frobenius_normalize``'s numerics

and ``scale_b``, the factor X_b = scale_b·V_b (fp32), so ⟨O, V⟩ = ⟨O, X⟩ / scale for the nuclear rule.
With ``found`` (a 0-d bool on the device; the non-finite skip) True, M is not written and X is zero.

Why it is one pass: the torch glue reads G and M for the lerp, writes M, reads both again for the
Nesterov blend, writes it, reads it for max|V|, again for the norm, and writes X (cast + transpose).
The Triton kernel reads G and M once, writes M, writes V in the polar dtype (transposed through a
tile in registers for tall groups) and per tile two fp32 partial statistics, max|V| and Σ(V/max)²;
the per-matrix max and sum of squares come from those (scale-invariant: every square is ≤ 1). What
is left is one in-place scale of the 16-bit X by ``scale``: 4 bytes per element against the main
pass's 14 (fp32 G and M), one launch per group that also combines the statistics (every program
recomputes its matrix's scale: no launch in between, no generic broadcast multiply). X is therefore rounded
twice (V to the polar dtype, then V·scale): at most one more half-ulp than ``frobenius_normalize``,
which rounds once. The unnormalized V must fit the polar dtype: the fused path is only chosen for
bf16 and fp32, whose range is fp32's (bf16 tops out at 3.39e38 against fp32's 3.40e38), not fp16
(it overflows above 65504).

``defer_scale``: the scale pass skips a matrix whose scale lies in [2⁻³⁰, 2³⁰] and leaves X_b = V_b
(rounded once) with ``deferred_b`` = scale_b, the factor X_b still owes: Gram Newton–Schulz then
applies it in the epilogues of its first X Xᵀ and of a polynomial (``fpolar.fused_glue``), and the
pass over a Gram group's X is not made. The bounds keep that product safe: ‖V‖_F ≈ 1/scale ≤ 2³⁰
bounds every entry of V Vᵀ by 2⁶⁰ (fp32 overflows at 2¹²⁸), and ‖V‖_F ≥ 2⁻³⁰ keeps the products
that matter (above 2⁻⁹⁰) normal. Outside the bounds (and for NaN) the scale is applied as without
``defer_scale`` and deferred_b = 1.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from ..polar.frobenius import frobenius_normalize
from ._common import check_finite_scalar, launch_options, require_triton, tl, triton
from ._glue_common import (
    GLUE_DTYPES,
    check_found,
    check_matrix_list,
    elementwise_tile_config,
    found_pointer,
    matrix_offsets,
    matrix_base,
    matrix_view,
    skip_tile,
    tile_of_program,
)
from ..inductor_fallbacks import register_before_lowering

__all__ = [
    "momentum_polar_input",
    "momentum_polar_input_reference",
    "launch_momentum_polar_input",
    "frobenius_scale_from_tiles",
    "launch_scale_polar_input",
    "DEFER_MIN_SCALE",
    "DEFER_MAX_SCALE",
]

# The scales a matrix's normalization may be deferred at (module doc).
DEFER_MIN_SCALE = 2.0**-30
DEFER_MAX_SCALE = 2.0**30


def momentum_polar_input_reference(
    momentum: torch.Tensor,
    grads: Sequence[torch.Tensor],
    beta: float,
    nesterov: bool,
    polar_dtype: torch.dtype,
    safety: float,
    eps: float,
    found: Optional[torch.Tensor] = None,
    defer_scale: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op's math in torch, written as the torch glue computes it (the twin the kernel is tested
    against): stacked lerps, ``torch.where`` for the skip, ``frobenius_normalize``. Mutates
    ``momentum``; returns (X, scale, deferred)."""
    _, m, n = momentum.shape
    g = torch.cat([t.reshape(-1, m, n) for t in grads]).to(momentum.dtype)
    new = momentum.lerp(g, 1 - beta)
    v = g.lerp(new, beta) if nesterov else new
    if found is not None:
        found = found.reshape(())
        new = torch.where(found, momentum, new)
        v = torch.where(found, torch.zeros((), dtype=v.dtype, device=v.device), v)
    momentum.copy_(new)
    if m > n:
        v = v.mT
    x = frobenius_normalize(v, safety, eps, polar_dtype).contiguous()
    acc = torch.promote_types(v.dtype, torch.float32)
    va = v.to(acc)
    peak = torch.linalg.vector_norm(va, ord=float("inf"), dim=(-2, -1))
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    norm = torch.linalg.vector_norm(va / peak[:, None, None], dim=(-2, -1))
    scale = (1.0 / (peak * (norm * safety + eps))).float()
    deferred = torch.ones_like(scale)
    if defer_scale:
        defer = (scale >= DEFER_MIN_SCALE) & (scale <= DEFER_MAX_SCALE)
        deferred = torch.where(defer, scale, deferred)
        x = torch.where(defer[:, None, None], v.to(polar_dtype), x).contiguous()
    return x, scale, deferred


@triton.jit
def _momentum_polar_input_kernel(
    g_ptr,
    g_offsets_ptr,
    m_ptr,
    x_ptr,
    tile_max_ptr,
    tile_sumsq_ptr,
    found_ptr,
    rows,
    cols,
    stride_gb,
    stride_gr,
    stride_gc,
    stride_mb,
    stride_mr,
    stride_mc,
    stride_xb,
    stride_xr,
    stride_xc,
    tiles_c,
    tiles,
    weight,
    beta,
    NESTEROV: tl.constexpr,
    HAS_FOUND: tl.constexpr,
    TRANSPOSE: tl.constexpr,
    GATHER: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # One flat grid of matrices × tiles over the launch's matrices (the group's, or one param's with
    # the other pointers offset to its first matrix).
    pid = tl.program_id(0)
    b64, r, c, inside = tile_of_program(pid, tiles, tiles_c, rows, cols, BLOCK_R, BLOCK_C)
    # GATHER: the grads are separate tensors, read through their offsets table
    g_base = matrix_base(g_ptr, g_offsets_ptr, b64, stride_gb, GATHER, ALIGNED)
    g = tl.load(g_base + r[:, None] * stride_gr + c[None, :] * stride_gc, mask=inside, other=0.0)
    m_ptrs = m_ptr + b64 * stride_mb + r[:, None] * stride_mr + c[None, :] * stride_mc
    m_old = tl.load(m_ptrs, mask=inside, other=0.0)
    mdt = m_ptr.dtype.element_ty
    # The grads are cast to the momentum dtype first, as the torch glue does (momentum_dtype ≠ param dtype).
    gf = g.to(mdt).to(tl.float32)
    mf = m_old.to(tl.float32)
    # torch.lerp: start + w·(end − start) for w < 0.5, else end − (end − start)·(1 − w).
    if weight < 0.5:
        m_new = mf + weight * (gf - mf)
    else:
        m_new = gf - (gf - mf) * (1.0 - weight)
    m_new = m_new.to(mdt)
    keep = inside
    if HAS_FOUND:
        skip = skip_tile(found_ptr, r, c)
        keep = inside & ~skip
    tl.store(m_ptrs, m_new, mask=keep)
    mn = m_new.to(tl.float32)
    if NESTEROV:
        # G.lerp(M, β), rounded to the momentum dtype like the torch glue's out-of-place lerp.
        if beta < 0.5:
            v = gf + beta * (mn - gf)
        else:
            v = mn - (mn - gf) * (1.0 - beta)
        v = v.to(mdt).to(tl.float32)
    else:
        v = mn
    if HAS_FOUND:
        v = tl.where(skip, 0.0, v)
    v = tl.where(inside, v, 0.0)
    # Partial statistics of this tile: max|V| and Σ(V / max|V|)², each square ≤ 1 (no overflow, no
    # underflow of the large entries). NaN/inf make the sum NaN (inf/inf), as they make the norm NaN.
    tmax = tl.max(tl.max(tl.abs(v), axis=1), axis=0)
    # A zero tile divides by 1 (its entries are 0 either way).
    u = v * (1.0 / tl.where(tmax > 0, tmax, 1.0))
    tsum = tl.sum(tl.sum(u * u, axis=1), axis=0)
    stat = pid.to(tl.int64)  # = b·tiles + t: the statistics are laid out as the grid
    tl.store(tile_max_ptr + stat, tmax)
    tl.store(tile_sumsq_ptr + stat, tsum)
    xv = v.to(x_ptr.dtype.element_ty)
    x_base = x_ptr + b64 * stride_xb
    if TRANSPOSE:
        # X is the (cols, rows) transpose: store the tile transposed so the writes run along X's rows.
        x_ptrs = x_base + c[:, None] * stride_xr + r[None, :] * stride_xc
        inside_t = (c[:, None] < cols) & (r[None, :] < rows)
        tl.store(x_ptrs, tl.trans(xv), mask=inside_t)
    else:
        tl.store(x_base + r[:, None] * stride_xr + c[None, :] * stride_xc, xv, mask=inside)


def frobenius_scale_from_tiles(
    tile_max: torch.Tensor, tile_sumsq: torch.Tensor, safety: float, eps: float
) -> torch.Tensor:
    """Per matrix, 1/(peak·(safety·‖V/peak‖_F + eps)) from per-tile max|V| and Σ(V/tile max)²
    ((B, T) fp32 each): peak = max over tiles, ‖V/peak‖² = Σ_t sumsq_t·(max_t/peak)². A zero matrix
    gets peak 1 (its X is zero whatever the scale). Returns (B,) fp32."""
    peak = tile_max.amax(dim=1)
    ratio = tile_max / torch.where(peak > 0, peak, torch.ones_like(peak))[:, None]
    norm = (tile_sumsq * ratio * ratio).sum(dim=1).sqrt()
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    return 1.0 / (peak * (norm * safety + eps))


@triton.jit
def _frobenius_scale_of_matrix(row_max, row_sum, tiles, safety, eps, BLOCK_T: tl.constexpr):
    """frobenius_scale_from_tiles's math over one matrix's row of tile statistics (``tiles`` of each)."""
    # Vector accumulators across the chunks, reduced once at the end.
    peaks = tl.zeros([BLOCK_T], dtype=tl.float32)
    for start in range(0, tiles, BLOCK_T):
        idx = start + tl.arange(0, BLOCK_T)
        peaks = tl.maximum(peaks, tl.load(row_max + idx, mask=idx < tiles, other=0.0))
    peak = tl.max(peaks, axis=0)
    safe_peak = tl.where(peak > 0, peak, 1.0)
    sums = tl.zeros([BLOCK_T], dtype=tl.float32)
    for start in range(0, tiles, BLOCK_T):
        idx = start + tl.arange(0, BLOCK_T)
        inside = idx < tiles
        ratio = tl.load(row_max + idx, mask=inside, other=0.0) / safe_peak
        sums += tl.load(row_sum + idx, mask=inside, other=0.0) * ratio * ratio
    total = tl.sum(sums, axis=0)
    return 1.0 / (safe_peak * (tl.sqrt(total) * safety + eps))


@triton.jit
def _scale_polar_input_kernel(
    x_ptr,
    tile_max_ptr,
    tile_sumsq_ptr,
    scale_ptr,
    deferred_ptr,
    numel,
    parts,
    part_len,
    tiles,
    safety,
    eps,
    defer_min,
    defer_max,
    DEFER: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Program (b, part) scales part_len consecutive elements of matrix b's X in place. Every program
    # of b recomputes b's scale from the tile statistics (the same code on the same data: the same
    # bits in every program); a separate combine launch would cost more than these reads (L2 hits,
    # a few % of the part's bytes, see the launcher).
    pid = tl.program_id(0)
    b = (pid // parts).to(tl.int64)
    part = pid % parts
    scale = _frobenius_scale_of_matrix(
        tile_max_ptr + b * tiles, tile_sumsq_ptr + b * tiles, tiles, safety, eps, BLOCK_T
    )
    todo = part_len
    owed = 1.0
    if DEFER:
        # A matrix whose scale is in range keeps X = V and owes the scale (NaN compares False: applied).
        defer = (scale >= defer_min) & (scale <= defer_max)
        todo = tl.where(defer, 0, part_len)
        owed = tl.where(defer, scale, 1.0)
    if part == 0:
        tl.store(scale_ptr + b, scale)
        tl.store(deferred_ptr + b, owed)
    x_base = x_ptr + b * numel
    lo = part * part_len
    # X is contiguous: each matrix is one flat run of numel elements, read and written in wide vectors.
    for start in range(lo, lo + todo, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        inside = idx < numel
        x = tl.load(x_base + idx, mask=inside, other=0.0)
        # one multiply in fp32, one rounding to the polar dtype: torch's x.mul_(scale) on the 16-bit X
        tl.store(x_base + idx, (x.to(tl.float32) * scale).to(x_ptr.dtype.element_ty), mask=inside)


# Elements per step of the scale pass: 16 per thread of 4 warps (two 16-byte vectors of bf16).
_SCALE_BLOCK = 2048


def launch_scale_polar_input(
    x: torch.Tensor,
    tile_max: torch.Tensor,
    tile_sumsq: torch.Tensor,
    safety: float,
    eps: float,
    block: int = _SCALE_BLOCK,
    part_len: Optional[int] = None,
    defer_scale: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """X_b ← X_b·scale_b in place for every matrix b of the contiguous ``x`` (B, r, c) (fp32 math,
    one rounding to x's dtype), with scale_b = ``frobenius_scale_from_tiles``'s formula on the (B, T)
    fp32 contiguous tile statistics, computed inside the same launch. ``defer_scale``: matrices whose
    scale is in [DEFER_MIN_SCALE, DEFER_MAX_SCALE] are left as they are (module doc). Returns
    (scale, deferred), (B,) fp32 each: deferred_b = scale_b where X_b was left, else 1.
    ``block`` (a power of 2) and ``part_len`` (elements per program, rounded up to a multiple of
    ``block``) override the launch shape."""
    require_triton()
    batch, tiles = tile_max.shape
    scale = torch.empty((batch,), dtype=torch.float32, device=tile_max.device)
    deferred = torch.empty((batch,), dtype=torch.float32, device=tile_max.device)  # every entry stored
    if batch == 0:
        return scale, deferred
    numel = x[0].numel()
    block_t = min(1024, triton.next_power_of_2(max(tiles, 1)))
    if part_len is None:
        # Parts of ≥ 64·T elements: each program reads its matrix's 8·T bytes of statistics (twice)
        # against ≥ 256·T bytes of X moved, so the recomputed scale costs a few % of the pass.
        part_len = triton.cdiv(numel, max(1, numel // (64 * max(tiles, 1))))
    part_len = max(1, triton.cdiv(max(part_len, 1), block)) * block
    parts = max(1, triton.cdiv(numel, part_len))
    _scale_polar_input_kernel[(batch * parts,)](
        x, tile_max, tile_sumsq, scale, deferred, numel, parts, part_len, tiles, float(safety), float(eps),
        DEFER_MIN_SCALE, DEFER_MAX_SCALE, DEFER=bool(defer_scale), BLOCK_T=block_t, BLOCK=block,
        num_warps=4, num_stages=1,
    )
    return scale, deferred


def launch_momentum_polar_input(
    momentum: torch.Tensor,
    grads: Sequence[torch.Tensor],
    x: torch.Tensor,
    beta: float,
    nesterov: bool,
    found: Optional[torch.Tensor] = None,
    config: Optional[triton.Config] = None,
    single_launch: Optional[bool] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Runs the Triton kernel: updates ``momentum`` (B, m, n) in place and writes the unnormalized V
    into ``x`` ((B, m, n), or (B, n, m) for a tall group) in x's dtype. Returns the per-tile
    statistics (tile_max, tile_sumsq), (B, T) fp32. CUDA tensors, or CPU tensors under
    TRITON_INTERPRET=1. ``config`` overrides the tile (kwargs BLOCK_R, BLOCK_C).

    One launch for all the grads when ``matrix_offsets`` gives their table, else one per grad;
    ``single_launch`` True requires the one launch (ValueError if it cannot be had), False forces
    one per grad, None (default) chooses."""
    require_triton()
    batch, rows, cols = momentum.shape
    transpose = rows > cols
    want = (batch, cols, rows) if transpose else (batch, rows, cols)
    if tuple(x.shape) != want:
        raise ValueError(f"x must have shape {want}, got {tuple(x.shape)}")
    config = config or elementwise_tile_config(rows, cols)
    block_r, block_c = config.kwargs["BLOCK_R"], config.kwargs["BLOCK_C"]
    tiles_c = triton.cdiv(cols, block_c)
    tiles = triton.cdiv(rows, block_r) * tiles_c
    # Every program stores its tile's two statistics (skipped or not), so every entry is written: no fill.
    tile_max = torch.empty((batch, tiles), dtype=torch.float32, device=momentum.device)
    tile_sumsq = torch.empty((batch, tiles), dtype=torch.float32, device=momentum.device)
    if momentum.numel() == 0:
        return tile_max, tile_sumsq
    views = [matrix_view(g, rows, cols, writable=False) for g in grads]
    table = None if single_launch is False else matrix_offsets(views)
    if table is None and single_launch:
        raise ValueError("single_launch=True, but the grads have no offsets table (mixed dtypes or strides, or a "
                         "CUDA graph is being captured before any eager call on these tensors)")
    found_arg = found_pointer(found, momentum)
    common = dict(
        NESTEROV=bool(nesterov), HAS_FOUND=found is not None, TRANSPOSE=transpose, **launch_options(config)
    )
    scalars = (rows, cols)
    if table is not None:
        _momentum_polar_input_kernel[(batch * tiles,)](
            table.base, table.offsets, momentum, x, tile_max, tile_sumsq, found_arg, *scalars,
            0, table.stride_r, table.stride_c, *momentum.stride(), *x.stride(),
            tiles_c, tiles, float(1 - beta), float(beta), GATHER=True, ALIGNED=table.aligned, **common,
        )
        return tile_max, tile_sumsq
    off = 0
    for g in views:
        k = g.shape[0]
        if k == 0:
            continue
        _momentum_polar_input_kernel[(k * tiles,)](
            g, momentum, momentum[off : off + k], x[off : off + k], tile_max[off : off + k],
            tile_sumsq[off : off + k], found_arg, *scalars, *g.stride(), *momentum.stride(), *x.stride(),
            tiles_c, tiles, float(1 - beta), float(beta), GATHER=False, ALIGNED=False, **common,
        )
        off += k
    return tile_max, tile_sumsq


def _check(
    momentum: torch.Tensor,
    grads: Sequence[torch.Tensor],
    beta: float,
    polar_dtype: torch.dtype,
    safety: float,
    eps: float,
    found: Optional[torch.Tensor],
) -> None:
    if not isinstance(momentum, torch.Tensor) or momentum.dim() != 3:
        got = f"shape {tuple(momentum.shape)}" if isinstance(momentum, torch.Tensor) else type(momentum).__name__
        raise ValueError(f"momentum must be a (B, m, n) tensor, got {got}")
    if momentum.dtype not in GLUE_DTYPES:
        raise TypeError(f"momentum has dtype {momentum.dtype}; supported: bfloat16, float16, float32")
    if not momentum.is_contiguous():
        raise ValueError(f"momentum must be contiguous (it is written in place), got strides {momentum.stride()}")
    check_matrix_list("grads", grads, momentum.shape, momentum.device, writable=False)
    beta = check_finite_scalar("beta", beta)
    if not isinstance(beta, torch.SymFloat) and not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    if polar_dtype not in (torch.bfloat16, torch.float32):
        # fp16's range is smaller than fp32's: the unnormalized V could overflow before the scale.
        raise TypeError(f"polar_dtype must be torch.bfloat16 or torch.float32, got {polar_dtype}")
    safety = check_finite_scalar("safety", safety)
    eps = check_finite_scalar("eps", eps)
    if not isinstance(eps, torch.SymFloat) and not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    check_found(found, momentum.device)


def _output_shape(momentum: torch.Tensor) -> Tuple[int, int, int]:
    b, m, n = momentum.shape
    return (b, n, m) if m > n else (b, m, n)


@torch.library.custom_op("fpolar::momentum_polar_input", mutates_args=("momentum",))
def momentum_polar_input(
    momentum: torch.Tensor,
    grads: List[torch.Tensor],
    beta: float,
    nesterov: bool,
    polar_dtype: torch.dtype,
    safety: float,
    eps: float,
    found: Optional[torch.Tensor] = None,
    defer_scale: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """M ← β·M + (1−β)·G in place and the group's normalized polar input, in one pass (module docstring).

    Args:
        momentum: (B, m, n) contiguous, bf16/fp16/fp32: the group's stacked momentum. **Mutated**
            (not where ``found``).
        grads: the group's grads, each holding k ≥ 1 m×n matrices (2-D (m, n), 3-D (k, m, n), or a
            contiguous ≥4-D tensor flattened to (dim 0, rest)), B matrices in all, on momentum's device,
            bf16/fp16/fp32. Read only.
        beta: momentum β in [0, 1). nesterov: X from G.lerp(M, β) instead of M.
        polar_dtype: bfloat16 or float32, the dtype of X.
        safety, eps: the Frobenius normalization's (X = V / (safety·‖V‖_F + eps·max|V|)).
        found: optional 0-d bool on momentum's device; True: momentum unchanged, X zero.
        defer_scale: leave the scale of matrices in the safe range to the caller (module docstring).

    Returns:
        X: (B, min(m, n), max(m, n)) contiguous in ``polar_dtype`` (tall groups transposed);
        scale: (B,) fp32, deferred·X = scale·V up to rounding;
        deferred: (B,) fp32, what X_b still owes: scale_b where it was deferred, else 1.

    This body is the implementation for devices without a kernel (CPU): the torch twin.
    """
    _check(momentum, grads, beta, polar_dtype, safety, eps, found)
    return momentum_polar_input_reference(
        momentum, grads, beta, nesterov, polar_dtype, safety, eps, found, defer_scale
    )


@momentum_polar_input.register_kernel("cuda")
def _momentum_polar_input_cuda(
    momentum: torch.Tensor,
    grads: List[torch.Tensor],
    beta: float,
    nesterov: bool,
    polar_dtype: torch.dtype,
    safety: float,
    eps: float,
    found: Optional[torch.Tensor] = None,
    defer_scale: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(momentum, grads, beta, polar_dtype, safety, eps, found)
    x = torch.empty(_output_shape(momentum), dtype=polar_dtype, device=momentum.device)
    tile_max, tile_sumsq = launch_momentum_polar_input(momentum, grads, x, beta, nesterov, found)
    scale, deferred = launch_scale_polar_input(x, tile_max, tile_sumsq, safety, eps, defer_scale=defer_scale)
    return x, scale, deferred


@momentum_polar_input.register_fake
def _momentum_polar_input_fake(
    momentum: torch.Tensor,
    grads: List[torch.Tensor],
    beta: float,
    nesterov: bool,
    polar_dtype: torch.dtype,
    safety: float,
    eps: float,
    found: Optional[torch.Tensor] = None,
    defer_scale: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    register_before_lowering(torch.ops.fpolar.momentum_polar_input.default)  # see fpolar/inductor_fallbacks.py
    _check(momentum, grads, beta, polar_dtype, safety, eps, found)
    x = momentum.new_empty(_output_shape(momentum), dtype=polar_dtype)
    batch = momentum.shape[0]
    return x, momentum.new_empty((batch,), dtype=torch.float32), momentum.new_empty((batch,), dtype=torch.float32)
