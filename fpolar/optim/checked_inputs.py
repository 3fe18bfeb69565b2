"""What a group's step-input checks read, as one comparable value: a step whose inputs read the same
as the last ones that passed needs no second pass of the checks.

``PolarOptimizer._prepare`` runs the functional steps' own checks (``polargrad.check_step_inputs``,
``adamw.check_step_inputs``) on every group before any group steps. They read only metadata — each
param's type, dtype, layout, device, shape, strides, address and inference flag; each grad's type,
dtype, layout, device and shape; the state's tensors the same way and its plan; the hparams object —
so equal metadata gives an equal verdict. Computing that tuple costs a fraction of running the checks
(one attribute read per fact, no message formatting, no distinctness dict), which matters on the
host: GPT-2-small's 149 params and their state were ≈ 2.6 ms of checks per step on a 2-core x86
host, and with an eager model the device waits on the host.

``None`` (always check) for anything whose checks read more than this tuple holds: DTensor and other
tensor subclasses (their checks look through to the local shard), a distributed state (its own
type), a group without state yet (its first step plans the state from the params).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from ..state import AdamWState, PolarGradState

_PLAIN = (Tensor, nn.Parameter)


def _param_facts(t: Any) -> Optional[tuple]:
    """What the param checks read: type, dtype, layout, device, shape, strides (stride 0), address
    (two params over one memory) and the inference flag."""
    if type(t) not in _PLAIN:
        return None
    return (type(t), t.dtype, t.layout, t.device, t.shape, t.stride(), t.data_ptr(), t.is_inference())


def _grad_facts(g: Any) -> Any:
    """What the grad checks read (``()`` for a missing grad): type, dtype, layout, device, shape."""
    if g is None:
        return ()
    if type(g) not in _PLAIN:
        return None
    return (type(g), g.dtype, g.layout, g.device, g.shape)


def _state_facts(t: Any) -> Optional[tuple]:
    """What the state checks read of a moment or counter: type, dtype, device and shape."""
    if type(t) not in _PLAIN:
        return None
    return (t.dtype, t.device, t.shape)


def _placed_facts(t: Any) -> Optional[tuple]:
    """A momentum buffer or entry: the state facts and where it lies (an entry must view its buffer)."""
    if type(t) not in _PLAIN:
        return None
    return (t.dtype, t.device, t.shape, t.stride(), t.data_ptr())


def _all(fact: Callable[[Any], Any], items: Sequence[Any]) -> Optional[tuple]:
    """``fact`` of each item, or None if any is None (an item the fingerprint cannot see)."""
    out = []
    for item in items:
        f = fact(item)
        if f is None:
            return None
        out.append(f)
    return tuple(out)


class CheckedInputs(NamedTuple):
    """One group's step inputs as its checks read them: the hparams and state objects (compared by
    identity: each is held here, so an object at a reused address can never pass for it) and the
    metadata facts (compared by value)."""

    hparams: Any
    state: Any
    facts: tuple

    def same_as(self, other: Optional["CheckedInputs"]) -> bool:
        """Whether the checks would give ``other``'s verdict on these inputs."""
        return (
            other is not None
            and self.hparams is other.hparams
            and self.state is other.state
            and self.facts == other.facts
        )


def step_inputs_fingerprint(
    params: Sequence[Tensor], grads: Sequence[Optional[Tensor]], state: Any, hparams: Any
) -> Optional[CheckedInputs]:
    """Everything the step-input checks of this group read (module docstring), or None when they read
    more. Two fingerprints ``same_as`` each other mean the checks pass or fail alike."""
    state_type = type(state)
    if state_type is PolarGradState:
        shaped, placed = [state.step, state.skipped], [*state.buffers, *state.momentum]
        plan: tuple = (state.groups, state.shapes, state.polar_spec, state.polar_impls,
                       len(state.buffers), len(state.momentum))
    elif state_type is AdamWState:
        shaped, placed = [state.skipped, *state.step, *state.exp_avg, *state.exp_avg_sq], []
        plan = (state.shapes, len(state.step), len(state.exp_avg), len(state.exp_avg_sq))
    else:
        return None
    facts = (
        _all(_param_facts, params),
        _all(_grad_facts, grads),
        _all(_state_facts, shaped),
        _all(_placed_facts, placed),
    )
    if any(f is None for f in facts):
        return None
    return CheckedInputs(hparams, state, (plan, torch.is_inference_mode_enabled(), *facts))
