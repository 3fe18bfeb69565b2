"""``fpolar::batched_inner``: ⟨O_b, X_b⟩_F = Σ_ij O_bij·X_bij for every matrix of a batch, in fp32.

PolarGrad's nuclear scale s_b = ⟨O_b, X_b⟩ (≈ ‖X_b‖_*), one number per matrix. Its memory floor is one
read of O and X; the torch expression (upcast copy of a bf16 operand, an fp32 product tensor, a sum)
moves about four times that. The kernel reads each operand once, multiplies in fp32 and sums.

Deterministic, without atomics, in two launches:
  1. partials[b, c] = Σ over chunk c of matrix b (a fixed run of TILES_PER_CHUNK tiles, row-major over
     the matrix's BLOCK_R × BLOCK_C tiles), summed in fp32 in registers;
  2. out[b] = Σ_c partials[b, c] in one program per matrix, in a fixed order
     (skipped when a matrix is one chunk: step 1 writes ``out`` directly).
The chunking depends only on the shape and the config (never on the device's SM count), so the same
inputs give the same bits on every run.

O and X may have any strides, each its own (a tall group's O is the transpose view of the wide polar
factor while X is the tall momentum): every tile is loaded through both operands' strides, and
Triton's layout for each load follows that operand's unit-stride axis, so both are read coalesced.
"""

from __future__ import annotations

import torch

from ._common import check_batched_matrix, check_int32_addressable, launch_options, require_triton, tl, triton
from ..inductor_fallbacks import register_before_lowering

__all__ = ["batched_inner", "batched_inner_reference", "launch_batched_inner", "inner_tile_config"]


