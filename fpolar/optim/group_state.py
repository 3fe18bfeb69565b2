"""What one param group of a ``fpolar.optim`` optimizer carries between steps.

A param group runs exactly one algorithm ("polargrad" for matrices, "adamw" for everything else) and
owns one functional state object (``PolarGradState`` or ``AdamWState``) for all of its params, so a
step is one batched functional call per group.

Scheduled scalars: ``group["lr"]`` and ``group["weight_decay"]`` stay Python floats (what LR schedulers
read and write). The functional step is fed two 0-d tensors per group instead, refilled from the floats
before every step. A compiled ``step`` therefore sees tensors whose *values* change, not constants, and
does not recompile when a scheduler moves the lr.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple, Union

import torch
from torch import Tensor

from ..hparams import AdamWHParams, PolarGradHParams
from ..distributed.state import init_state
from ..state import AdamWState, PolarGradState, init_adamw_state
from .checked_inputs import CheckedInputs

ALGORITHMS: Tuple[str, ...] = ("polargrad", "adamw")

# The AdamW part of a group: these four keys, with the meaning (and defaults) of torch.optim.AdamW.
ADAMW_KEYS: Tuple[str, ...] = ("lr", "betas", "eps", "weight_decay")

# Scheduled scalars: read from the group every step, never part of the static config.
SCHEDULED_KEYS: Tuple[str, ...] = ("lr", "weight_decay")

HParams = Union[PolarGradHParams, AdamWHParams]
FunctionalState = Union[PolarGradState, AdamWState]


def freeze(value: Any) -> Any:
    """A hashable, ==-comparable copy of a group value (lists of coefficient triples become tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def scalar_dtype(params: List[Tensor]) -> torch.dtype:
    """dtype of the 0-d lr / weight-decay tensors: the param dtype promoted to at least float32, so a
    bf16 model does not get a bf16-rounded lr and a float64 model keeps float64 scalars."""
    return torch.promote_types(params[0].dtype, torch.float32)


@dataclass(eq=False)
class GroupRuntime:
    """Per-group objects the functional step needs; kept beside (not inside) ``param_groups[i]``.

    Attributes:
        algorithm: "polargrad" or "adamw".
        params: the group's params (the same tensor objects as ``group["params"]``).
        lr, weight_decay: 0-d tensors handed to the functional step; refilled from the group's floats
            before every step (None until the first step).
        hparams: built from the group's static config, with ``lr``/``weight_decay`` as those tensors.
        key: the static config ``hparams`` was built from; a different key rebuilds ``hparams``.
        state: the functional state, built at the group's first step with any grad (or by
            ``load_state_dict``); None before.
        checked: the step inputs as the checks last read them when every group passed
            (``fpolar.optim.checked_inputs``); inputs that read the same skip the checks.
    """

    algorithm: str
    params: List[Tensor]
    lr: Optional[Tensor] = None
    weight_decay: Optional[Tensor] = None
    hparams: Optional[HParams] = None
    key: Optional[tuple] = None
    state: Optional[FunctionalState] = field(default=None, repr=False)
    checked: Optional[CheckedInputs] = field(default=None, repr=False)

    def matches(self, group_params: List[Tensor]) -> bool:
        """Whether ``group_params`` are still exactly this group's params (same objects, same order)."""
        return len(group_params) == len(self.params) and all(a is b for a, b in zip(group_params, self.params))

    def new_state(self, hparams: HParams) -> FunctionalState:
        """Fresh functional state (zero moments, step 0) for this group's params; nothing else changes."""
        if self.algorithm == "polargrad":
            return init_state(self.params, hparams)  # type: ignore[arg-type]
        return init_adamw_state(self.params, hparams)  # type: ignore[arg-type]

    def per_param_state(self, state: FunctionalState) -> List[dict]:
        """torch.optim-style per-param state dicts whose tensors ARE the functional state's tensors
        (views into the stacked momentum buffers, shared step tensor), not copies."""
        if isinstance(state, PolarGradState):
            return [{"momentum_buffer": m, "step": state.step} for m in state.momentum]
        return [
            {"step": s, "exp_avg": m, "exp_avg_sq": v}
            for s, m, v in zip(state.step, state.exp_avg, state.exp_avg_sq)
        ]


def scalar_value(value: Any, what: str) -> Union[float, Tensor]:
    """Check a scheduled scalar read from a group: a Python real ≥ 0, or a one-element float tensor.

    Tensor values are not read here (no host sync per step); they were checked when the group was
    added or loaded.
    """
    if isinstance(value, Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(f"{what} must be a float or a one-element float tensor, got {value!r}")
        if value.device.type == "meta":
            raise ValueError(f"{what} is a tensor on the meta device (no value); put it on the params' device")
        if value.device.type == "cpu":
            # Reading a CPU tensor costs no device sync: refuse a NaN / negative / infinite value here.
            # (A CUDA tensor is not read; a non-finite value there makes the step skip, on the device.)
            v = float(value.detach().reshape(()))
            if not 0.0 <= v < math.inf:
                raise ValueError(f"{what} tensor holds {v}; it must be finite and ≥ 0")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a float, got {type(value).__name__} {value!r}")
    if not value >= 0.0:  # also catches NaN
        raise ValueError(f"{what} must be ≥ 0, got {value!r}")
    if value == math.inf:
        raise ValueError(f"{what} must be finite, got {value!r}")
    return float(value)


def fill_scalar(target: Tensor, value: Union[float, Tensor]) -> None:
    """Write a group's scalar into its 0-d tensor in place (the tensor the compiled step reads)."""
    if isinstance(value, Tensor):
        target.copy_(value.detach().reshape(()))
    else:
        target.fill_(value)
