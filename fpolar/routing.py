"""The one rule for which tensors the polar step takes: every other tensor runs AdamW.

A tensor is a **matrix** when it has at least 2 dims and at least one element:

* 2-D (m, n) is one matrix; 3-D (k, m, n) is k matrices (stacked experts, heads); ≥ 4-D
  (out, c, kh, kw…) is one (out, c·kh·kw…) matrix (``matrix_view_shape``).
* 0-/1-D tensors (biases, norm gains, scalars) are not matrices.
* An **empty** tensor (a dim of size 0, e.g. a (0, 16) weight of a layer sized to zero) is not a
  matrix either: it has no polar factor, and the polar step refuses it. It goes to AdamW, where a step
  on no elements is a no-op, so a model with an empty layer trains instead of failing.

Users of the rule: ``fpolar.optim`` (splitting a "polargrad" group), ``fpolar.optim.param_groups``
(which adds model-aware exceptions on top: embeddings and the output head to AdamW),
``fpolar.compile.matrices_to_polar`` (the default split of ``make_train_step``) and the demo.
"""

from __future__ import annotations

from typing import Sequence, Tuple

from torch import Tensor


def is_matrix(p: Tensor) -> bool:
    """Whether the polar step takes ``p``: at least 2 dims and at least one element.

    Reads only ``p``'s metadata (shape); any dtype or device.
    """
    return p.dim() >= 2 and p.numel() > 0


def matrix_view_shape(shape: Sequence[int]) -> Tuple[int, int, int]:
    """(count, m, n): how many m×n matrices a tensor of ``shape`` (≥ 2 dims) holds: 2-D one matrix,
    3-D (k, m, n) k matrices, ≥ 4-D one (dim 0, product of the rest) matrix."""
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    if len(shape) == 3:
        return shape[0], shape[1], shape[2]
    rest = 1
    for d in shape[1:]:
        rest *= d
    return 1, shape[0], rest
