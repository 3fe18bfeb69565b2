"""``fpolar::scaled_update_``: W ← decay·W − s·O for a shape group's params, in one pass.

O is the group's polar factor as the polar step returns it: (B, m, n), or (B, n, m) for a tall group
(iterated on its wide side), in the polar dtype. s is the step size lr·scale·extra, one per matrix
(B,) or one for the group, and decay the weight-decay factor; both are device tensors so a schedule
never recompiles. The update is computed in fp32 and rounded once to the param dtype (the torch glue
rounds s·O, decay·W and their difference separately). With ``found`` (0-d bool on the device, the
non-finite skip) True, no param is written: every bit stays.

Why one pass: the torch glue upcasts O (a read and an fp32 write), multiplies by s (another pass),
casts and makes it contiguous (a copy for tall groups), scales W and subtracts (two read-modify-
writes of W). The kernel reads O once (a tall group's tile is transposed in registers) and W once,
and writes W once.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from ..routing import matrix_view_shape
from ._common import launch_options, require_triton, tl, triton
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

__all__ = ["scaled_update_", "scaled_update_reference", "launch_scaled_update"]


def _factor_slice(o: torch.Tensor, m: int, n: int, off: int, k: int) -> torch.Tensor:
    """Matrices off … off+k of O in the params' (m, n) orientation (a view)."""
    part = o[off : off + k]
    return part.mT if (part.shape[-2], part.shape[-1]) != (m, n) else part


def scaled_update_reference(
    params: List[torch.Tensor],
    o: torch.Tensor,
    step: torch.Tensor,
    decay: torch.Tensor,
    found: Optional[torch.Tensor] = None,
) -> None:
    """The op's math in torch: per param, W ← round(decay·W − s·O) from fp32, kept where ``found``."""
    _, m, n = _param_shape(params[0])
    off = 0
    for p in params:
        pv = matrix_view(p, m, n, writable=True)
        k = pv.shape[0]
        s = step.float().reshape(-1)
        s = s[off : off + k, None, None] if s.numel() > 1 else s.reshape(())
        new = (decay.float() * pv.float() - s * _factor_slice(o, m, n, off, k).float()).to(p.dtype)
        if found is not None:
            new = torch.where(found.reshape(()), pv, new)
        pv.copy_(new)
        off += k


def _param_shape(p: torch.Tensor) -> tuple[int, int, int]:
    return matrix_view_shape(p.shape)


