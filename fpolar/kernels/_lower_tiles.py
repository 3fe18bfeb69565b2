"""Triton building blocks for symmetric outputs computed from their lower-triangle tiles only.

A symmetric (m, m) result split into square BLOCK×BLOCK tiles has T(T+1)/2 tiles on or below the
diagonal (T = ceil(m / BLOCK)). One program computes one such tile and writes it twice: in place and
mirrored across the diagonal. That is half the products of the full matrix for the same bytes out.
"""

from __future__ import annotations

from ._common import tl, triton

__all__ = ["lower_tile_count", "lower_tile_coords", "gram_tile", "store_mirrored"]


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
):
    """fp32 tile X[rows_i, :] · X[rows_j, :]ᵀ of shape (BLOCK, BLOCK).

    Rows past ``n_rows`` and columns past ``n_cols`` load as zeros, so they add nothing and the
    out-of-range part of the tile is zero (the row sums of aol_gram rely on that).
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
        acc = tl.dot(xi, tl.trans(xj), acc, input_precision=PRECISION)
        ptr_i += BLOCK_K * stride_col
        ptr_j += BLOCK_K * stride_col
    return acc


@triton.jit
def store_mirrored(
    out_base,
    value,
    rows_i,
    rows_j,
    off_diagonal,
    n_rows,
    stride_row,
    stride_col,
    BLOCK: tl.constexpr,
):
    """Writes the lower tile ``value`` at (rows_i, rows_j) and its transpose at (rows_j, rows_i).

    On a diagonal tile both writes take only the tile's lower triangle (r >= c): the fp32 products
    for (r, c) and (c, r) may differ in the last bit, and taking one of them for both makes the
    stored matrix exactly symmetric.
    """
    r = tl.arange(0, BLOCK)
    keep = (r[:, None] >= r[None, :]) | off_diagonal
    keep_mirror = (r[None, :] >= r[:, None]) | off_diagonal
    in_bounds = (rows_i[:, None] < n_rows) & (rows_j[None, :] < n_rows)
    in_bounds_mirror = (rows_j[:, None] < n_rows) & (rows_i[None, :] < n_rows)
    tl.store(
        out_base + rows_i[:, None] * stride_row + rows_j[None, :] * stride_col,
        value,
        mask=in_bounds & keep,
    )
    # Transposing the register tile (instead of storing through transposed addresses) keeps the
    # mirror write coalesced along the output's rows.
    tl.store(
        out_base + rows_j[:, None] * stride_row + rows_i[None, :] * stride_col,
        tl.trans(value),
        mask=in_bounds_mirror & keep_mirror,
    )
