"""``fpolar::max_abs``: max |t| over every element of a list of tensors, in one pass over them.

The non-finite skip (``fpolar.nonfinite``) asks one question of all the grads of a step: does any
element hold NaN or ±inf? It asks it as max |g| (no squares, so large finite grads do not overflow).
The torch twin is one multi-tensor ``_foreach_norm(ord=inf)``, a stack and a reduce: several launches,
119 µs for 85 M fp32 elements (340 MB) on the H200, 2.9 TB/s against the 4.3 TB/s of one read.

The kernel compares bit patterns, not floats. With the sign bit cleared, an IEEE float's bits read as
an integer order |x| exactly: every finite value below +inf (0x7f80_0000 in fp32, 0x7f80 in bf16,
0x7c00 in fp16), +inf below every NaN. So the integer max of ``bits(x) & 0x7fff…`` is max|x|, bitwise,
when everything is finite; +inf when an element is ±inf and none is NaN; a NaN when any element is
NaN. No float max is taken: Triton's ``maximum`` and ``tl.max`` drop NaN on the GPU unless asked
(``propagate_nan``) while the interpreter's keep it; an integer max means one thing on both, and is
exact and order-free: the same bits every run.

Deterministic, without atomics, in two launches:
  1. program p reads chunk p, a run of CHUNK = BLOCK·BLOCKS_PER_CHUNK elements (or a tensor's shorter
     last run) of one tensor, and writes the max of its bits to partials[p], an integer as wide as
     the dtype (full chunks load unmasked, so their loads stay vectorized);
  2. one program takes the max of the partials and writes it into the 0-d result's bits
     (skipped when there is one chunk: step 1 writes the result).
The tensors are separate allocations. One launch reads them all through a small int64 table on the
device, (start, length) per chunk, start counted in elements from the first tensor's first element
(negative for a tensor allocated below it: int64 pointer arithmetic). Like the glue ops' tables
(``_glue_common.matrix_offsets``; both go through ``_glue_common.cached_device_table``) it is built
eagerly, cached by the tensors' addresses, and only looked up while a CUDA graph is captured
(``build_max_abs_table`` before a capture); with no table there, or for non-contiguous tensors or
another dtype, the op runs its twin.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

import torch

from ._common import HAS_TRITON, SUPPORTED_DTYPES, launch_options, require_triton, tl, triton
from . import _glue_common as glue  # its table cache, read at call time (one cache, one clean-up at exit)
from ..inductor_fallbacks import register_before_lowering

__all__ = [
    "MaxAbsTable",
    "build_max_abs_table",
    "launch_max_abs",
    "max_abs",
    "max_abs_config",
    "max_abs_kernel_applies",
    "max_abs_on_cuda",
    "max_abs_reference",
    "max_abs_table",
]

# The integer holding a dtype's bits, and the mask that clears its sign bit.
_BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
_ABS_MASK = {torch.int32: 0x7FFFFFFF, torch.int16: 0x7FFF}


def max_abs_reference(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The op's math in torch: one multi-tensor max-abs (``_foreach_norm`` with ord=inf), one stack,
    one reduce. Any strides, any floating dtype; NaN propagates through both reductions."""
    return torch.stack(torch._foreach_norm(list(tensors), ord=float("inf"))).amax()


def max_abs_config(dtype: torch.dtype) -> "triton.Config":
    """BLOCK (elements a program loads at once) and BLOCKS_PER_CHUNK (loads a program makes) for
    ``dtype``, the same for the three: 4096 × 4 with 8 warps, 16 elements a thread per load, a chunk of 16 Ki elements (64 KiB
    of fp32, 32 KiB of bf16): about 5.2 Ki programs for 85 M elements, several per SM at a time.
    In the captured GPT-2-small Muon step (H200, ``benchmarks/polar_step.py --parts graphprofile``) it
    reads the 340 MB of fp32 grads in 83 µs (4.1 TB/s), against 119 µs for the twin's launches. The
    tile was picked by a one-off sweep on the H200 whose script is not kept: 4 warps with 2048 (fp32)
    or 4096 (bf16) elements a load were about 2 % slower, 1024 × 4 with 4 warps 8–10 %, 8192 × 4 with
    8 warps 30 % in bf16; read those as indications, not reproducible figures."""
    return triton.Config({"BLOCK": 4096, "BLOCKS_PER_CHUNK": 4}, num_warps=8, num_stages=1)


