"""Which parameters go to the polar step and which to AdamW, and how a param group is split accordingly.

Routing rules (the same in the optimizers and in ``param_groups``):

* A tensor is a **matrix** by ``fpolar.routing.is_matrix`` (≥ 2 dims and at least one element; the
  rule shared with ``fpolar.compile`` and the demo). Matrices in a "polargrad" group run the polar step.
* Everything else in a "polargrad" group (0-/1-D tensors: biases, norm gains, scalars; empty tensors)
  runs AdamW, in the same optimizer and the same ``step()``. The optimizer splits such a group in two
  at ``add_param_group`` time: the matrix group first, then an "adamw" group holding the rest with
  the ``adamw_*`` settings. Each group runs one algorithm, so LR schedulers scale both parts.
* An "adamw" group runs AdamW on all its params, whatever their shape (use it for embeddings and the
  output head; ``param_groups`` builds it for you).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from torch import Tensor, nn

from ..routing import is_matrix
from .group_state import ADAMW_KEYS, ALGORITHMS

# Keys of a "polargrad" group that configure the AdamW half split off from it.
ADAMW_OPTION_KEYS: Tuple[str, ...] = ("adamw_lr", "adamw_betas", "adamw_eps", "adamw_weight_decay")

# Last name component of an nn.Linear that ``param_groups`` treats as the output head.
HEAD_NAMES: Tuple[str, ...] = ("lm_head", "head", "classifier", "output")

ADAMW_FOR_CHOICES: Tuple[str, ...] = ("embedding", "head")

# torch.optim.AdamW's default weight decay: an explicit "adamw" group's unless given.
TORCH_ADAMW_WEIGHT_DECAY = 0.01

# Sequence-valued options stored as tuples, so two optimizers built from a list and a tuple compare equal.
_TUPLE_KEYS: Tuple[str, ...] = ("ns_coefficients", "adamw_betas")


def optimizer_defaults(polar_keys: Sequence[str], arguments: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``defaults`` of a ``PolarOptimizer`` from its constructor's arguments (e.g. ``locals()``).

    Layout, the same for every optimizer class: each key of ``polar_keys`` (the class's "polargrad"
    group keys), then ``"algorithm": "polargrad"``, then the ``adamw_*`` options. ``arguments`` must
    hold every key of ``polar_keys`` and ``ADAMW_OPTION_KEYS``; other entries are ignored.
    """
    defaults = {k: arguments[k] for k in polar_keys}
    defaults["algorithm"] = "polargrad"
    defaults.update({k: arguments[k] for k in ADAMW_OPTION_KEYS})
    for k in _TUPLE_KEYS:
        if k in defaults:
            defaults[k] = tuple(defaults[k])
    return defaults


def split_group(
    group: Mapping[str, Any], *, defaults: Mapping[str, Any], polar_keys: Sequence[str], where: str
) -> List[Dict[str, Any]]:
    """Resolve one user param group into single-algorithm groups with every key filled in.

    Args:
        group: ``{"params": [tensors], "param_names"?: [...], "algorithm"?: ..., <hparams>...}`` with
            ``params`` already a list of tensors. Not modified.
        defaults: the optimizer's defaults (its constructor arguments, incl. ``algorithm`` and the
            ``adamw_*`` options).
        polar_keys: the keys of a "polargrad" group of this optimizer class (incl. "lr", "weight_decay").
        where: how to name the group in error messages.

    Returns:
        One or two group dicts, in order: the "polargrad" part (matrices), then the "adamw" part. An
        empty input group gives one empty group of its algorithm. Keys unknown to fpolar (a user's
        "name", a scheduler's "initial_lr") are copied to every part.

    Raises:
        ValueError: unknown algorithm, or a key that belongs to the other algorithm (e.g. "betas" in a
        "polargrad" group, where it would be ignored).
    """
    algorithm = group.get("algorithm", defaults["algorithm"])
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{where}: unknown algorithm {algorithm!r}; expected one of {list(ALGORITHMS)}")
    polar_keys = tuple(polar_keys)
    known = set(polar_keys) | set(ADAMW_KEYS) | set(ADAMW_OPTION_KEYS) | {"params", "param_names", "algorithm"}
    extras = {k: v for k, v in group.items() if k not in known}
    params: List[Tensor] = list(group["params"])
    names: Optional[List[str]] = list(group["param_names"]) if "param_names" in group else None

    if algorithm == "adamw":
        misplaced = [k for k in group if k in known and k not in ADAMW_KEYS and k not in ("params", "param_names", "algorithm")]
        if misplaced:
            raise ValueError(
                f"{where}: {misplaced} are not settings of an 'adamw' group, which takes {list(ADAMW_KEYS)}"
            )
        part = dict(extras)
        part.update(_adamw_settings(group, defaults, prefix=""))
        part.update(params=params, algorithm="adamw")
        if names is not None:
            part["param_names"] = names
        return [part]

    misplaced = [k for k in group if k in ADAMW_KEYS and k not in polar_keys]
    if misplaced:
        raise ValueError(
            f"{where}: {misplaced} are AdamW settings; in a 'polargrad' group write "
            f"{['adamw_' + k for k in misplaced]} (they apply to its non-matrix params)"
        )
    polar = dict(extras)
    polar.update({k: group.get(k, defaults[k]) for k in polar_keys})
    polar["algorithm"] = "polargrad"
    rest = [i for i, p in enumerate(params) if not is_matrix(p)]
    if not rest:
        polar["params"] = params
        if names is not None:
            polar["param_names"] = names
        return [polar]
    mats = [i for i, p in enumerate(params) if is_matrix(p)]
    adamw = dict(extras)
    adamw.update(_adamw_settings(group, defaults, prefix="adamw_", inherit=polar))
    adamw.update(params=[params[i] for i in rest], algorithm="adamw")
    if names is not None:
        adamw["param_names"] = [names[i] for i in rest]
    if not mats:
        return [adamw]
    polar["params"] = [params[i] for i in mats]
    if names is not None:
        polar["param_names"] = [names[i] for i in mats]
    return [polar, adamw]


