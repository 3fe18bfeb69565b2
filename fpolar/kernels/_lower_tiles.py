"""Triton building blocks for symmetric outputs computed from their lower-triangle tiles only.

A symmetric (m, m) result split into square BLOCK×BLOCK tiles has T(T+1)/2 tiles on or below the
diagonal (T = ceil(m / BLOCK)). One program computes one such tile and writes it twice: in place and
mirrored across the diagonal (a diagonal tile once, symmetrized). That is about half the products of
the full matrix for the same bytes out. Each tile has a pointer-load form and a TMA form (``_tma``).
Tile indices are int32: T(T+1)/2 < 2**28 (m up to millions).
"""

from __future__ import annotations

from ._common import dot_fp32_acc, tl, triton

__all__ = [
    "lower_tile_count",
    "lower_tile_coords",
    "program_tile",
    "gram_tile",
    "gram_tile_tma",
    "cross_tile",
    "cross_tile_tma",
    "store_mirrored",
    "store_mirrored_tma",
    "times_matrix_scale",
]


def lower_tile_count(m: int, block: int) -> int:
    """Number of BLOCK×BLOCK tiles on or below the diagonal of an (m, m) matrix."""
    tiles = -(-m // block)
    return tiles * (tiles + 1) // 2


@triton.jit
def lower_tile_coords(tile):
    """Maps ``tile`` in [0, T(T+1)/2) to (ti, tj) with tj <= ti, walking the lower triangle by rows.

    Row ti starts at ti(ti+1)/2, so ti = floor((sqrt(8·tile + 1) − 1) / 2); fp32 sqrt can land one
    off near a perfect square, which the two corrections below undo exactly in integers.
    """
    ti = ((tl.sqrt((8 * tile + 1).to(tl.float32)) - 1.0) * 0.5).to(tl.int32)
    ti = tl.where(ti * (ti + 1) // 2 > tile, ti - 1, ti)
    ti = tl.where((ti + 1) * (ti + 2) // 2 <= tile, ti + 1, ti)
    tj = tile - ti * (ti + 1) // 2
    return ti, tj


@triton.jit
def program_tile(lower_tiles):
    """(batch, ti, tj) of this program in a flat grid of batch × ``lower_tiles`` lower tiles: a flat
    axis has no 65535 limit on the batch size."""
    pid = tl.program_id(0)
    ti, tj = lower_tile_coords(pid % lower_tiles)
    return pid // lower_tiles, ti, tj


@triton.jit
def gram_tile(
    x_base,
    rows_i,
    rows_j,
    n_rows,
    n_cols,
    stride_row,
    stride_col,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """fp32 tile X[rows_i, :] · X[rows_j, :]ᵀ of shape (BLOCK, BLOCK).

    Rows past ``n_rows`` and columns past ``n_cols`` load as zeros, so they add nothing and the
    out-of-range part of the tile is zero.
    """
    ks = tl.arange(0, BLOCK_K)
    valid_i = rows_i < n_rows
    valid_j = rows_j < n_rows
    ptr_i = x_base + rows_i[:, None] * stride_row + ks[None, :] * stride_col
    ptr_j = x_base + rows_j[:, None] * stride_row + ks[None, :] * stride_col
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k0 in range(0, n_cols, BLOCK_K):
        valid_k = (k0 + ks) < n_cols
        xi = tl.load(ptr_i, mask=valid_i[:, None] & valid_k[None, :], other=0.0)
        xj = tl.load(ptr_j, mask=valid_j[:, None] & valid_k[None, :], other=0.0)
        acc = dot_fp32_acc(xi, tl.trans(xj), acc, PRECISION, UPCAST)
        ptr_i += BLOCK_K * stride_col
        ptr_j += BLOCK_K * stride_col
    return acc


@triton.jit
def cross_tile(
    a_base,
    b_base,
    rows_i,
    rows_j,
    n_rows,
    n_cols,
    stride_a_row,
    stride_a_col,
    stride_b_row,
    stride_b_col,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """fp32 tile A[rows_i, :] · B[rows_j, :]ᵀ of shape (BLOCK, BLOCK): ``gram_tile`` with two matrices
    of one shape (n_rows, n_cols). Out-of-range rows and columns load as zeros."""
    ks = tl.arange(0, BLOCK_K)
    valid_i = rows_i < n_rows
    valid_j = rows_j < n_rows
    ptr_i = a_base + rows_i[:, None] * stride_a_row + ks[None, :] * stride_a_col
    ptr_j = b_base + rows_j[:, None] * stride_b_row + ks[None, :] * stride_b_col
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k0 in range(0, n_cols, BLOCK_K):
        valid_k = (k0 + ks) < n_cols
        ai = tl.load(ptr_i, mask=valid_i[:, None] & valid_k[None, :], other=0.0)
        bj = tl.load(ptr_j, mask=valid_j[:, None] & valid_k[None, :], other=0.0)
        acc = dot_fp32_acc(ai, tl.trans(bj), acc, PRECISION, UPCAST)
        ptr_i += BLOCK_K * stride_a_col
        ptr_j += BLOCK_K * stride_b_col
    return acc


@triton.jit
def times_matrix_scale(value, scale_ptr, batch, HAS_SCALE: tl.constexpr, SQUARED: tl.constexpr):
    """value·s (``SQUARED``: value·s·s, two fp32 multiplies, so s² itself never overflows) with
    s = scale[batch], the optional per-matrix scale of the lower-tile ops' epilogues; value as it is
    without ``HAS_SCALE``."""
    if HAS_SCALE:
        s = tl.load(scale_ptr + batch)
        value = value * s
        if SQUARED:
            value = value * s
    return value


@triton.jit
def store_mirrored(out_base, value, rows_i, rows_j, on_diagonal, n_rows, stride_row, stride_col):
    """Writes the lower tile ``value`` at (rows_i, rows_j) and its transpose at (rows_j, rows_i).

    A diagonal tile is its own mirror: it is written once, as its lower triangle reflected onto the
    upper one. The fp32 products for (r, c) and (c, r) may differ in the last bit, and taking one
    of them for both makes the stored matrix exactly symmetric.
    """
    # Only bounds masks on the stores: a mask that also varies with row >= column costs the stores
    # their vectorization (measured ~1.6x slower kernels on an H100), so the diagonal is handled by
    # a branch and a register select instead.
    in_bounds = (rows_i[:, None] < n_rows) & (rows_j[None, :] < n_rows)
    tile_ptrs = out_base + rows_i[:, None] * stride_row + rows_j[None, :] * stride_col
    if on_diagonal:
        lower = rows_i[:, None] >= rows_j[None, :]
        tl.store(tile_ptrs, tl.where(lower, value, tl.trans(value)), mask=in_bounds)
    else:
        tl.store(tile_ptrs, value, mask=in_bounds)
        # Transposing the register tile (rather than storing through transposed addresses) keeps
        # the mirror write coalesced along the output's rows.
        in_bounds_mirror = (rows_j[:, None] < n_rows) & (rows_i[None, :] < n_rows)
        tl.store(
            out_base + rows_j[:, None] * stride_row + rows_i[None, :] * stride_col,
            tl.trans(value),
            mask=in_bounds_mirror,
        )


@triton.jit
def cross_tile_tma(a_desc, b_desc, batch, ti, tj, n_cols, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
                   PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``cross_tile`` with its operands loaded through TMA (``fpolar.kernels._tma``): the fp32 tile
    A[b, rows of tile ti, :] · B[b, rows of tile tj, :]ᵀ. ``a_desc`` and ``b_desc`` describe A and B
    (B, rows, cols) in (1, BLOCK, BLOCK_K) boxes; rows and columns past the edges load as zeros."""
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k0 in range(0, n_cols, BLOCK_K):
        ai = a_desc.load([batch, ti * BLOCK, k0]).reshape(BLOCK, BLOCK_K)
        bj = b_desc.load([batch, tj * BLOCK, k0]).reshape(BLOCK, BLOCK_K)
        acc = dot_fp32_acc(ai, tl.trans(bj), acc, PRECISION, UPCAST)
    return acc


@triton.jit
def gram_tile_tma(x_desc, batch, ti, tj, n_cols, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
                  PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``gram_tile`` through TMA: ``cross_tile_tma`` of X with itself."""
    return cross_tile_tma(x_desc, x_desc, batch, ti, tj, n_cols, BLOCK, BLOCK_K, PRECISION, UPCAST)


@triton.jit
def store_mirrored_tma(out_desc, value, batch, ti, tj, BLOCK: tl.constexpr):
    """``store_mirrored`` through TMA: ``out_desc`` describes the (B, m, m) output in (1, BLOCK, BLOCK)
    boxes; the parts of a box past the matrix's edges are not written."""
    if ti == tj:
        r = tl.arange(0, BLOCK)
        mirrored = tl.where(r[:, None] >= r[None, :], value, tl.trans(value))
        out_desc.store([batch, ti * BLOCK, tj * BLOCK], mirrored.reshape(1, BLOCK, BLOCK))
    else:
        out_desc.store([batch, ti * BLOCK, tj * BLOCK], value.reshape(1, BLOCK, BLOCK))
        out_desc.store([batch, tj * BLOCK, ti * BLOCK], tl.trans(value).reshape(1, BLOCK, BLOCK))