@triton.jit
def _scaled_update_kernel(
    w_ptr,
    w_offsets_ptr,
    o_ptr,
    step_ptr,
    decay_ptr,
    found_ptr,
    rows,
    cols,
    stride_wb,
    stride_wr,
    stride_wc,
    stride_ob,
    stride_or,
    stride_oc,
    tiles_c,
    tiles,
    STEP_PER_MATRIX: tl.constexpr,
    HAS_FOUND: tl.constexpr,
    TRANSPOSE: tl.constexpr,
    GATHER: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b64, r, c, inside = tile_of_program(tl.program_id(0), tiles, tiles_c, rows, cols, BLOCK_R, BLOCK_C)
    o_base = o_ptr + b64 * stride_ob
    if TRANSPOSE:
        # O is stored (cols, rows): load the tile along O's rows, transpose it in registers.
        inside_t = (c[:, None] < cols) & (r[None, :] < rows)
        o_t = tl.load(o_base + c[:, None] * stride_or + r[None, :] * stride_oc, mask=inside_t, other=0.0)
        o = tl.trans(o_t)
    else:
        o = tl.load(o_base + r[:, None] * stride_or + c[None, :] * stride_oc, mask=inside, other=0.0)
    # GATHER: the params are separate tensors, read through their offsets table
    w_base = matrix_base(w_ptr, w_offsets_ptr, b64, stride_wb, GATHER, ALIGNED)
    w_ptrs = w_base + r[:, None] * stride_wr + c[None, :] * stride_wc
    w = tl.load(w_ptrs, mask=inside, other=0.0)
    if STEP_PER_MATRIX:
        s = tl.load(step_ptr + b64)
    else:
        s = tl.load(step_ptr)
    decay = tl.load(decay_ptr)
    new = decay * w.to(tl.float32) - s * o.to(tl.float32)
    keep = inside
    if HAS_FOUND:
        keep = inside & ~skip_tile(found_ptr, r, c)
    tl.store(w_ptrs, new.to(w_ptr.dtype.element_ty), mask=keep)


def launch_scaled_update(
    params: List[torch.Tensor],
    o: torch.Tensor,
    step: torch.Tensor,
    decay: torch.Tensor,
    found: Optional[torch.Tensor] = None,
    config: Optional[triton.Config] = None,
    single_launch: Optional[bool] = None,
) -> None:
    """Runs the Triton kernel: W ← decay·W − s·O in place. ``step``: (B,) or one element, fp32;
    ``decay``: one element, fp32. CUDA tensors, or CPU tensors under TRITON_INTERPRET=1. ``config``
    overrides the tile (kwargs BLOCK_R, BLOCK_C).

    One launch for all the params when ``matrix_offsets`` gives their table, else one per param;
    ``single_launch`` True requires the one launch (ValueError if it cannot be had), False forces
    one per param, None (default) chooses."""
    require_triton()
    batch, rows, cols = o.shape[0], *_param_shape(params[0])[1:]
    transpose = (o.shape[-2], o.shape[-1]) != (rows, cols)
    config = config or elementwise_tile_config(rows, cols)
    block_r, block_c = config.kwargs["BLOCK_R"], config.kwargs["BLOCK_C"]
    tiles_c = triton.cdiv(cols, block_c)
    tiles = triton.cdiv(rows, block_r) * tiles_c
    per_matrix = step.numel() > 1
    step_f = step.reshape(-1).float()
    decay_f = decay.reshape(1).float()
    found_arg = found_pointer(found, decay_f)
    if rows * cols == 0 or batch == 0:
        return
    views = [matrix_view(p, rows, cols, writable=True) for p in params]
    table = None if single_launch is False else matrix_offsets(views)
    if table is None and single_launch:
        raise ValueError("single_launch=True, but the params have no offsets table (mixed dtypes or strides, or a "
                         "CUDA graph is being captured before any eager call on these tensors)")
    common = dict(
        STEP_PER_MATRIX=per_matrix, HAS_FOUND=found is not None, TRANSPOSE=transpose, **launch_options(config)
    )
    if table is not None:
        _scaled_update_kernel[(batch * tiles,)](
            table.base, table.offsets, o, step_f, decay_f, found_arg, rows, cols,
            0, table.stride_r, table.stride_c, *o.stride(), tiles_c, tiles,
            GATHER=True, ALIGNED=table.aligned, **common,
        )
        return
    off = 0
    for w in views:
        k = w.shape[0]
        if k == 0:
            continue
        _scaled_update_kernel[(k * tiles,)](
            w, decay_f, o[off : off + k], step_f[off : off + k] if per_matrix else step_f, decay_f, found_arg,
            rows, cols, *w.stride(), *o.stride(), tiles_c, tiles, GATHER=False, ALIGNED=False, **common,
        )
        off += k


def _check(
    params: List[torch.Tensor],
    o: torch.Tensor,
    step: torch.Tensor,
    decay: torch.Tensor,
    found: Optional[torch.Tensor],
) -> None:
    if not isinstance(o, torch.Tensor) or o.dim() != 3:
        got = f"shape {tuple(o.shape)}" if isinstance(o, torch.Tensor) else type(o).__name__
        raise ValueError(f"o must be a (B, m, n) tensor, got {got}")
    if o.dtype not in GLUE_DTYPES:
        raise TypeError(f"o has dtype {o.dtype}; supported: bfloat16, float16, float32")
    if not isinstance(params, (list, tuple)) or not params or not isinstance(params[0], torch.Tensor) or params[0].dim() < 2:
        raise TypeError("params must be a non-empty list of tensors of at least 2 dims")
    _, m, n = _param_shape(params[0])
    batch = o.shape[0]
    if (o.shape[1], o.shape[2]) not in ((m, n), (n, m)):
        raise ValueError(f"o holds {o.shape[1]}×{o.shape[2]} matrices, expected {m}×{n} or its transpose")
    check_matrix_list("params", params, (batch, m, n), o.device, writable=True)
    for name, t, sizes in (("step", step, (1, batch)), ("decay", decay, (1,))):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {type(t).__name__ if not isinstance(t, torch.Tensor) else t.dtype}")
        if t.numel() not in sizes:
            raise ValueError(f"{name} must have {' or '.join(map(str, sizes))} elements, got shape {tuple(t.shape)}")
        if t.device != o.device:
            raise ValueError(f"{name} is on {t.device}, expected {o.device}")
    check_found(found, o.device)


@torch.library.custom_op("fpolar::scaled_update_", mutates_args=("params",))
def scaled_update_(
    params: List[torch.Tensor],
    o: torch.Tensor,
    step: torch.Tensor,
    decay: torch.Tensor,
    found: Optional[torch.Tensor] = None,
) -> None:
    """W ← decay·W − s·O for each matrix of ``params``, computed in fp32 and rounded once.

    Args:
        params: the group's params (each k ≥ 1 m×n matrices: 2-D, 3-D, or contiguous ≥4-D), B
            matrices in all, bf16/fp16/fp32. **Mutated in place** (not where ``found``).
        o: (B, m, n) or, for a tall group, (B, n, m): the polar factor, any strides, bf16/fp16/fp32.
        step: s, (B,) per matrix or one element, floating, on o's device.
        decay: one element, floating, on o's device (1 for no decay).
        found: optional one-element bool on o's device; True: nothing is written.

    This body is the implementation for devices without a kernel (CPU): the torch twin.
    """
    _check(params, o, step, decay, found)
    scaled_update_reference(params, o, step, decay, found)


@scaled_update_.register_kernel("cuda")
def _scaled_update_cuda(
    params: List[torch.Tensor],
    o: torch.Tensor,
    step: torch.Tensor,
    decay: torch.Tensor,
    found: Optional[torch.Tensor] = None,
) -> None:
    _check(params, o, step, decay, found)
    launch_scaled_update(params, o, step, decay, found)


@scaled_update_.register_fake
def _scaled_update_fake(
    params: List[torch.Tensor],
    o: torch.Tensor,
    step: torch.Tensor,
    decay: torch.Tensor,
    found: Optional[torch.Tensor] = None,
) -> None:
    register_before_lowering(torch.ops.fpolar.scaled_update_.default)  # see fpolar/inductor_fallbacks.py
    _check(params, o, step, decay, found)
