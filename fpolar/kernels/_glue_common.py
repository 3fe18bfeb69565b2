"""Shared pieces of the step's memory-bound ops (``momentum_polar_input``, ``scaled_update_``): the
per-param matrix views, the checks of a group's tensor list and of the skip flag, the tile choice.

A shape group's params are separate tensors (each k ≥ 1 matrices of m×n), so both ops take them as
a list, with no stack copy of the grads or params. One launch covers the whole list: a small int64
table on the device holds each matrix's element offset from the list's first tensor, and the kernel
reads matrix b at ``first + offsets[b]`` (``matrix_offsets``). Where no table can be had (tensors of
mixed dtype or row/column strides; a CUDA graph being captured for addresses never seen outside one)
the launchers fall back to one launch per tensor, each on its slice of the group's (B, ·, ·) stack.
"""

from __future__ import annotations

import atexit
import sys
import threading
from collections import OrderedDict
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from ..routing import matrix_view_shape
from ._common import tl, triton

GLUE_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)


def viewable(t: torch.Tensor) -> bool:
    """Whether ``t`` has a (k, m, n) view (writes through it reach ``t``): always for 2-/3-D tensors,
    for ≥4-D ones when contiguous."""
    return t.dim() <= 3 or t.is_contiguous()


def matrix_view(t: torch.Tensor, m: int, n: int, writable: bool) -> torch.Tensor:
    """``t`` as (k, m, n): a view (required when ``writable``), else possibly a copy."""
    if t.dim() == 2:
        return t.unsqueeze(0)
    if t.dim() == 3:
        return t
    return t.view(1, m, n) if writable else t.reshape(1, m, n)


def check_matrix_list(
    name: str, tensors: Sequence[torch.Tensor], shape: Sequence[int], device: torch.device, writable: bool
) -> None:
    """Each of ``tensors`` holds m×n matrices, ``shape`` = (B, m, n), on ``device``, in a supported
    dtype, B matrices in all; ``writable`` ones must be viewable. Raises naming the entry."""
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)) or not tensors:
        raise TypeError(f"{name} must be a non-empty list of tensors, got {type(tensors).__name__}")
    batch, m, n = shape
    total = 0
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name}[{i}] must have at least 2 dims, got shape {tuple(t.shape)}")
        k, tm, tn = matrix_view_shape(t.shape)
        if (tm, tn) != (m, n):
            raise ValueError(f"{name}[{i}] of shape {tuple(t.shape)} holds {tm}×{tn} matrices, expected {m}×{n}")
        if t.dtype not in GLUE_DTYPES:
            raise TypeError(f"{name}[{i}] has dtype {t.dtype}; supported: bfloat16, float16, float32")
        if t.device != device:
            raise ValueError(f"{name}[{i}] is on {t.device}, expected {device}")
        if writable and not viewable(t):
            raise ValueError(f"{name}[{i}] of shape {tuple(t.shape)} is written in place and must be contiguous")
        total += k
    if total != batch:
        raise ValueError(f"{name} hold {total} matrices in all, expected {batch}")


def check_found(found: Optional[torch.Tensor], device: torch.device) -> None:
    """``found`` is None or a one-element bool tensor on ``device`` (the skip flag, read on the device)."""
    if found is None:
        return
    if not isinstance(found, torch.Tensor) or found.dtype != torch.bool or found.numel() != 1:
        got = f"{found.dtype} of shape {tuple(found.shape)}" if isinstance(found, torch.Tensor) else type(found).__name__
        raise ValueError(f"found must be a one-element bool tensor, got {got}")
    if found.device != device:
        raise ValueError(f"found is on {found.device}, expected {device}")


def found_pointer(found: Optional[torch.Tensor], placeholder: torch.Tensor) -> torch.Tensor:
    """The skip flag as one uint8 (Triton loads bool pointers as bytes either way), or an unused
    placeholder pointer when there is none (HAS_FOUND=False never reads it)."""
    return placeholder if found is None else found.reshape(1).view(torch.uint8)


def elementwise_tile_config(rows: int, cols: int) -> "triton.Config":
    """Tile of the elementwise glue kernels: 32 rows × 64 columns of the params' orientation,
    narrower only for matrices smaller than that; 4 warps, no pipelining. Measured by the tile sweep
    of ``benchmarks/glue.py`` (H200, torch 2.11, launchers alone over the GPT-2-small set): 32×64 /
    4 warps 0.421 ms (momentum half) and 0.312 ms (update half), against 0.445 and 0.331 for 64×64 /
    4 warps, larger tiles slower. A tall group's transposed store then writes runs of 32 elements
    (64 bytes of a 16-bit X)."""

    def side(extent: int, most: int) -> int:
        return max(16, min(most, triton.next_power_of_2(max(extent, 1))))

    return triton.Config({"BLOCK_R": side(rows, 32), "BLOCK_C": side(cols, 64)}, num_warps=4, num_stages=1)


