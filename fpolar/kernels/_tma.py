"""Tile loads and stores through Hopper's tensor-memory accelerator (TMA), for the lower-tile kernels.

Why: on sm90 a TMA copy moves a whole tile from global into shared memory with one instruction,
with no per-element address arithmetic or masks; out-of-range rows and columns load as zeros and are
clipped on store, so the edges need no masks either. The pointer-load lower-tile kernel already
beat cuBLAS's full X Xᵀ on the H200 (51.9 against 72.3 µs at 12 × 768 × 3072); with TMA loads and
stores it took 45.8 µs, 0.63× cuBLAS (``benchmarks/tma_gram_probe.py``, BENCHMARKS.md).

A descriptor describes a (B, rows, cols) tensor and the (1, BLOCK, BLOCK_K) box a load moves. The
hardware needs the base address and every stride but the last 16-byte aligned and the last stride 1;
a tensor that is not so laid out (or a device before sm90) takes the pointer-load kernel. Under the
Triton interpreter (CPU tests) the descriptors work too, so the TMA kernels are tested there.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ._common import HAS_TRITON

try:  # triton ≥ 3.4 (host-side descriptors)
    from triton.tools.tensor_descriptor import TensorDescriptor

    HAS_TENSOR_DESCRIPTOR = HAS_TRITON
except ImportError:  # pragma: no cover - older triton or none
    TensorDescriptor = None  # type: ignore[assignment,misc]
    HAS_TENSOR_DESCRIPTOR = False

__all__ = ["HAS_TENSOR_DESCRIPTOR", "descriptor", "descriptor_layout_ok", "use_tma"]

_ALIGN = 16  # bytes: TMA's alignment for the base address and the outer strides


def descriptor_layout_ok(t: torch.Tensor) -> bool:
    """Whether a (B, rows, cols) tensor can be described for TMA: last stride 1, base address and
    outer strides 16-byte aligned."""
    size = t.element_size()
    return (
        t.dim() == 3
        and t.stride(-1) == 1
        and t.data_ptr() % _ALIGN == 0
        and all((s * size) % _ALIGN == 0 for s in t.stride()[:-1])
    )


def _device_has_tma(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 9
    return False  # the interpreter runs them only when a test asks (tma=True)


def use_tma(tensors: Sequence[torch.Tensor], requested: Optional[bool]) -> bool:
    """Whether a launch on ``tensors`` loads through TMA. ``requested`` None: where the device has TMA
    (sm90 and later) and every tensor's layout allows a descriptor; True: required (ValueError naming
    the tensor whose layout does not allow it, or when triton has no descriptors); False: never."""
    if requested is False:
        return False
    if requested is None:
        return (
            HAS_TENSOR_DESCRIPTOR
            and _device_has_tma(tensors[0].device)
            and all(descriptor_layout_ok(t) for t in tensors)
        )
    if not HAS_TENSOR_DESCRIPTOR:
        raise ValueError("tma=True needs triton's tensor descriptors (triton >= 3.4)")
    for k, t in enumerate(tensors):
        if not descriptor_layout_ok(t):
            raise ValueError(
                f"tma=True: tensor {k} of shape {tuple(t.shape)}, strides {t.stride()}, dtype {t.dtype} "
                "cannot be described for TMA (last stride 1, 16-byte aligned base and outer strides)"
            )
    return True


def descriptor(t: torch.Tensor, rows: int, cols: int) -> "TensorDescriptor":
    """A descriptor of the (B, rows, cols) tensor ``t`` whose loads and stores move (1, rows, cols) boxes."""
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, rows, cols])
