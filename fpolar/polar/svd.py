"""Exact polar factor by SVD: the reference every other backend is measured against."""

from __future__ import annotations

import torch
from torch import Tensor


def svd_polar(x: Tensor) -> Tensor:
    """U Vᵀ of each matrix in ``x`` (B, m, n), computed by ``torch.linalg.svd`` in ``x``'s dtype.

    Singular values at or below max(m, n)·eps·σ_max are treated as zero and their singular vectors
    dropped, so a rank-deficient input gets the partial isometry (and a zero matrix maps to zero)
    rather than an arbitrary completion of its null space.
    """
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    tol = s.amax(dim=-1, keepdim=True) * (max(x.shape[-2:]) * torch.finfo(x.dtype).eps)
    keep = (s > tol).to(x.dtype)
    return (u * keep.unsqueeze(-2)) @ vh
