"""Shared pieces of the Newton–Schulz kernels: the Triton import, input checks, tile heuristics.

Triton is optional: without it (a CPU-only install) the ops still work through their torch twins,
and only the CUDA implementations and the launchers need it.
"""

from __future__ import annotations

import math
import types

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only on installs without triton
    HAS_TRITON = False

    class _MissingConfig:
        def __init__(self, kwargs: dict, num_warps: int = 4, num_stages: int = 3) -> None:
            self.kwargs, self.num_warps, self.num_stages = dict(kwargs), num_warps, num_stages

    def _jit_placeholder(fn=None, **_kwargs):
        # Kernels stay defined (and unlaunchable) so the modules import without triton.
        return fn if fn is not None else (lambda f: f)

    triton = types.SimpleNamespace(jit=_jit_placeholder, Config=_MissingConfig, cdiv=None)
    tl = types.SimpleNamespace(constexpr=object)

__all__ = [
    "HAS_TRITON",
    "SUPPORTED_DTYPES",
    "check_batched_matrix",
    "check_finite_scalar",
    "dot_options",
    "dot_fp32_acc",
    "check_int32_addressable",
    "launch_options",
    "require_triton",
    "symmetric_tile_config",
    "matmul_tile_config",
    "triton",
    "tl",
]

SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)

def check_batched_matrix(name: str, t: object) -> torch.Tensor:
    """Checks that ``t`` is a (B, m, n) tensor of a supported floating dtype and returns it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 3:
        raise ValueError(
            f"{name} must be a batch of matrices with 3 dims (B, m, n), got {t.dim()} dims "
            f"with shape {tuple(t.shape)}"
        )
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} has dtype {t.dtype}; supported dtypes are bfloat16, float16 and float32"
        )
    return t


def check_batch_scale(name: str, scale: object, batch: int, device: torch.device) -> None:
    """``scale`` is None or a (batch,) fp32 contiguous tensor on ``device``: one factor per matrix of the
    batch, read by a kernel's epilogue. Raises naming ``name`` and what it got."""
    if scale is None:
        return
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(scale).__name__}")
    if scale.dtype != torch.float32 or tuple(scale.shape) != (batch,) or not scale.is_contiguous():
        raise ValueError(
            f"{name} must be a contiguous float32 tensor of shape ({batch},), one factor per matrix; got "
            f"{scale.dtype} of shape {tuple(scale.shape)}{'' if scale.is_contiguous() else ', not contiguous'}"
        )
    if scale.device != device:
        raise ValueError(f"{name} is on {scale.device}, expected {device}")


def check_finite_scalar(name: str, value: object) -> float | torch.SymFloat:
    """Checks that ``value`` is a finite real Python number (the op schemas take ``float``).

    A symbolic float (traced under torch.compile) passes unchecked: its value is not known yet.
    """
    if isinstance(value, (torch.SymFloat, torch.SymInt)):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def require_triton() -> None:
    if not HAS_TRITON:
        raise RuntimeError("the fpolar Triton kernels need the 'triton' package, which is not installed")


def check_int32_addressable(name: str, t: torch.Tensor) -> None:
    """Within one matrix the kernels compute element offsets in int32 (the batch offset is int64).

    A single matrix whose last element lies at or beyond 2**31 elements would wrap silently, so it is
    refused here instead.
    """
    _, rows, cols = t.shape
    last = (rows - 1) * t.stride(1) + (cols - 1) * t.stride(2) if rows and cols else 0
    if last >= 2**31:
        raise ValueError(
            f"{name} has a single matrix of shape {(rows, cols)} spanning {last + 1} elements; "
            "the kernels address one matrix with int32 offsets (< 2**31 elements)"
        )