class MaxAbsTable(NamedTuple):
    """A tensor list's chunks for one launch: base, the list's first tensor (the kernel's pointer);
    chunks, (P, 2) int64 on its device, row p = (first element of chunk p counted from base's, its
    length ≤ chunk); chunk, the elements of a full chunk; aligned: every start a multiple of 16."""

    base: torch.Tensor
    chunks: torch.Tensor
    chunk: int
    aligned: bool


def _chunk_rows(starts: Sequence[int], numels: Sequence[int], chunk: int) -> List[int]:
    """(start, length) of every chunk of every tensor, flattened: tensor by tensor, in order."""
    rows: List[int] = []
    for start, numel in zip(starts, numels):
        for first in range(0, numel, chunk):
            rows += (start + first, min(chunk, numel - first))
    return rows


def max_abs_table(tensors: Sequence[torch.Tensor], chunk: int) -> Optional[MaxAbsTable]:
    """The chunk table of ``tensors`` (contiguous, one device and dtype, none empty) for chunks of
    ``chunk`` elements, or None where one launch cannot read them: an address that is not a whole
    number of elements from the first tensor's, or a CUDA graph being captured and no table built
    for these addresses before."""
    base = tensors[0]
    itemsize, device, first = base.element_size(), base.device, base.data_ptr()
    spans = tuple((t.data_ptr(), t.numel()) for t in tensors)
    if any((address - first) % itemsize for address, _ in spans):
        return None
    starts = [(address - first) // itemsize for address, _ in spans]
    numels = [n for _, n in spans]
    key = ("max_abs", device, itemsize, chunk, spans)
    chunks = glue.cached_device_table(key, lambda: _chunk_rows(starts, numels, chunk), device)
    if chunks is None:
        return None
    return MaxAbsTable(base, chunks.view(-1, 2), chunk, all(s % 16 == 0 for s in starts))


def max_abs_kernel_applies(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether the kernel can read ``tensors`` (a list that passed the op's checks): CUDA, bf16 / fp16 /
    fp32, every tensor contiguous, triton installed. Metadata only."""
    first = tensors[0]
    return (
        HAS_TRITON
        and first.is_cuda
        and first.dtype in SUPPORTED_DTYPES
        and all(t.is_contiguous() for t in tensors)
    )


def _chunk_of(config: "triton.Config") -> int:
    block, per_chunk = config.kwargs["BLOCK"], config.kwargs["BLOCKS_PER_CHUNK"]
    if block < 16 or block & (block - 1) or per_chunk < 1:
        raise ValueError(f"config needs BLOCK a power of 2 ≥ 16 and BLOCKS_PER_CHUNK ≥ 1, got {config.kwargs}")
    return block * per_chunk


def build_max_abs_table(tensors: Sequence[torch.Tensor]) -> None:
    """Builds now, eagerly, the table the op will look up for ``tensors`` (a list that passed its
    checks), where the kernel applies. Call it before capturing the op in a CUDA graph."""
    if max_abs_kernel_applies(tensors):
        max_abs_table(tensors, _chunk_of(max_abs_config(tensors[0].dtype)))


@triton.jit
def _abs_bits(x, part_ty: tl.constexpr, ABS_MASK: tl.constexpr):
    """|x|'s bits as int32: x's bits as ``part_ty`` (as wide as x), sign-extended, sign bit cleared."""
    return x.to(part_ty, bitcast=True).to(tl.int32) & ABS_MASK


@triton.jit
def _max_abs_bits_kernel(
    base_ptr,
    chunks_ptr,
    part_ptr,
    ABS_MASK: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCKS_PER_CHUNK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    start = tl.load(chunks_ptr + 2 * pid)  # int64, negative for a tensor below the first one
    length = tl.load(chunks_ptr + 2 * pid + 1)
    if ALIGNED:
        start = tl.multiple_of(start, 16)
    ptr = base_ptr + start
    lanes = tl.arange(0, BLOCK)
    part_ty = part_ptr.dtype.element_ty
    # Every value is ≥ 0 as an integer: the masked lanes' 0 (the bits of +0) changes no max.
    peak = tl.zeros([BLOCK], dtype=tl.int32)
    if length == BLOCK * BLOCKS_PER_CHUNK:
        # A full chunk: no mask, so the loads keep their 16-byte vectors (a mask from a loaded length
        # has no alignment the compiler could know).
        for i in tl.static_range(BLOCKS_PER_CHUNK):
            x = tl.load(ptr + i * BLOCK + lanes)
            peak = tl.maximum(peak, _abs_bits(x, part_ty, ABS_MASK))
    else:
        for i in tl.static_range(BLOCKS_PER_CHUNK):
            idx = i * BLOCK + lanes
            x = tl.load(ptr + idx, mask=idx < length, other=0.0)
            peak = tl.maximum(peak, _abs_bits(x, part_ty, ABS_MASK))
    tl.store(part_ptr + pid, tl.max(peak, axis=0).to(part_ty))


@triton.jit
def _max_partials_kernel(part_ptr, out_ptr, parts, BLOCK: tl.constexpr):
    peak = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(0, parts, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        peak = tl.maximum(peak, tl.load(part_ptr + idx, mask=idx < parts, other=0).to(tl.int32))
    tl.store(out_ptr, tl.max(peak, axis=0).to(out_ptr.dtype.element_ty))


def launch_max_abs(
    tensors: Sequence[torch.Tensor],
    out: torch.Tensor,
    config: "triton.Config | None" = None,
    table: Optional[MaxAbsTable] = None,
) -> torch.Tensor:
    """Runs the Triton kernels: out ← max|t| over every element of ``tensors`` (module docstring).

    tensors: a non-empty list of non-empty contiguous tensors of one dtype (bf16/fp16/fp32) and one
    device, CUDA, or CPU under TRITON_INTERPRET=1; out: 0-d of that dtype and device, written in full.
    ``config`` overrides ``max_abs_config`` (kwargs BLOCK, BLOCKS_PER_CHUNK); ``table``, a
    ``max_abs_table`` of ``tensors`` for that config's chunk, saves the lookup. Raises ValueError when
    no table can be had (see ``max_abs_table``): the op runs its twin then.
    """
    require_triton()
    check_max_abs(tensors)
    first = tensors[0]
    if first.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"launch_max_abs: tensors have dtype {first.dtype}; supported: bfloat16, float16, "
                        "float32")
    for i, t in enumerate(tensors):
        if not t.is_contiguous():
            raise ValueError(f"launch_max_abs: tensors[{i}] of shape {tuple(t.shape)} is not contiguous "
                             f"(strides {t.stride()})")
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if out.shape != () or out.dtype != first.dtype or out.device != first.device:
        got = f"{out.dtype} of shape {tuple(out.shape)} on {out.device}"
        raise ValueError(f"out must be a 0-d {first.dtype} tensor on {first.device}, got {got}")
    config = config or max_abs_config(first.dtype)
    chunk = _chunk_of(config)
    if table is None:
        table = max_abs_table(tensors, chunk)
    if table is None:
        raise ValueError("launch_max_abs: the tensors have no chunk table (an address not a whole number of "
                         "elements from the first tensor's, or a CUDA graph is being captured before any "
                         "eager call on these tensors)")
    if table.chunk != chunk or table.base.data_ptr() != first.data_ptr():
        raise ValueError(f"table is for chunks of {table.chunk} elements from another base; expected {chunk}")
    return _launch(out, config, table)


def _launch(out: torch.Tensor, config: "triton.Config", table: MaxAbsTable) -> torch.Tensor:
    """``launch_max_abs`` past its checks."""
    bits = _BITS[out.dtype]
    result = out.view(bits)
    parts = table.chunks.shape[0]
    partials = result.reshape(1) if parts == 1 else torch.empty((parts,), dtype=bits, device=out.device)
    _max_abs_bits_kernel[(parts,)](
        table.base, table.chunks, partials, ABS_MASK=_ABS_MASK[bits], ALIGNED=table.aligned,
        **launch_options(config),
    )
    if parts > 1:
        block = min(4096, triton.next_power_of_2(parts))
        _max_partials_kernel[(1,)](partials, result, parts, BLOCK=block, num_warps=4 if block >= 512 else 1)
    return out


def max_abs_on_cuda(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The op's CUDA implementation (for a list that passed its checks): the kernel where it applies
    and a table can be had, else the twin (a capture of tensors never seen eagerly, non-contiguous
    tensors, float64)."""
    if max_abs_kernel_applies(tensors):
        config = max_abs_config(tensors[0].dtype)
        table = max_abs_table(tensors, _chunk_of(config))
        if table is not None:
            return _launch(tensors[0].new_empty(()), config, table)
    return max_abs_reference(tensors)


def check_max_abs(tensors: Sequence[torch.Tensor]) -> None:
    """A non-empty list of non-empty floating tensors of one device and one dtype; raises naming the
    first bad entry."""
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)) or not tensors:
        raise ValueError("max_abs takes a non-empty list of tensors")
    first = tensors[0]
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"max_abs: tensors[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"max_abs: tensors[{i}] has dtype {t.dtype}; a floating dtype is required")
        if t.dtype != first.dtype or t.device != first.device:
            raise ValueError(
                f"max_abs: tensors[{i}] is {t.dtype} on {t.device}, tensors[0] is {first.dtype} on {first.device}"
            )
        if t.numel() == 0:
            raise ValueError(f"max_abs: tensors[{i}] is empty (a max over nothing has no value)")


@torch.library.custom_op("fpolar::max_abs", mutates_args=())
def max_abs(tensors: List[torch.Tensor]) -> torch.Tensor:
    """max |t| over every element of ``tensors``: a 0-d tensor in their dtype on their device, NaN if any
    element is NaN, +inf if one is ±inf (else finite: no squares, so no overflow). Nothing is mutated.

    Args:
        tensors: a non-empty list of non-empty floating tensors of one device and one dtype, any shapes.

    Why an op: under torch.compile the per-tensor ``abs().amax()`` is one reduction kernel per tensor
    (one launch per grad, 48 on GPT-2-small's matrices), and Inductor's lowering of the multi-tensor
    ``_foreach_norm`` asserts on CUDA (torch < 2.13) once a foreach node fuses with a neighbour (see
    ``fpolar.tensor_lists``). Opaque to Inductor, the op runs its own kernel (CUDA: ``max_abs_on_cuda``,
    the one-launch kernel or the twin) inside the compiled graph (and inside its CUDA graph).

    This body is the implementation for devices without a kernel (CPU): the torch twin.
    """
    check_max_abs(tensors)
    return max_abs_reference(tensors)


@max_abs.register_kernel("cuda")
def _max_abs_cuda(tensors: List[torch.Tensor]) -> torch.Tensor:
    check_max_abs(tensors)
    return max_abs_on_cuda(tensors)


@max_abs.register_fake
def _max_abs_fake(tensors: List[torch.Tensor]) -> torch.Tensor:
    register_before_lowering(torch.ops.fpolar.max_abs.default)  # see fpolar/inductor_fallbacks.py
    check_max_abs(tensors)
    return tensors[0].new_empty(())
