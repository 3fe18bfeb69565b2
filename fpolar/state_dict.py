"""Checkpoints of the functional state: ``PolarGradState`` / ``AdamWState`` as plain dicts of tensors.

    torch.save(state.state_dict(hparams=hp), "polar.pt")
    state = fpolar.init_state(params, hp)                       # same params (shapes, dtypes), same hparams
    state.load_state_dict(torch.load("polar.pt", weights_only=True), hparams=hp)

Layouts (only tensors, ints, floats, strings, lists, dicts, None and torch dtypes, so
``torch.load(weights_only=True)`` reads them):

    PolarGradState  {"kind": "PolarGradState", "step": 0-d tensor, "momentum": [tensor per param, its
                     shape], "skipped": 0-d int64 tensor, "shapes": [[int, ...] per param],
                     "hparams": {field: value} or None}
    AdamWState      {"kind": "AdamWState", "step": [0-d tensor per param], "exp_avg": [...],
                     "exp_avg_sq": [...], "skipped": 0-d int64 tensor, "shapes": [...],
                     "hparams": {field: value} or None}

``"skipped"`` (calls skipped for a non-finite grad) may be absent from an older checkpoint; the
state's counter is then left as it is.

``"hparams"`` records the static hparams (every field but the scheduled ``lr`` / ``weight_decay``) when
``state_dict`` is given them; ``load_state_dict`` given hparams too refuses a checkpoint saved with other
values. As in torch.optim, the dict holds the live state tensors, not copies (``torch.save`` writes
their values at the time of the call; ``copy.deepcopy`` for a snapshot in memory). A PolarGradState's
momenta are views of one stacked buffer per shape group: ``torch.save`` stores the buffer once.

Loading checks everything — kind, number of params, every shape, every dtype, the hparams — before it
copies anything, and copies into the state's existing tensors (the momentum views, and any compiled
graph or CUDA graph holding them, stay valid). A refused load leaves the state unchanged.

The states are read through the small protocols below, so this module does not import ``fpolar.state``
(which calls it).
"""

from __future__ import annotations

import dataclasses
from numbers import Real
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

import torch
from torch import Tensor

from .hparams import AdamWHParams, PolarGradHParams

# Scheduled scalars change during a run: a checkpoint does not pin them.
SCHEDULED_FIELDS: Tuple[str, ...] = ("lr", "weight_decay")


class PolarGradStateLike(Protocol):
    step: Tensor
    momentum: List[Tensor]
    shapes: Tuple[torch.Size, ...]


class AdamWStateLike(Protocol):
    step: List[Tensor]
    exp_avg: List[Tensor]
    exp_avg_sq: List[Tensor]
    shapes: Tuple[torch.Size, ...]


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: the form a value has after a save and a load, for comparing."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def hparams_record(hparams: Union[PolarGradHParams, AdamWHParams, None]) -> Optional[Dict[str, Any]]:
    """The static fields of ``hparams`` as a plain dict (None for None)."""
    if hparams is None:
        return None
    return {
        f.name: _plain(getattr(hparams, f.name))
        for f in dataclasses.fields(hparams)
        if f.init and f.name not in SCHEDULED_FIELDS
    }


def _check_hparams(saved: Any, hparams: Union[PolarGradHParams, AdamWHParams, None], kind: str) -> None:
    expected_type = PolarGradHParams if kind == "PolarGradState" else AdamWHParams
    if hparams is not None and not isinstance(hparams, expected_type):
        raise TypeError(f"hparams must be {expected_type.__name__} for a {kind}, got {type(hparams).__name__}")
    if hparams is None or saved is None:
        return
    if not isinstance(saved, Mapping):
        raise TypeError(f"the checkpoint's 'hparams' must be a dict or None, got {type(saved).__name__}")
    ours = hparams_record(hparams)
    assert ours is not None
    diff = [f"{k}: saved {saved.get(k, '<missing>')!r}, given {v!r}" for k, v in ours.items() if _plain(saved.get(k, object())) != v]
    if diff:
        raise ValueError(
            f"the {kind} checkpoint was saved with other hparams ({'; '.join(diff)}); build the state with the "
            "hparams of the run that saved it, or load without hparams= to take the tensors anyway"
        )


