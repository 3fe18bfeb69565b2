"""Loading a ``fpolar.optim`` checkpoint: validate all of it, then copy into the live state.

The layout is torch.optim's (see ``PolarOptimizer.state_dict``):

    {"state": {index: {...}}, "param_groups": [{"params": [index, ...], "algorithm": ..., <hparams>}]}

per-param state keys:
    "polargrad" group   "momentum_buffer" (param shape), "step" (0-d; the group's count, equal for all)
    "adamw" group       "step" (0-d), "exp_avg", "exp_avg_sq" (param shape)

A group has state for all of its params or for none (it never stepped). Loading is two-phase:
``plan_load`` reads and checks everything and builds the new group dicts without touching anything;
the optimizer then commits each ``GroupLoad``, calling ``loaded_state`` for the group's functional
state. Copying into the existing buffers (rather than swapping tensors) keeps the per-param momentum
views, and any compiled graph holding them, valid.

The interface to the optimizer is plain data, so this module does not import it (the optimizer imports
this one, never the reverse):

* ``param_groups``: the optimizer's current group dicts (read only);
* ``runtimes``: their ``GroupRuntime`` objects, one per group, in order (read only during the plan);
* ``validate_group(group, where) -> hparams``: checks a complete group dict, raising ValueError/TypeError
  that names ``where``; changes nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

from ..state import AdamWState, PolarGradState
from .group_state import FunctionalState, GroupRuntime, HParams

ValidateGroup = Callable[[Mapping[str, Any], str], HParams]
"""``validate_group(group, where) -> hparams``: the optimizer's check of one complete group dict."""

STATE_KEYS: Dict[str, tuple] = {
    "polargrad": ("momentum_buffer", "step"),
    "adamw": ("step", "exp_avg", "exp_avg_sq"),
}


@dataclass
class GroupLoad:
    """What loading a checkpoint does to one param group, decided before anything changes.

    Attributes:
        index: the group's position in ``param_groups``.
        group: the group dict as it will be after loading (the checkpoint's values, the live params).
        hparams: validated from ``group``; used to build state if the group has none yet.
        entries: the per-param saved state dicts, or None: the group never stepped (its state is dropped).
    """

    index: int
    group: Dict[str, Any]
    hparams: HParams
    entries: Optional[List[Mapping[str, Any]]]


def pack(param_groups: Sequence[Mapping[str, Any]], state: Mapping[Tensor, Mapping[str, Any]]) -> Dict[str, Any]:
    """The checkpoint layout for ``param_groups`` and a per-param ``state`` mapping (param → dict)."""
    index: Dict[int, int] = {}
    groups = []
    for g in param_groups:
        packed = {k: v for k, v in g.items() if k != "params"}
        packed["params"] = [index.setdefault(id(p), len(index)) for p in g["params"]]
        groups.append(packed)
    return {"state": {index[id(p)]: s for p, s in state.items() if id(p) in index}, "param_groups": groups}