def batched_inner_reference(o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """⟨O_b, X_b⟩_F in torch: (B, m, n) × (B, m, n) → (B,) in the promoted dtype, at least float32.

    One operand in the accumulation dtype is enough: the product promotes the other on the fly
    (exactly, the accumulation dtype being at least as wide), without an upcast copy of it.
    """
    acc = torch.promote_types(torch.promote_types(o.dtype, x.dtype), torch.float32)
    a, b = (o, x) if x.dtype == acc else (x, o) if o.dtype == acc else (o.to(acc), x)
    return torch.mul(a, b).sum(dim=(-2, -1), dtype=acc)


def inner_tile_config(rows: int, cols: int) -> "triton.Config":
    """Tile (BLOCK_R × BLOCK_C) and chunk length (TILES_PER_CHUNK tiles) for an m×n matrix.

    Square 64×64 tiles where the matrix allows: a transposed operand is then still read in 128-byte
    (bf16) runs along its unit-stride axis. A side smaller than 64 gets the next power of two (≥ 16)
    instead of masked lanes. 8 tiles a chunk: 32 Ki elements of each operand a program, so a
    GPT-2-small group (12 × 768×768 … 768×3072) is 216 … 864 programs, several per SM.
    """

    def side(extent: int) -> int:
        return min(64, max(16, triton.next_power_of_2(max(extent, 1))))

    return triton.Config({"BLOCK_R": side(rows), "BLOCK_C": side(cols), "TILES_PER_CHUNK": 8}, num_warps=4, num_stages=1)


@triton.jit
def _inner_partials_kernel(
    o_ptr,
    x_ptr,
    part_ptr,
    rows,
    cols,
    stride_ob,
    stride_or,
    stride_oc,
    stride_xb,
    stride_xr,
    stride_xc,
    tiles_c,
    chunks,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    TILES_PER_CHUNK: tl.constexpr,
):
    pid = tl.program_id(0)
    b64 = (pid // chunks).to(tl.int64)  # batch · stride can pass 2**31 elements
    first = (pid % chunks) * TILES_PER_CHUNK
    o_base = o_ptr + b64 * stride_ob
    x_base = x_ptr + b64 * stride_xb
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for i in range(TILES_PER_CHUNK):
        t = first + i
        # a tile past the matrix's last one has r ≥ rows: fully masked, adds 0
        r = (t // tiles_c) * BLOCK_R + tl.arange(0, BLOCK_R)
        c = (t % tiles_c) * BLOCK_C + tl.arange(0, BLOCK_C)
        inside = (r[:, None] < rows) & (c[None, :] < cols)
        o = tl.load(o_base + r[:, None] * stride_or + c[None, :] * stride_oc, mask=inside, other=0.0)
        x = tl.load(x_base + r[:, None] * stride_xr + c[None, :] * stride_xc, mask=inside, other=0.0)
        acc += o.to(tl.float32) * x.to(tl.float32)
    tl.store(part_ptr + pid, tl.sum(tl.sum(acc, axis=1), axis=0))


@triton.jit
def _sum_partials_kernel(part_ptr, out_ptr, chunks, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    base = part_ptr + b.to(tl.int64) * chunks
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, chunks, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        acc += tl.load(base + idx, mask=idx < chunks, other=0.0)
    tl.store(out_ptr + b, tl.sum(acc, axis=0))


def launch_batched_inner(
    o: torch.Tensor, x: torch.Tensor, out: torch.Tensor, config: "triton.Config | None" = None
) -> torch.Tensor:
    """Runs the Triton kernels: out[b] = ⟨o[b], x[b]⟩_F, fp32, deterministic (module docstring).

    o, x: (B, m, n), any strides each, bf16/fp16/fp32 each; out: (B,) fp32, written in full.
    ``config`` overrides ``inner_tile_config`` (kwargs BLOCK_R, BLOCK_C, TILES_PER_CHUNK). CUDA
    tensors, or CPU tensors under TRITON_INTERPRET=1.
    """
    require_triton()
    batch, rows, cols = o.shape
    if out.shape != (batch,) or out.dtype != torch.float32:
        raise ValueError(f"out must be a ({batch},) float32 tensor, got {tuple(out.shape)} {out.dtype}")
    check_int32_addressable("o", o)
    check_int32_addressable("x", x)
    if batch == 0:
        return out
    if rows == 0 or cols == 0:  # an empty sum; also keeps a null data pointer away from the kernel
        return out.zero_()
    config = config or inner_tile_config(rows, cols)
    block_r, block_c, per_chunk = (config.kwargs[k] for k in ("BLOCK_R", "BLOCK_C", "TILES_PER_CHUNK"))
    tiles_c = triton.cdiv(cols, block_c)
    chunks = triton.cdiv(triton.cdiv(rows, block_r) * tiles_c, per_chunk)
    partials = out if chunks == 1 else torch.empty((batch, chunks), dtype=torch.float32, device=out.device)
    _inner_partials_kernel[(batch * chunks,)](
        o, x, partials, rows, cols, *o.stride(), *x.stride(), tiles_c, chunks, **launch_options(config)
    )
    if chunks > 1:
        block = min(1024, triton.next_power_of_2(chunks))
        _sum_partials_kernel[(batch,)](partials, out, chunks, BLOCK=block, num_warps=4 if block >= 512 else 1)
    return out


def _check(o: torch.Tensor, x: torch.Tensor) -> None:
    check_batched_matrix("o", o)
    check_batched_matrix("x", x)
    if o.shape != x.shape:
        raise ValueError(f"o and x must have the same shape, got o {tuple(o.shape)} and x {tuple(x.shape)}")
    if o.device != x.device:
        raise ValueError(f"o is on {o.device} and x on {x.device}; expected one device")


@torch.library.custom_op("fpolar::batched_inner", mutates_args=())
def batched_inner(o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """⟨O_b, X_b⟩_F for each matrix of the batch: o, x (B, m, n), any strides, each bf16, fp16 or fp32,
    on one device → (B,) float32, products and sums in fp32. Nothing is mutated.

    This body is the implementation for devices without a kernel (CPU): the torch twin.
    """
    _check(o, x)
    return batched_inner_reference(o, x)


@batched_inner.register_kernel("cuda")
def _batched_inner_cuda(o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    _check(o, x)
    out = torch.empty((o.shape[0],), dtype=torch.float32, device=o.device)
    return launch_batched_inner(o, x, out)


@batched_inner.register_fake
def _batched_inner_fake(o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    register_before_lowering(torch.ops.fpolar.batched_inner.default)  # see fpolar/inductor_fallbacks.py
    _check(o, x)
    return o.new_empty((o.shape[0],), dtype=torch.float32)

