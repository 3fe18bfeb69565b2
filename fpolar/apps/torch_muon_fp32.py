"""torch.optim.Muon with its Newton–Schulz iteration in fp32: compare algorithms, not roundings.

torch.optim.Muon always iterates in bf16 (torch/optim/_muon.py, ``_zeropower_via_newtonschulz``), also
on CPU, where fpolar defaults to fp32. ``python -m fpolar bench`` and the parity tests against
torch.optim.Muon swap in ``newton_schulz_fp32``: the same arithmetic, line for line, in fp32.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Tuple

import torch


def newton_schulz_fp32(grad: torch.Tensor, ns_coefficients: Tuple[float, float, float], ns_steps: int,
                       eps: float) -> torch.Tensor:
    """torch.optim.Muon's ``_zeropower_via_newtonschulz`` with the iteration in fp32 instead of bf16.

    ``grad``: a matrix (m, n), any float dtype and device; not mutated. Returns the fp32 (m, n)
    approximate polar factor. Same signature as torch's, so it can replace it."""
    a, b, c = ns_coefficients
    x = grad.float()
    if grad.size(0) > grad.size(1):
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


@contextlib.contextmanager
def torch_muon_ns_dtype(dtype: torch.dtype) -> Iterator[None]:
    """torch.optim.Muon with its Newton–Schulz iteration in ``dtype`` inside the block: fp32 swaps in
    ``newton_schulz_fp32``; bf16 leaves torch's iteration as it is. Restored on exit, also on error."""
    import torch.optim._muon as torch_muon

    original = torch_muon._zeropower_via_newtonschulz
    if dtype == torch.float32:
        torch_muon._zeropower_via_newtonschulz = newton_schulz_fp32
    try:
        yield
    finally:
        torch_muon._zeropower_via_newtonschulz = original