def _adamw_settings(
    group: Mapping[str, Any], defaults: Mapping[str, Any], *, prefix: str, inherit: Optional[Mapping[str, Any]] = None
) -> Dict[str, Any]:
    """lr, betas, eps, weight_decay of an AdamW group: the group's own value, else the optimizer's
    ``adamw_*`` default. An ``adamw_lr`` of None means "the polar group's lr" (``inherit``, or the
    optimizer's ``lr`` for an explicit "adamw" group). An ``adamw_weight_decay`` of None means the polar
    group's weight_decay for the AdamW part split off a "polargrad" group (its params were given with the
    matrices), and torch.optim.AdamW's default 0.01 for an explicit "adamw" group (what the AdamW
    optimizer it replaces would have used: ``Muon(param_groups(model, adamw={"lr": 3e-3}), lr=0.02)`` is
    ``torch.optim.Muon(hidden, lr=0.02)`` + ``torch.optim.AdamW(rest, lr=3e-3)``)."""
    out = {}
    for k in ADAMW_KEYS:
        v = group.get(prefix + k, defaults["adamw_" + k])
        if v is None and k == "weight_decay" and inherit is None:
            v = TORCH_ADAMW_WEIGHT_DECAY
        elif v is None and k in ("lr", "weight_decay"):
            v = (inherit if inherit is not None else defaults)[k]
        out[k] = v
    return out


def param_groups(
    model: nn.Module,
    *,
    adamw_for: Iterable[str] = ("embedding", "head"),
    head_names: Iterable[str] = HEAD_NAMES,
    polar: Optional[Mapping[str, Any]] = None,
    adamw: Optional[Mapping[str, Any]] = None,
    with_names: bool = False,
) -> List[Dict[str, Any]]:
    """Split ``model``'s parameters into a "polargrad" group and an "adamw" group.

    Rules, per parameter (each counted once, as ``model.named_parameters()`` lists them):

    * 0-/1-D or empty tensors (biases, norm gains, scalars) → AdamW, always.
    * ``nn.Embedding`` / ``nn.EmbeddingBag`` weights → AdamW if "embedding" in ``adamw_for``.
    * The output head → AdamW if "head" in ``adamw_for``: the weight of an ``nn.Linear`` whose
      attribute name (last component of its module path) is in ``head_names``, or whose weight is
      the same tensor as an embedding weight (tied).
    * Every other tensor with ≥ 2 dims → the polar step (2-D, 3-D stacked matrices, ≥ 4-D convs).

    Args:
        model: any module; not modified.
        adamw_for: a subset of ("embedding", "head"); ``()`` sends all matrices to the polar step.
        head_names: module names that mark the output head. Default ("lm_head", "head",
            "classifier", "output").
        polar: extra keys for the polar group (e.g. ``{"lr": 0.02}``).
        adamw: extra keys for the AdamW group: "lr", "betas", "eps", "weight_decay". Missing ones take
            the optimizer's ``adamw_*`` arguments; where those are None, weight_decay is
            torch.optim.AdamW's 0.01 and lr the optimizer's lr.
        with_names: give params as ``(name, param)`` pairs, so that ``state_dict()`` records
            "param_names" (all groups of the optimizer must then be named).

    Returns:
        ``[{"params": [...], "algorithm": "polargrad", **polar}, {"params": [...], "algorithm": "adamw",
        **adamw}]``, leaving out a group with no params. Pass it as the optimizer's ``params``.

    Raises:
        ValueError: an unknown entry in ``adamw_for``.
    """
    adamw_for = tuple(adamw_for)
    unknown = [a for a in adamw_for if a not in ADAMW_FOR_CHOICES]
    if unknown:
        raise ValueError(f"unknown adamw_for entries {unknown}; expected a subset of {list(ADAMW_FOR_CHOICES)}")
    head_names = tuple(head_names)

    embedding_ids = set()
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            embedding_ids.add(id(module.weight))
    head_ids = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if name.rsplit(".", 1)[-1] in head_names or id(module.weight) in embedding_ids:
                head_ids.add(id(module.weight))
    to_adamw = set()
    if "embedding" in adamw_for:
        to_adamw |= embedding_ids
    if "head" in adamw_for:
        to_adamw |= head_ids

    matrices: List[Any] = []
    others: List[Any] = []
    for name, p in model.named_parameters():
        entry = (name, p) if with_names else p
        (matrices if is_matrix(p) and id(p) not in to_adamw else others).append(entry)
    groups = []
    if matrices:
        groups.append({**(polar or {}), "params": matrices, "algorithm": "polargrad"})
    if others:
        groups.append({**(adamw or {}), "params": others, "algorithm": "adamw"})
    return groups
