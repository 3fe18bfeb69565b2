"""Telling a ``torch.distributed`` DTensor apart, and reaching its local shard, from any layer.

The core modules (AdamW, validation, the torch.optim shell) use these instead of importing the
distributed layer above them. ``isinstance`` against the class, imported when first asked (not at
import time, and never on builds of torch without ``torch.distributed``): Dynamo traces ``isinstance``
on a DTensor faithfully, where a check of ``type(t).__name__`` does not hold under torch.compile.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a DTensor (FSDP2 / tensor-parallel parameter)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local_tensor(t: Tensor) -> Tensor:
    """The rank's own tensor of a DTensor (aliasing it: in-place ops write the DTensor), else ``t``."""
    return t.to_local() if is_dtensor(t) else t