def plan_load(
    state_dict: Any,
    param_groups: Sequence[Mapping[str, Any]],
    runtimes: Sequence[GroupRuntime],
    validate_group: ValidateGroup,
) -> List[GroupLoad]:
    """Check a whole checkpoint against the optimizer's groups; one ``GroupLoad`` per group, in order.

    Nothing is changed (the checkpoint's values are deep-copied into the new group dicts). Raises
    ValueError/TypeError naming the mismatch: number of groups or params, algorithms, keys, hparam
    values, state keys, shapes and types.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    for key in ("state", "param_groups"):
        if key not in state_dict:
            raise ValueError(f"checkpoint has no {key!r} entry; expected the dict returned by state_dict()")
    saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(saved_groups, (list, tuple)):
        raise TypeError(f"checkpoint 'param_groups' must be a list, got {type(saved_groups).__name__}")
    if not isinstance(saved_state, Mapping):
        raise TypeError(f"checkpoint 'state' must be a dict, got {type(saved_state).__name__}")
    if len(saved_groups) != len(param_groups):
        raise ValueError(
            f"checkpoint has {len(saved_groups)} param groups but this optimizer has {len(param_groups)} "
            "(a 'polargrad' group with non-matrix params is split in two; build the optimizer as it was built)"
        )

    used_ids: Dict[Any, str] = {}
    plans = []
    for i, (group, rt, saved) in enumerate(zip(param_groups, runtimes, saved_groups)):
        where = f"checkpoint param_groups[{i}]"
        if not isinstance(saved, Mapping):
            raise TypeError(f"{where} must be a dict, got {type(saved).__name__}")
        if "algorithm" not in saved:
            raise ValueError(
                f"{where} has no 'algorithm' key: the checkpoint was not saved by fpolar.optim. A torch.optim.Muon "
                "checkpoint loads into fpolar.optim.Muon (see fpolar.optim.torch_migration)"
            )
        if saved["algorithm"] != rt.algorithm:
            raise ValueError(
                f"{where} runs algorithm {saved['algorithm']!r} but this optimizer's group {i} runs {rt.algorithm!r}"
            )
        ids = saved.get("params")
        if not isinstance(ids, (list, tuple)):
            raise ValueError(f"{where} has no 'params' list")
        if len(ids) != len(rt.params):
            raise ValueError(f"{where} has {len(ids)} params but this optimizer's group {i} has {len(rt.params)}")
        for pos, sid in enumerate(ids):
            if sid in used_ids:
                raise ValueError(f"{where}: param id {sid!r} also appears in {used_ids[sid]}")
            used_ids[sid] = f"{where}['params'][{pos}]"

        new_group = copy.deepcopy({k: v for k, v in saved.items() if k != "params"})
        new_group["params"] = group["params"]
        if "param_names" not in new_group and "param_names" in group:
            new_group["param_names"] = group["param_names"]
        hparams = validate_group(new_group, where)

        # An empty dict counts as no state: reading opt.state[p] for a param without state (a
        # defaultdict, as in torch.optim) leaves one behind.
        present = [pos for pos, sid in enumerate(ids) if saved_state.get(sid)]
        entries = None
        if present:
            if len(present) != len(ids):
                absent = [pos for pos in range(len(ids)) if pos not in set(present)]
                raise ValueError(
                    f"{where}: state is missing for params at positions {absent} (present for {present}); "
                    "a group has state for all of its params or for none"
                )
            entries = [saved_state[sid] for sid in ids]
            _check_entries(entries, rt, where)
        plans.append(GroupLoad(i, new_group, hparams, entries))

    unknown = [k for k, v in saved_state.items() if k not in used_ids and v]
    if unknown:
        raise ValueError(f"checkpoint 'state' has entries for param ids {unknown} that no param group lists")
    return plans


def _check_entries(entries: List[Mapping[str, Any]], rt: GroupRuntime, where: str) -> None:
    keys = STATE_KEYS[rt.algorithm]
    for pos, (entry, p) in enumerate(zip(entries, rt.params)):
        at = f"{where}, state of params[{pos}] (shape {tuple(p.shape)})"
        if not isinstance(entry, Mapping):
            raise TypeError(f"{at} must be a dict, got {type(entry).__name__}")
        missing = [k for k in keys if k not in entry]
        if missing:
            raise ValueError(f"{at} lacks {missing} (a {rt.algorithm!r} state has {list(keys)})")
        extra = [k for k in entry if k not in keys]
        if extra:
            raise ValueError(f"{at} has unexpected keys {extra} (a {rt.algorithm!r} state has {list(keys)})")
        for k in keys:
            v = entry[k]
            if k == "step":
                if isinstance(v, Tensor):
                    if v.numel() != 1 or v.is_complex() or v.dtype == torch.bool:
                        raise ValueError(f"{at}: 'step' must be a one-element real tensor, got shape {tuple(v.shape)}, {v.dtype}")
                elif isinstance(v, bool) or not isinstance(v, Real):
                    raise TypeError(f"{at}: 'step' must be a number or a tensor, got {type(v).__name__}")
                continue
            if not isinstance(v, Tensor):
                raise TypeError(f"{at}: {k!r} must be a tensor, got {type(v).__name__}")
            if v.shape != p.shape:
                raise ValueError(f"{at}: {k!r} has shape {tuple(v.shape)}, expected {tuple(p.shape)}")
            if not v.is_floating_point() or v.layout != torch.strided:
                raise TypeError(f"{at}: {k!r} must be a dense floating tensor, got {v.dtype}, {v.layout}")
    if rt.algorithm == "polargrad":
        # One count per group in the functional state: every param must carry the same one.
        steps = {float(_as_tensor(e["step"])) for e in entries}
        if len(steps) > 1:
            raise ValueError(f"{where}: params of one 'polargrad' group have different step counts {sorted(steps)}")


def _as_tensor(v: Any) -> Tensor:
    return v.detach().reshape(()) if isinstance(v, Tensor) else torch.tensor(float(v))


def _reusable(rt: GroupRuntime, hparams: HParams) -> bool:
    """Whether the group's current functional state has the layout the checkpoint's hparams ask for."""
    if rt.state is None:
        return False
    try:
        rt.state.check_matches(rt.params)
    except ValueError:
        return False
    if isinstance(rt.state, PolarGradState):
        want = getattr(hparams, "momentum_dtype", None)
        return all(b.dtype == (want or g.dtype) for b, g in zip(rt.state.buffers, rt.state.groups))
    return isinstance(rt.state, AdamWState)


@torch.no_grad()
def loaded_state(load: GroupLoad, runtime: GroupRuntime) -> Optional[FunctionalState]:
    """The functional state ``runtime``'s group has after ``load``: None if the checkpoint has none for
    it; else its current state with the saved values copied in (when its layout fits the loaded
    hparams), or a new state holding them. Call only after ``plan_load`` accepted the whole checkpoint:
    the copy writes into the live buffers. Values are cast to each buffer's dtype and device."""
    if load.entries is None:
        return None
    state = runtime.state if _reusable(runtime, load.hparams) else runtime.new_state(load.hparams)
    if isinstance(state, PolarGradState):
        state.step.copy_(_as_tensor(load.entries[0]["step"]))
        for dst, e in zip(state.momentum, load.entries):
            dst.copy_(e["momentum_buffer"])
    else:
        for j, e in enumerate(load.entries):
            state.step[j].copy_(_as_tensor(e["step"]))
            state.exp_avg[j].copy_(e["exp_avg"])
            state.exp_avg_sq[j].copy_(e["exp_avg_sq"])
    return state
