"""Where each matrix of a parameter lives: on which rank, which rows, at which local offset.

A parameter is seen as a stack of matrices (``fpolar.routing.matrix_view_shape``): (k, m, n). Under
FSDP2 / DTensor ``Shard(0)`` each rank holds a block of dim 0 cut by ``torch.chunk``'s rule (blocks
of ⌈size/W⌉, the last ones shorter or empty). For a 2-D or ≥4-D parameter dim 0 is the matrix's
rows, so every rank holds a row block of the one matrix; for a 3-D stack dim 0 is the stack, so every
rank holds whole matrices. A fused parameter (several matrices along dim 0, e.g. QKV) is cut into its
parts first; each part's rows on a rank are the intersection of the part with the rank's block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple


def chunk_spans(size: int, world_size: int) -> Tuple[Tuple[int, int], ...]:
    """(start, length) of each rank's block when ``size`` rows are cut by ``torch.chunk`` into W parts.

    ``torch.chunk`` makes blocks of ⌈size/W⌉; trailing ranks get a shorter block or none (length 0),
    which is what DTensor ``Shard(0)`` and FSDP2 hold.
    """
    block = -(-size // world_size) if size else 0
    spans = []
    for r in range(world_size):
        start = min(size, r * block)
        spans.append((start, max(0, min(size, start + block) - start)))
    return tuple(spans)


@dataclass(frozen=True)
class MatrixRef:
    """One matrix, as this rank holds it.

    Attributes:
        param: index into the params list.
        stack: index of the matrix in the parameter's local (k, rows, n) matrix view (0 unless 3-D).
        local_start, local_rows: this rank's rows of the matrix in that view (local_rows may be 0).
        spans: for a row-sharded matrix, (start, length) of every rank's rows within the matrix;
            () when this rank holds the matrix whole.
    """

    param: int
    stack: int
    local_start: int
    local_rows: int
    spans: Tuple[Tuple[int, int], ...] = ()


def intersect(span: Tuple[int, int], lo: int, hi: int) -> Tuple[int, int]:
    """The part of rows [span.start, span.start + span.length) inside [lo, hi), as (start − lo, length)."""
    a, b = max(span[0], lo), min(span[0] + span[1], hi)
    return (a - lo, max(0, b - a)) if b > a else (0, 0)


def row_sharded_parts(
    param: int, rows: int, parts: Optional[Sequence[int]], world_size: int, rank: int
) -> List[MatrixRef]:
    """The matrices of a parameter whose ``rows`` (dim 0) are ``torch.chunk``-sharded over ranks.

    ``parts``: row counts of the fused matrices along dim 0 (summing to ``rows``), or None for one
    matrix. Each part's rows on rank r are its intersection with r's block.
    """
    blocks = chunk_spans(rows, world_size)
    sizes = list(parts) if parts is not None else [rows]
    refs, lo = [], 0
    for size in sizes:
        hi = lo + size
        spans = tuple(intersect(b, lo, hi) for b in blocks)
        # The rank's rows of this part, as an offset into the rank's own block.
        mine_start = max(lo, blocks[rank][0])
        local_start = mine_start - blocks[rank][0] if spans[rank][1] else 0
        refs.append(MatrixRef(param, 0, local_start, spans[rank][1], spans))
        lo = hi
    return refs


def whole_parts(param: int, stack: int, rows: int, parts: Optional[Sequence[int]]) -> List[MatrixRef]:
    """The matrices of one locally whole (k-th) matrix view of a parameter, cut into ``parts``."""
    sizes = list(parts) if parts is not None else [rows]
    refs, lo = [], 0
    for size in sizes:
        refs.append(MatrixRef(param, stack, lo, size))
        lo += size
    return refs