def dot_options(dtype: torch.dtype, device: torch.device) -> dict[str, object]:
    """Constexpr arguments PRECISION and UPCAST of ``dot_fp32_acc`` for operands of ``dtype``.

    fp32 operands follow torch's own switch for fp32 matmuls: TF32 tensor cores when
    ``torch.backends.cuda.matmul.allow_tf32`` is on, exact fp32 ("ieee") otherwise (the torch
    default). 16-bit operands ignore the precision; their products always accumulate in fp32.
    Off CUDA (the Triton interpreter) 16-bit operands are upcast to fp32 before the dot, see
    ``dot_fp32_acc``.
    """
    on_cuda = device.type == "cuda"
    if dtype == torch.float32:
        precision = "tf32" if on_cuda and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    else:
        precision = "tf32" if on_cuda else "ieee"
    return {"PRECISION": precision, "UPCAST": not on_cuda and dtype != torch.float32}


@triton.jit
def dot_fp32_acc(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b with an fp32 accumulator.

    The Triton interpreter (3.9) multiplies bf16 operands as their raw uint16 bit patterns, so there
    the operands are upcast first: bf16/fp16 -> fp32 is exact, and an fp32 dot of the upcast values
    is the same math as the tensor-core dot (exact products, fp32 sums).
    """
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


def _k_block(dtype: torch.dtype) -> int:
    # Same bytes per K step for every dtype, so the shared-memory budget of the stages is the same.
    return 32 if dtype == torch.float32 else 64


def symmetric_tile_config(m: int, dtype: torch.dtype, tma: bool = False) -> triton.Config:
    """Tile choice for the lower-triangle kernels (sym_gram, sym_poly, sym_cross).

    Output tiles are square (mirroring a tile needs BLOCK_M == BLOCK_N): 128 wide with 3 stages, or
    64 wide with 4 warps and 4 stages when one such tile covers the whole matrix (m <= 64). K steps
    are 64 (16-bit) or 32 (fp32) wide. No autotuning: the choice is instant.

    Warps for the 128-wide tile depend on how the tiles are loaded (``tma``: the kernels' tensor-
    descriptor variants). Pointer loads, measured on an H100 (bf16, torch 2.11, triton 3.6): 8 warps;
    4 warps on a 128×128 fp32 accumulator spill registers (up to 9× slower), and 128-wide tiles beat
    64-wide ones for every m from 768 to 4096 even at 108 programs (3×1000×1537: 62 vs 97 µs).
    Through TMA, measured on an H200 (``benchmarks/tma_gram_probe.py``): 4 warps. For b·A + c·A² they
    were the fastest of the 48 configs swept (``--poly``) at 12×768, 24×768 and 24×1024 (13.6 vs 14.8
    µs at 12×768 with 8 warps); for the congruence's P·Uᵀ (``--cross``) the fastest or tied; for
    X Xᵀ, 8 warps cost 0.1–1.5% at 12×768×{768, 2304, 3072}.
    """
    if m <= 64:
        return triton.Config({"BLOCK": 64, "BLOCK_K": _k_block(dtype)}, num_warps=4, num_stages=4)
    return triton.Config({"BLOCK": 128, "BLOCK_K": _k_block(dtype)}, num_warps=4 if tma else 8, num_stages=3)


def matmul_tile_config(m: int, n: int, dtype: torch.dtype) -> triton.Config:
    """Tile choice for ns_apply (a (m, m) by (m, n) product per batch entry).

    128×128 output tiles with 8 warps and 3 stages; a side of 64 (4 warps, 4 stages) where the
    matrix is no taller / wider than 64. K steps 64 (16-bit) or 32 (fp32); tiles are visited in
    groups of 8 tile-rows so neighbouring programs share rows of Bm in L2. Measured on an H100:
    64×64 tiles are 1.3–1.7× slower than 128×128 at m ≥ 768, and 128×256 tiles, though ~10% faster
    on large square inputs, are 3× slower at odd n (3×1000×1537).
    """
    block_m = 64 if m <= 64 else 128
    block_n = 64 if n <= 64 else 128
    warps, stages = (8, 3) if block_m == block_n == 128 else (4, 4)
    kwargs = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": _k_block(dtype), "GROUP_M": 8}
    return triton.Config(kwargs, num_warps=warps, num_stages=stages)


def launch_options(config: triton.Config) -> dict:
    """Keyword arguments for ``kernel[grid](...)`` from a config (block sizes + warps + stages)."""
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