def _check_common(state_dict: Any, kind: str, shapes: Sequence[torch.Size], keys: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict from {kind}.state_dict(), got {type(state_dict).__name__}")
    saved_kind = state_dict.get("kind")
    if saved_kind != kind:
        if saved_kind in ("PolarGradState", "AdamWState"):
            a = "an" if saved_kind.startswith("A") else "a"
            raise ValueError(f"this is {a} {saved_kind} checkpoint; load it into {a} {saved_kind}, not into this {kind}")
        raise ValueError(f"not a {kind} checkpoint ('kind' is {saved_kind!r}); expected the dict from {kind}.state_dict()")
    missing = [k for k in ("shapes", *keys) if k not in state_dict]
    if missing:
        raise ValueError(f"the {kind} checkpoint lacks {missing}")
    saved_shapes = state_dict["shapes"]
    if not isinstance(saved_shapes, (list, tuple)) or len(saved_shapes) != len(shapes):
        n = len(saved_shapes) if isinstance(saved_shapes, (list, tuple)) else "?"
        raise ValueError(
            f"the {kind} checkpoint was saved for {n} params but this state has {len(shapes)}; build the state "
            "for the same params, in the same order"
        )
    for i, (a, b) in enumerate(zip(saved_shapes, shapes)):
        if _plain(a) != list(b):
            raise ValueError(
                f"the {kind} checkpoint was saved for params[{i}] of shape {tuple(a)} but this state's params[{i}] "
                f"has shape {tuple(b)}; build the state for the same params, in the same order"
            )
    return state_dict


def _check_tensors(saved: Any, targets: Sequence[Tensor], what: str, kind: str) -> None:
    if not isinstance(saved, (list, tuple)) or len(saved) != len(targets):
        raise ValueError(f"the {kind} checkpoint's {what!r} must be a list of {len(targets)} tensors")
    for i, (s, t) in enumerate(zip(saved, targets)):
        if not isinstance(s, Tensor):
            raise TypeError(f"the {kind} checkpoint's {what}[{i}] must be a tensor, got {type(s).__name__}")
        if s.shape != t.shape:
            raise ValueError(f"the {kind} checkpoint's {what}[{i}] has shape {tuple(s.shape)}, expected {tuple(t.shape)}")
        if s.dtype != t.dtype:
            raise ValueError(
                f"the {kind} checkpoint's {what}[{i}] is {s.dtype} but this state's is {t.dtype}: the params' dtype "
                "or momentum_dtype differ from the run that saved it; build the state with the same ones"
            )
        if s.layout != torch.strided:
            raise TypeError(f"the {kind} checkpoint's {what}[{i}] must be a dense tensor, got {s.layout}")


def _check_step(s: Any, where: str) -> None:
    if isinstance(s, Tensor):
        if s.numel() != 1 or not s.is_floating_point():
            raise ValueError(f"{where} must be a one-element float tensor, got shape {tuple(s.shape)}, {s.dtype}")
    elif isinstance(s, bool) or not isinstance(s, Real):
        raise TypeError(f"{where} must be a number or a tensor, got {type(s).__name__}")


def _copy_step(dst: Tensor, s: Union[Tensor, float]) -> None:
    dst.copy_(s.detach().reshape(()) if isinstance(s, Tensor) else torch.tensor(float(s)))


def _check_skipped(saved: Any, kind: str) -> None:
    """The skip counter is optional in a checkpoint (none before it existed); present, a one-element
    integer tensor."""
    if saved is None:
        return
    if not isinstance(saved, Tensor) or saved.numel() != 1 or saved.is_floating_point() or saved.is_complex():
        raise ValueError(f"the {kind} checkpoint's 'skipped' must be a one-element integer tensor, got {saved!r}")


def _copy_skipped(state: Any, saved: Optional[Tensor]) -> None:
    if saved is not None and getattr(state, "skipped", None) is not None:
        state.skipped.copy_(saved.reshape(()))


def _checkpoint(kind: str, shapes: Sequence[Sequence[int]], hparams: Any, **tensors: Any) -> Dict[str, Any]:
    """The checkpoint layout both states share: ``kind``, the state's own entries, then the ``shapes`` and
    ``hparams`` record that ``_check_common`` / ``_check_hparams`` read back."""
    return {"kind": kind, **tensors, "shapes": [list(s) for s in shapes], "hparams": hparams_record(hparams)}


def polargrad_state_dict(state: PolarGradStateLike, hparams: Optional[PolarGradHParams] = None) -> Dict[str, Any]:
    """``state`` as a checkpoint dict (layout in the module docstring); its live tensors, not copies."""
    return _checkpoint("PolarGradState", state.shapes, hparams, step=state.step, momentum=list(state.momentum),
                       skipped=getattr(state, "skipped", None))


@torch.no_grad()
def load_polargrad_state_dict(
    state: PolarGradStateLike, state_dict: Mapping[str, Any], hparams: Optional[PolarGradHParams] = None
) -> None:
    """Copy a ``polargrad_state_dict`` checkpoint into ``state`` (its step and momentum, in place).

    Raises ValueError/TypeError, with ``state`` unchanged, for a checkpoint of another kind, other param
    count, shapes or dtypes, or (when both record them) other hparams.
    """
    sd = _check_common(state_dict, "PolarGradState", state.shapes, ("step", "momentum"))
    _check_hparams(sd.get("hparams"), hparams, "PolarGradState")
    _check_step(sd["step"], "the PolarGradState checkpoint's 'step'")
    _check_tensors(sd["momentum"], state.momentum, "momentum", "PolarGradState")
    _check_skipped(sd.get("skipped"), "PolarGradState")
    _copy_step(state.step, sd["step"])
    _copy_skipped(state, sd.get("skipped"))
    for dst, src in zip(state.momentum, sd["momentum"]):
        dst.copy_(src)


def adamw_state_dict(state: AdamWStateLike, hparams: Optional[AdamWHParams] = None) -> Dict[str, Any]:
    """``state`` as a checkpoint dict (layout in the module docstring); its live tensors, not copies."""
    return _checkpoint("AdamWState", state.shapes, hparams, step=list(state.step), exp_avg=list(state.exp_avg),
                       exp_avg_sq=list(state.exp_avg_sq), skipped=getattr(state, "skipped", None))


@torch.no_grad()
def load_adamw_state_dict(
    state: AdamWStateLike, state_dict: Mapping[str, Any], hparams: Optional[AdamWHParams] = None
) -> None:
    """Copy an ``adamw_state_dict`` checkpoint into ``state`` (steps and moments, in place); refuses as
    ``load_polargrad_state_dict`` does, leaving ``state`` unchanged."""
    sd = _check_common(state_dict, "AdamWState", state.shapes, ("step", "exp_avg", "exp_avg_sq"))
    _check_hparams(sd.get("hparams"), hparams, "AdamWState")
    steps = sd["step"]
    if not isinstance(steps, (list, tuple)) or len(steps) != len(state.step):
        raise ValueError(f"the AdamWState checkpoint's 'step' must be a list of {len(state.step)} steps")
    for i, s in enumerate(steps):
        _check_step(s, f"the AdamWState checkpoint's step[{i}]")
    _check_tensors(sd["exp_avg"], state.exp_avg, "exp_avg", "AdamWState")
    _check_tensors(sd["exp_avg_sq"], state.exp_avg_sq, "exp_avg_sq", "AdamWState")
    _check_skipped(sd.get("skipped"), "AdamWState")
    for dst, s in zip(state.step, steps):
        _copy_step(dst, s)
    _copy_skipped(state, sd.get("skipped"))
    for dst, src in zip(state.exp_avg, sd["exp_avg"]):
        dst.copy_(src)
    for dst, src in zip(state.exp_avg_sq, sd["exp_avg_sq"]):
        dst.copy_(src)
