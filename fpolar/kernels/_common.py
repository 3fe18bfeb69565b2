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
    "dot_input_precision",
    "check_int32_addressable",
    "launch_options",
    "require_triton",
    "symmetric_tile_config",
    "matmul_tile_config",
    "triton",
    "tl",
]

SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)

# Programs per launch above which the larger 128-wide tiles keep every SM busy; below it the
# 64-wide tiles are used so a small batch still fills the GPU (132 SMs on an H100, ~2 waves).
_PROGRAMS_FOR_LARGE_TILES = 256


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


def dot_input_precision(dtype: torch.dtype, device: torch.device) -> str:
    """``tl.dot`` precision for the operands' dtype.

    fp32 operands follow torch's own switch for fp32 matmuls: TF32 tensor cores when
    ``torch.backends.cuda.matmul.allow_tf32`` is on, exact fp32 ("ieee") otherwise (the torch
    default). On CPU (the Triton interpreter) it is always "ieee". 16-bit operands ignore the
    setting, and their products always accumulate in fp32.
    """
    if dtype != torch.float32:
        return "tf32"
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _k_block(dtype: torch.dtype) -> int:
    # Same bytes per K step for every dtype, so the shared-memory budget of the stages is the same.
    return 32 if dtype == torch.float32 else 64


def symmetric_tile_config(batch: int, m: int, dtype: torch.dtype) -> triton.Config:
    """Tile choice for the lower-triangle kernels (sym_gram, sym_poly, aol_gram).

    Output tiles are square (mirroring a tile needs BLOCK_M == BLOCK_N): 128 wide with 8 warps and
    3 stages when the launch has enough lower tiles to fill the GPU, else 64 wide with 4 warps and
    4 stages. K steps are 64 (16-bit) or 32 (fp32) wide. No autotuning: the choice is instant.
    """
    tiles_128 = -(-m // 128)
    if batch * tiles_128 * (tiles_128 + 1) // 2 >= _PROGRAMS_FOR_LARGE_TILES:
        return triton.Config({"BLOCK": 128, "BLOCK_K": _k_block(dtype)}, num_warps=8, num_stages=3)
    return triton.Config({"BLOCK": 64, "BLOCK_K": _k_block(dtype)}, num_warps=4, num_stages=4)


def matmul_tile_config(batch: int, m: int, n: int, dtype: torch.dtype) -> triton.Config:
    """Tile choice for ns_apply (a (m, m) by (m, n) product per batch entry).

    128×128 output tiles with 8 warps and 3 stages when there are enough of them to fill the GPU,
    else 64×64 with 4 warps and 4 stages; K steps 64 (16-bit) or 32 (fp32); rows of tiles are
    visited in groups of 8 so neighbouring programs share the same rows of B in L2.
    """
    if batch * (-(-m // 128)) * (-(-n // 128)) >= _PROGRAMS_FOR_LARGE_TILES:
        kwargs = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": _k_block(dtype), "GROUP_M": 8}
        return triton.Config(kwargs, num_warps=8, num_stages=3)
    kwargs = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": _k_block(dtype), "GROUP_M": 8}
    return triton.Config(kwargs, num_warps=4, num_stages=4)


def launch_options(config: triton.Config) -> dict:
    """Keyword arguments for ``kernel[grid](...)`` from a config (block sizes + warps + stages)."""
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
