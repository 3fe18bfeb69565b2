"""Moving a run between torch.optim.Muon (+ torch.optim.AdamW) and ``fpolar.optim.Muon``, state included.

Layouts (torch.optim's, both sides):

    torch.optim.Muon   group keys ``TORCH_MUON_KEYS``; per-param state {"momentum_buffer"} (created at
                       a param's first grad; a param without one has zero momentum)
    torch.optim.AdamW  group keys lr, betas, eps, weight_decay, amsgrad, maximize, …; per-param state
                       {"step", "exp_avg", "exp_avg_sq"}
    fpolar.optim.Muon  "polargrad" groups: ``TORCH_MUON_KEYS`` + fpolar's keys; state {"momentum_buffer",
                       "step"}; "adamw" groups: lr, betas, eps, weight_decay; state as torch.optim.AdamW

Mapping: the torch Muon's groups are the fpolar optimizer's "polargrad" groups, in order, with the same
params in the same order; the torch AdamW's groups are its "adamw" groups, likewise. The momentum EMA,
Nesterov input, shape scale and decoupled decay are the same math on both sides, so the next steps
agree up to Newton–Schulz rounding (torch iterates in bf16, also on CPU; fpolar in fp32 on CPU, bf16 on
CUDA). torch.optim.Muon keeps no step count: a migrated "polargrad" group starts counting at 0, which
changes no number (the count is not used by the Muon math).

Everything here works on plain data (group dicts and state dicts); the optimizer classes call it.
Nothing is changed until the whole conversion is checked.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

# torch.optim.Muon's group keys (torch 2.9 – 2.13).
TORCH_MUON_KEYS: Tuple[str, ...] = (
    "lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps", "adjust_lr_fn",
)  # fmt: skip

# torch.optim.AdamW keys fpolar's AdamW has (the rest choose an implementation, or a variant refused below).
TORCH_ADAMW_KEYS: Tuple[str, ...] = ("lr", "betas", "eps", "weight_decay")

# torch.optim.AdamW options whose non-default value is another algorithm than fpolar's AdamW.
TORCH_ADAMW_VARIANTS: Dict[str, Any] = {"amsgrad": False, "maximize": False, "decoupled_weight_decay": True}

# torch.optim.AdamW keys that choose an implementation (foreach, fused, …) or a variant: not carried over.
TORCH_ADAMW_ONLY: Tuple[str, ...] = (
    "amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay",
)  # fmt: skip

# fpolar Muon settings that torch.optim.Muon can express, with the value it needs.
TORCH_EXPRESSIBLE: Dict[str, Any] = {
    "scale": None, "coefficients": None, "weight_decay_mode": "decoupled", "order": "momentum_first",
    "extra_scale": 1.0, "polar": "newton_schulz", "schedule_overflow": "repeat_last", "momentum_dtype": None,
}  # fmt: skip


def is_torch_muon_state_dict(state_dict: Any) -> bool:
    """Whether ``state_dict`` looks like ``torch.optim.Muon.state_dict()`` (not fpolar's: no "algorithm")."""
    if not isinstance(state_dict, Mapping):
        return False
    groups = state_dict.get("param_groups")
    if not isinstance(groups, (list, tuple)) or not groups:
        return False
    return all(
        isinstance(g, Mapping) and "algorithm" not in g and all(k in g for k in TORCH_MUON_KEYS) for g in groups
    )


def _check_torch_state_dict(state_dict: Any, what: str) -> Tuple[List[Mapping[str, Any]], Mapping[Any, Any]]:
    if not isinstance(state_dict, Mapping) or "param_groups" not in state_dict or "state" not in state_dict:
        raise TypeError(f"{what} must be the dict returned by its state_dict(), got {type(state_dict).__name__}")
    groups, state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(groups, (list, tuple)) or not isinstance(state, Mapping):
        raise TypeError(f"{what}: 'param_groups' must be a list and 'state' a dict")
    return list(groups), state


def _map_groups(
    saved_groups: List[Mapping[str, Any]],
    targets: List[int],
    param_groups: Sequence[Mapping[str, Any]],
    what: str,
    algorithm: str,
) -> None:
    if len(saved_groups) != len(targets):
        raise ValueError(
            f"{what} has {len(saved_groups)} param groups but this optimizer has {len(targets)} {algorithm!r} groups; "
            f"build the fpolar optimizer with the same groups, params in the same order "
            f"(or use fpolar.optim.Muon.from_torch(muon, adamw) on the live optimizers)"
        )
    for j, (saved, i) in enumerate(zip(saved_groups, targets)):
        n_saved, n_ours = len(saved.get("params", ())), len(param_groups[i]["params"])
        if n_saved != n_ours:
            raise ValueError(
                f"{what} param_groups[{j}] has {n_saved} params but this optimizer's group {i} ({algorithm!r}) "
                f"has {n_ours}; the groups must hold the same params in the same order"
            )


def fpolar_state_dict_from_torch(
    current: Mapping[str, Any],
    param_groups: Sequence[Mapping[str, Any]],
    muon_state_dict: Optional[Mapping[str, Any]] = None,
    adamw_state_dict: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """An fpolar.optim checkpoint holding a torch.optim.Muon's and/or torch.optim.AdamW's groups and state.

    Args:
        current: the fpolar optimizer's own ``state_dict()``: groups and state not covered by the torch
            checkpoints (e.g. its "adamw" groups when only a Muon checkpoint is given) are kept as they are,
            and fpolar-only keys of a "polargrad" group (``polar_dtype``, ``kernels``, …) keep their values.
        param_groups: the fpolar optimizer's ``param_groups`` (tensors; shapes for zero momentum).
        muon_state_dict: ``torch.optim.Muon.state_dict()``; its groups become the "polargrad" groups, in order.
        adamw_state_dict: ``torch.optim.AdamW.state_dict()``; its groups become the "adamw" groups, in order.

    Returns:
        a new dict for ``fpolar.optim.Muon.load_state_dict`` (which validates it again). Nothing given is
        modified; the tensors are the given ones, not copies.

    Raises:
        ValueError/TypeError: group or param counts that do not match, a missing key, or an AdamW variant
        fpolar does not implement (amsgrad, maximize, decoupled_weight_decay=False).
    """
    groups = [copy.copy(dict(g)) for g in current["param_groups"]]
    state: Dict[Any, Any] = dict(current["state"])
    for algorithm, sd, what in (
        ("polargrad", muon_state_dict, "torch.optim.Muon checkpoint"),
        ("adamw", adamw_state_dict, "torch.optim.AdamW checkpoint"),
    ):
        if sd is None:
            continue
        saved_groups, saved_state = _check_torch_state_dict(sd, what)
        targets = [i for i, g in enumerate(param_groups) if g["algorithm"] == algorithm]
        _map_groups(saved_groups, targets, param_groups, what, algorithm)
        for j, (saved, i) in enumerate(zip(saved_groups, targets)):
            where = f"{what} param_groups[{j}]"
            keys = TORCH_MUON_KEYS if algorithm == "polargrad" else TORCH_ADAMW_KEYS
            missing = [k for k in keys if k not in saved]
            if missing:
                raise ValueError(f"{where} lacks {missing}: was it saved by torch.optim.{'Muon' if algorithm == 'polargrad' else 'AdamW'}?")
            if algorithm == "adamw":
                for k, ok in TORCH_ADAMW_VARIANTS.items():
                    if k in saved and saved[k] != ok:
                        raise ValueError(
                            f"{where} has {k}={saved[k]!r}; fpolar's AdamW is torch.optim.AdamW with {k}={ok!r} only"
                        )
            groups[i].update({k: saved[k] for k in keys})
            # keys neither side interprets (a scheduler's "initial_lr", a user's "name") travel along
            skip = set(keys) | set(TORCH_ADAMW_ONLY) | {"params", "param_names"}
            groups[i].update({k: v for k, v in saved.items() if k not in skip})
            ids, params = groups[i]["params"], param_groups[i]["params"]
            entries = [saved_state.get(sid) or None for sid in saved["params"]]
            for sid in ids:
                state.pop(sid, None)
            if not any(entries):
                continue  # the group never stepped
            for pos, (sid, p, e) in enumerate(zip(ids, params, entries)):
                if algorithm == "polargrad":
                    # torch creates a param's momentum at its first grad: none yet means zero momentum.
                    m = e.get("momentum_buffer") if e else None
                    if e and m is None:
                        raise ValueError(f"{where}: state of params[{pos}] has no 'momentum_buffer' (keys {sorted(e)})")
                    state[sid] = {"momentum_buffer": torch.zeros_like(p) if m is None else m, "step": 0.0}
                elif e is None:
                    raise ValueError(
                        f"{where}: params[{pos}] has no state while others in its group do; fpolar's AdamW keeps "
                        "state for all params of a group or none"
                    )
                else:
                    state[sid] = {k: e[k] for k in ("step", "exp_avg", "exp_avg_sq") if k in e}
    return {"state": state, "param_groups": groups}


def torch_state_dicts_from_fpolar(
    param_groups: Sequence[Mapping[str, Any]],
    per_param_state: Mapping[Tensor, Mapping[str, Any]],
    muon_template: Mapping[str, Any],
    adamw_template: Optional[Mapping[str, Any]] = None,
) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """The reverse: checkpoints for a torch.optim.Muon (and torch.optim.AdamW) built on the same params.

    Args:
        param_groups, per_param_state: the fpolar Muon's ``param_groups`` and ``state``.
        muon_template, adamw_template: the torch optimizers' own ``state_dict()`` (read for their group
            layout and torch-only keys such as ``foreach``; the values that matter come from fpolar).

    Returns:
        ``(muon_state_dict, adamw_state_dict or None)`` for their ``load_state_dict``; the state tensors
        are copies.

    Raises:
        ValueError: a setting torch.optim.Muon cannot express (e.g. ``scale="nuclear"``, 3-D or conv
        params), or groups that do not match the templates.
    """
    out: List[Optional[Dict[str, Any]]] = []
    for algorithm, template, what in (
        ("polargrad", muon_template, "torch.optim.Muon"),
        ("adamw", adamw_template, "torch.optim.AdamW"),
    ):
        ours = [g for g in param_groups if g["algorithm"] == algorithm]
        if template is None:
            if ours and any(per_param_state.get(p) for g in ours for p in g["params"]):
                raise ValueError(f"this optimizer has {len(ours)} {algorithm!r} groups with state: pass a {what} to receive them")
            out.append(None)
            continue
        t_groups, _ = _check_torch_state_dict(template, f"{what} state_dict")
        if len(t_groups) != len(ours) or any(len(t["params"]) != len(g["params"]) for t, g in zip(t_groups, ours)):
            raise ValueError(
                f"the {what} has groups of {[len(t['params']) for t in t_groups]} params but this optimizer's "
                f"{algorithm!r} groups have {[len(g['params']) for g in ours]}; build it on the same params, in order"
            )
        groups, state, index = [], {}, 0
        for i, (t, g) in enumerate(zip(t_groups, ours)):
            where = f"this optimizer's {algorithm!r} group {i}"
            if algorithm == "polargrad":
                for k, need in TORCH_EXPRESSIBLE.items():
                    if g.get(k, need) != need:
                        raise ValueError(f"{where} has {k}={g[k]!r}, which torch.optim.Muon cannot express (it needs {need!r})")
                for pos, p in enumerate(g["params"]):
                    if p.dim() != 2:
                        raise ValueError(f"{where}: params[{pos}] has shape {tuple(p.shape)}; torch.optim.Muon takes 2-D params only")
            keys = TORCH_MUON_KEYS if algorithm == "polargrad" else TORCH_ADAMW_KEYS
            new = {k: v for k, v in t.items() if k != "params"}
            new.update({k: g[k] for k in keys})
            new["params"] = list(range(index, index + len(g["params"])))
            groups.append(new)
            for p in g["params"]:
                s = per_param_state.get(p)
                if s:
                    if algorithm == "polargrad":
                        state[index] = {"momentum_buffer": s["momentum_buffer"].detach().clone()}
                    else:
                        state[index] = {k: s[k].detach().clone() for k in ("step", "exp_avg", "exp_avg_sq")}
                index += 1
        out.append({"state": state, "param_groups": groups})
    return out[0], out[1]  # type: ignore[return-value]