@triton.jit
def skip_tile(found_ptr, rows_idx, cols_idx):
    """The skip flag broadcast to a (rows, cols) tile of bools. Broadcast by hand: the Triton
    interpreter (3.9) turns ``tile & scalar_bool`` into a mask dtype its store refuses."""
    zero = rows_idx[:, None] * 0 + cols_idx[None, :] * 0
    return (zero + tl.load(found_ptr).to(tl.int32)) != 0


@triton.jit
def tile_of_program(pid, tiles, tiles_c, rows, cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program ``pid`` of a flat grid of matrices × tiles (``tiles`` per matrix, ``tiles_c`` across):
    its matrix b (int64), the tile's row and column indices, and which of its elements are inside
    the rows × cols matrix."""
    b = pid // tiles
    t = pid % tiles
    r = (t // tiles_c) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = (t % tiles_c) * BLOCK_C + tl.arange(0, BLOCK_C)
    inside = (r[:, None] < rows) & (c[None, :] < cols)
    return b.to(tl.int64), r, c, inside


@triton.jit
def matrix_base(ptr, offsets_ptr, b64, stride_b, GATHER: tl.constexpr, ALIGNED: tl.constexpr):
    """Where matrix b of a launch's list starts: ``ptr + offsets[b]`` when the list is separate tensors
    read through their offsets table (``matrix_offsets``; ALIGNED: every offset a multiple of 16, told
    to the compiler so the loads stay vectorized), else ``ptr + b·stride_b`` (one tensor)."""
    if GATHER:
        off = tl.load(offsets_ptr + b64)
        if ALIGNED:
            off = tl.multiple_of(off, 16)
        base = ptr + off
    else:
        base = ptr + b64 * stride_b
    return base


class MatrixOffsets(NamedTuple):
    """A tensor list's B matrices as offsets from its first tensor, for one launch over the list.

    base: the list's first (k, m, n) view (the kernel's pointer, and its dtype); offsets: (B,) int64
    on base's device, matrix b's first element at ``base.data_ptr() + offsets[b]·itemsize``;
    stride_r, stride_c: the row and column strides every matrix shares; aligned: every offset is a
    multiple of 16 elements (the kernel may tell the compiler so, for vectorized loads and stores)."""

    base: torch.Tensor
    offsets: torch.Tensor
    stride_r: int
    stride_c: int
    aligned: bool


# Tables by (device, itemsize, the matrices' addresses): a table's content is a function of its key,
# so a hit is always right. Built eagerly (one small host-to-device copy), looked up while a CUDA
# graph is captured, where no copy can be made: a capture after a warm-up step finds its tables.
_TABLES: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
_TABLES_KEPT = 64
# Tables a captured graph reads: its replays read them at a fixed address for as long as the graph
# lives, which nothing here can see end, so they are never freed (a few bytes per matrix).
_CAPTURED_TABLES: "dict[tuple, torch.Tensor]" = {}


def capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on ``device``'s current stream (no host-to-device copy
    may be issued then)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def cudagraph_trees_pool_active(device: torch.device) -> bool:
    """Whether torch.compile's CUDA-graph trees (``mode="reduce-overhead"``) are warming up or recording
    on ``device``: then every allocation of this thread goes to the graphs' private pool, and a tensor
    from that pool that outlives the compiled call fails their check ("tensors in the cudagraph pool
    not tracked as outputs"). Read off torch's tree manager, only if torch.compile loaded it."""
    if device.type != "cuda":
        return False
    trees = sys.modules.get("torch._inductor.cudagraph_trees")
    if trees is None:
        return False
    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        manager = trees.get_manager(index, create_if_none_exists=False)
    except Exception:  # a torch without this internal: assume no pool (the old behaviour)
        return False
    return manager is not None and (manager.in_warmup or manager.in_recording)


# The tables' own memory pool per device. A table made from the ordinary pool takes a small block
# that the train loop's next small tensors (LayerNorm and bias grads) would have taken: they land
# elsewhere, and a CUDA graph that reads the grads where it captured them has to be captured again,
# whose new tables move them again. In a pool of their own the tables leave the loop's layout alone.
_TABLE_POOLS: "dict[torch.device, object]" = {}


def _in_table_pool(device: torch.device, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``make()`` with this thread's allocations on ``device`` in the tables' pool (as is on a torch
    without ``torch.cuda.MemPool``)."""
    if not hasattr(torch.cuda, "MemPool") or not hasattr(torch.cuda, "use_mem_pool"):
        return make()
    if device not in _TABLE_POOLS:
        if not _TABLE_POOLS:
            atexit.register(_free_tables_before_their_pools)
        with torch.cuda.device(device):  # a pool belongs to the device current when it is made
            _TABLE_POOLS[device] = torch.cuda.MemPool()
    with torch.cuda.use_mem_pool(_TABLE_POOLS[device], device):  # type: ignore[arg-type]
        return make()


def _free_tables_before_their_pools() -> None:
    """At exit, before the interpreter clears the modules in an order of its own: every table is freed
    while its pool still lives (a tensor freed after its MemPool is released wrongly, and can abort
    the process as it ends)."""
    _TABLES.clear()
    _CAPTURED_TABLES.clear()


def _device_table(offsets: Sequence[int], device: torch.device) -> torch.Tensor:
    """``offsets`` as an int64 tensor on ``device``, in memory the table cache may keep.

    Where the CUDA-graph trees route this thread's allocations into their pool, the table is made by a
    helper thread (the routing is per thread), with a blocking copy, so it is in the ordinary pool and
    complete when this returns (torch.compile's graphs do not follow grads by address, so the tables'
    own pool is not needed there); else a pinned, non-blocking copy queued on the current stream, in
    the tables' own pool (``_TABLE_POOLS``)."""
    host = torch.tensor(list(offsets), dtype=torch.int64)
    if device.type != "cuda":
        return host
    if not cudagraph_trees_pool_active(device):
        return _in_table_pool(device, lambda: host.pin_memory().to(device, non_blocking=True))
    made: list = []

    def make() -> None:
        try:
            with torch.cuda.device(device):
                made.append(host.to(device))
                torch.cuda.current_stream(device).synchronize()
        except BaseException as error:  # re-raised on the calling thread
            made.append(error)

    helper = threading.Thread(target=make, name="fpolar-offsets-table")
    helper.start()
    helper.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


def matrix_offsets(views: Sequence[torch.Tensor]) -> Optional[MatrixOffsets]:
    """The offsets table of ``views`` (each (k, m, n), one device), or None when one launch cannot read
    them: mixed dtypes or row/column strides, or a CUDA graph is being captured and the table for
    these addresses was not built before (see ``_TABLES``)."""
    base = views[0]
    dtype, device, itemsize = base.dtype, base.device, base.element_size()
    strides = (base.stride(1), base.stride(2))
    addresses = []
    for v in views:
        if v.dtype != dtype or (v.stride(1), v.stride(2)) != strides:
            return None
        start = v.data_ptr()
        addresses.extend(start + j * v.stride(0) * itemsize for j in range(v.shape[0]))
    first = base.data_ptr()
    if any((a - first) % itemsize for a in addresses):
        return None
    offsets = [(a - first) // itemsize for a in addresses]
    table = cached_device_table((device, itemsize, tuple(addresses)), lambda: offsets, device)
    if table is None:
        return None
    return MatrixOffsets(base, table, strides[0], strides[1], all(o % 16 == 0 for o in offsets))


def cached_device_table(key: tuple, values: Callable[[], Sequence[int]], device: torch.device) -> Optional[torch.Tensor]:
    """``values()`` as an int64 table on ``device`` from the cache (``_TABLES``; ``key`` must determine
    the values, so a hit is always right), built and cached on a miss; None while a CUDA graph is
    captured and no table was built for ``key`` before (a capture cannot copy one to the device). A
    table a capture reads moves to ``_CAPTURED_TABLES`` for good. Every one-launch table (the glue
    ops' offsets, the max-abs chunks) goes through here: one eviction order, one clean-up at exit."""
    table = _CAPTURED_TABLES.get(key)
    if table is not None:
        return table
    table = _TABLES.get(key)
    if capturing(device):
        if table is None:
            return None
        _CAPTURED_TABLES[key] = _TABLES.pop(key)
        return table
    if table is None:
        table = _device_table(values(), device)
        _TABLES[key] = table
        while len(_TABLES) > _TABLES_KEPT:
            _TABLES.popitem(last=False)
    else:
        _TABLES.move_to_end(key)
    if device.type == "cuda":
        # The table may be read on another stream than the one it was made on; if the LRU drops it,
        # the allocator must not hand its memory out before this stream's kernels have read it.
        table.record_stream(torch.cuda.current_stream(device))
    return table


def clear_matrix_offsets() -> None:
    """Forgets the eager tables (not those a captured graph reads)."""
    _TABLES.clear()
