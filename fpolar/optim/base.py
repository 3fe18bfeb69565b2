"""``PolarOptimizer``: the torch.optim.Optimizer shell shared by ``PolarGrad`` and ``Muon``.

The class is bookkeeping only; the math is ``fpolar.polargrad_step`` / ``fpolar.adamw_step``, called once
per param group per step on the whole group (one batched polar call per shape group inside).

``step()`` has two halves:

* ``_prepare`` (eager, excluded from torch.compile): checks every group's params and grads, rebuilds a
  group's hparams when its static config changed, builds functional state for groups that see their
  first grad, and refills the 0-d lr / weight-decay tensors from the group's floats. It raises before
  any tensor is touched, so a bad grad in the last group leaves the first groups unchanged too.
* the math: ``_apply`` (traceable), the functional steps. Under ``torch.compile(opt.step)`` it is one
  graph whose inputs include the lr tensors, so a scheduler changing ``group["lr"]`` does not
  recompile it. By default on CUDA the same steps run as one CUDA graph per parameter layout
  instead (``fpolar.optim.compiled_step``; the ``compiled`` argument chooses).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from ..adamw import check_step_inputs as check_adamw_inputs
from ..dtensor import is_dtensor
from ..hparams import AdamWHParams, PolarGradHParams
from ..polargrad import check_step_inputs as check_polargrad_inputs
from ..validation import check_params_and_grads, check_real_dense_float
from . import checkpoint
from .checked_inputs import step_inputs_fingerprint
from .compiled_step import Compiled, StepProgram, check_compiled, resolve_backend, run_math
from .group_state import (
    ADAMW_KEYS,
    SCHEDULED_KEYS,
    GroupRuntime,
    HParams,
    fill_scalar,
    freeze,
    scalar_dtype,
    scalar_value,
)
from .groups import split_group

Scalar = Union[float, Tensor]


@contextlib.contextmanager
def _naming(where: str) -> Iterator[None]:
    """Prefix ValueError/TypeError messages with the group they are about."""
    try:
        yield
    except (ValueError, TypeError) as e:
        raise type(e)(f"{where}: {e}") from None


class PolarOptimizer(torch.optim.Optimizer):
    """Base class: param groups of two algorithms ("polargrad", "adamw") over the functional steps.

    Subclasses define ``polar_keys`` (the keys of a "polargrad" group, incl. "lr" and "weight_decay")
    and ``_polar_hparams`` (how such a group becomes ``PolarGradHParams``). ``defaults`` must hold
    every polar key, "algorithm", and "adamw_lr", "adamw_betas", "adamw_eps", "adamw_weight_decay".

    State: per param, ``self.state[p]`` holds the functional state's own tensors (not copies):
    "polargrad" groups ``{"momentum_buffer", "step"}`` (momentum is a view into its shape group's
    stacked buffer; "step" is the group's shared step count), "adamw" groups ``{"step", "exp_avg",
    "exp_avg_sq"}`` as in torch.optim.AdamW. It is created at a group's first ``step()`` in which any
    of its params has a grad.
    """

    polar_keys: Tuple[str, ...] = ()
    # "skip": a step() whose grads (any group) hold NaN/±inf changes nothing and is counted in
    # ``skipped_steps``, decided on the device (on sharded params by every rank alike: one all_reduce
    # of one element per step); "propagate": no check. Set it on the instance.
    nonfinite: str = "skip"

    def __init__(self, params: Any, defaults: Dict[str, Any], compiled: Compiled = None) -> None:
        self._skipped: Optional[Tensor] = None
        if isinstance(params, set):
            raise TypeError("params must be an ordered collection (a list), not a set: set order changes between runs")
        check_compiled(compiled)  # a bad value raises here, before anything is built
        # add_param_group (called by the base constructor) appends here.
        self._runtime: List[GroupRuntime] = []
        # How step() runs the math (fpolar.optim.compiled_step): None = CUDA graph on CUDA, else eager.
        self._compiled_arg: Compiled = compiled
        self._program: Optional[StepProgram] = None
        super().__init__(params, defaults)
        self._step_program()  # compiled="cuda_graph" with a param off CUDA raises now

    # ----------------------------------------------------------------- hparams

    def _polar_hparams(self, group: Mapping[str, Any], lr: Scalar, weight_decay: Scalar) -> PolarGradHParams:
        raise NotImplementedError

    def group_keys(self, algorithm: str) -> Tuple[str, ...]:
        """The keys every group of ``algorithm`` has (and every checkpoint group must have)."""
        return self.polar_keys if algorithm == "polargrad" else ADAMW_KEYS

    def _hparams(self, group: Mapping[str, Any], algorithm: str, lr: Scalar, weight_decay: Scalar) -> HParams:
        if algorithm == "polargrad":
            return self._polar_hparams(group, lr, weight_decay)
        return AdamWHParams(
            lr=lr, betas=group["betas"], eps=group["eps"], weight_decay=weight_decay, nonfinite="propagate"
        )

    def validate_group(self, group: Mapping[str, Any], where: str) -> HParams:
        """Check a complete single-algorithm group's keys and values; returns hparams with the group's
        current lr / weight decay (as given, floats or 0-d tensors). Raises ValueError/TypeError naming
        ``where`` and the value. Changes nothing."""
        with _naming(where):
            algorithm = group["algorithm"]
            missing = [k for k in self.group_keys(algorithm) if k not in group]
            if missing:
                raise ValueError(f"the {algorithm!r} group lacks the keys {missing}")
            scalars = []
            for k in SCHEDULED_KEYS:
                v = scalar_value(group[k], k)
                scalars.append(v.detach().reshape(()) if isinstance(v, Tensor) else v)
            return self._hparams(group, algorithm, *scalars)

    def _static_key(self, group: Mapping[str, Any], rt: GroupRuntime) -> tuple:
        """Everything hparams depend on except the scheduled scalars, plus where the scalars live."""
        p = rt.params[0]
        keys = [k for k in self.group_keys(rt.algorithm) if k not in SCHEDULED_KEYS]
        return (p.device, scalar_dtype(rt.params)) + tuple((k, freeze(group[k])) for k in keys)

    # ----------------------------------------------------------------- groups

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a param group (see ``fpolar.optim.groups`` for how it is split and routed).

        ``param_group`` is ``{"params": tensors or (name, tensor) pairs, "algorithm"?: "polargrad" |
        "adamw", <hparams>...}``; missing hparams take the optimizer's defaults. A "polargrad" group
        holding non-matrix params becomes two groups (matrices, then AdamW). The dict given is not
        modified. Everything is validated before anything is added: on error the optimizer is unchanged.

        Raises:
            TypeError/ValueError naming the value: a non-tensor, non-leaf, non-float, complex or sparse
            param; a param given twice or already in another group; an unknown algorithm; an invalid
            hparam (e.g. negative lr).
        """
        if not isinstance(param_group, Mapping):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        where = f"param_groups[{len(self.param_groups)}]"
        group = dict(param_group)
        if "params" not in group:
            raise ValueError(f"{where}: a param group needs a 'params' entry")
        params, names = _params_and_names(group["params"], where)
        if "param_names" in group and names is None:
            names = list(group["param_names"])
            if len(names) != len(params):
                raise ValueError(f"{where}: {len(names)} param_names for {len(params)} params")
        group["params"] = params
        group.pop("param_names", None)
        if names is not None:
            group["param_names"] = names

        seen: Dict[int, int] = {}
        for i, p in enumerate(params):
            label = names[i] if names is not None else f"params[{i}]"
            check_real_dense_float(p, f"{where} {label}")
            if not (p.is_leaf or p.retains_grad):
                raise ValueError(f"{where} {label}: can't optimize a non-leaf tensor")
            if id(p) in seen:
                raise ValueError(f"{where}: {label} (shape {tuple(p.shape)}) is listed twice (also at index {seen[id(p)]})")
            seen[id(p)] = i
        for j, other in enumerate(self.param_groups):
            for p in other["params"]:
                if id(p) in seen:
                    i = seen[id(p)]
                    label = names[i] if names is not None else f"params[{i}]"
                    raise ValueError(
                        f"{where}: {label} (shape {tuple(p.shape)}) is already in param_groups[{j}]; "
                        "a param can be in only one group"
                    )
            if ("param_names" in other) != (names is not None):
                raise ValueError(
                    f"{where}: all param groups must be named (params as (name, tensor) pairs) or none; "
                    f"param_groups[{j}] is {'named' if 'param_names' in other else 'not named'}"
                )

        parts = split_group(group, defaults=self.defaults, polar_keys=self.polar_keys, where=where)
        for k, part in enumerate(parts):
            self.validate_group(part, f"param_groups[{len(self.param_groups) + k}]")
        for part in parts:
            self.param_groups.append(part)
            self._runtime.append(GroupRuntime(part["algorithm"], list(part["params"])))

    # ----------------------------------------------------------------- step

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:  # type: ignore[override]
        """One optimizer step on every param group. Params and state are updated in place.

        Args:
            closure: optional; re-evaluates the model and returns the loss (run with grad enabled).

        Returns:
            The closure's loss, or None.

        Params whose ``.grad`` is None are skipped (param and state untouched). A group's step count
        advances when at least one of its params has a grad.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            program = self._step_program()
            self._prepare()
            if program is None:
                self._apply()
            else:
                program(self)
        return loss

    def _step_program(self) -> Optional[StepProgram]:
        """The program that runs this step's math, or None for eager ``_apply``: never under
        torch.compile (the caller's compile traces ``_apply``); chosen from the ``compiled`` argument
        and the params' devices at every step, so groups added later count."""
        if torch.compiler.is_compiling():
            return None
        if self._compiled_arg is None and any(is_dtensor(p) for rt in self._runtime for p in rt.params):
            # Sharded (DTensor) params step eagerly by default: their step runs collectives, which the
            # CUDA-graph program has not been tested capturing (NCCL); compiled=... still asks for it.
            self._program = None
            return None
        devices = {p.device for rt in self._runtime for p in rt.params}
        backend = resolve_backend(self._compiled_arg, sorted(devices, key=str))
        if backend is None:
            self._program = None
        elif self._program is None or self._program.backend != backend:
            self._program = StepProgram(backend)
        return self._program

    @torch.compiler.disable
    def _prepare(self) -> None:
        """Validate every group, then (only then) update hparams, build state, fill the lr tensors.

        Excluded from torch.compile: it reads ``group["lr"]`` as a Python float, which a compiled
        region would bake in as a constant and recompile on.
        """
        if len(self.param_groups) != len(self._runtime):
            raise RuntimeError(
                f"param_groups has {len(self.param_groups)} groups but the optimizer set up {len(self._runtime)}; "
                "add groups with add_param_group"
            )
        plans = []
        for i, (group, rt) in enumerate(zip(self.param_groups, self._runtime)):
            where = f"param_groups[{i}]"
            if not rt.matches(group["params"]):
                raise RuntimeError(
                    f"{where}['params'] was changed in place; add params with add_param_group instead"
                )
            if not rt.params:
                continue
            with _naming(where):
                grads = [p.grad for p in rt.params]
                # Inputs that read as the last ones that passed need no second pass of the checks
                # (the host's time per step: fpolar.optim.checked_inputs).
                inputs = step_inputs_fingerprint(rt.params, grads, rt.state, rt.hparams)
                checked = inputs is not None and inputs.same_as(rt.checked)
                if not checked:
                    check_params_and_grads(rt.params, grads, matrices=rt.algorithm == "polargrad")
                    if rt.state is not None:
                        rt.state.check_matches(rt.params)
                lr = scalar_value(group["lr"], "lr")
                wd = scalar_value(group["weight_decay"], "weight_decay")
                key = self._static_key(group, rt)
                rebuilt = None
                if key != rt.key:
                    dtype, device = scalar_dtype(rt.params), rt.params[0].device
                    lr_t = torch.zeros((), dtype=dtype, device=device)
                    wd_t = torch.zeros((), dtype=dtype, device=device)
                    fill_scalar(lr_t, lr)
                    fill_scalar(wd_t, wd)
                    rebuilt = (self._hparams(group, rt.algorithm, lr_t, wd_t), lr_t, wd_t)
                # the functional step's own checks, now, so no group steps before all pass
                hp = rebuilt[0] if rebuilt is not None else rt.hparams
                if rebuilt is not None or not checked:
                    if rt.algorithm == "polargrad":
                        check_polargrad_inputs(rt.params, grads, rt.state, hp)  # type: ignore[arg-type]
                    else:
                        check_adamw_inputs(rt.params, grads, rt.state, hp)  # type: ignore[arg-type]
                if inputs is not None and rebuilt is not None:
                    inputs = inputs._replace(hparams=hp)
            plans.append((rt, key, rebuilt, lr, wd, any(g is not None for g in grads), inputs))

        for rt, key, rebuilt, lr, wd, has_grad, inputs in plans:
            rt.checked = inputs  # every group passed: these inputs need no checks while they stay so
            if rebuilt is not None:
                rt.hparams, rt.lr, rt.weight_decay = rebuilt
                rt.key = key
            if rt.state is None and has_grad:
                self._install_state(rt, rt.new_state(rt.hparams))  # type: ignore[arg-type]
            fill_scalar(rt.lr, lr)  # type: ignore[arg-type]
            fill_scalar(rt.weight_decay, wd)  # type: ignore[arg-type]
        self._make_skip_counter()

    def _apply(self) -> None:
        """The eager math: ``compiled_step.run_math`` over the groups with a grad (the same code the
        compiled programs run)."""
        work = [
            (rt, grads, True)
            for rt in self._runtime
            if rt.state is not None
            for grads in [[p.grad for p in rt.params]]
            if any(g is not None for g in grads)  # a group without grads: its step count stays as is
        ]
        if work:
            run_math(work, fused_adamw=False, skipped=self._skip_counter())

    def _skip_counter(self) -> Optional[Tensor]:
        """The 0-d int64 ``skipped_steps`` counter made by ``_prepare``, or None where the step does not
        skip (``nonfinite="propagate"``). Only read here: ``_apply`` is traced by a caller's
        torch.compile, which cannot create attributes on the optimizer."""
        if self.nonfinite != "skip":
            return None
        return self._skipped

    def _make_skip_counter(self) -> None:
        """Create the skip counter once, on the first param's device (a captured step keeps its address).
        On sharded (DTensor) params every rank counts the same skips: ``run_math`` agrees on the flag."""
        if self.nonfinite != "skip":
            return
        if self._skipped is None:
            device = next((p.device for rt in self._runtime for p in rt.params), torch.device("cpu"))
            self._skipped = torch.zeros((), dtype=torch.int64, device=device)

    @property
    def skipped_steps(self) -> Tensor:
        """0-d int64 tensor: ``step()`` calls skipped because a grad (or a scheduled lr / weight decay
        tensor) was NaN/±inf. Read it with ``.item()`` when a host sync is fine (e.g. for logging)."""
        if self._skipped is None:
            return torch.zeros((), dtype=torch.int64)
        return self._skipped

    def _install_state(self, rt: GroupRuntime, state: Any) -> None:
        """Make ``state`` the group's functional state and expose its tensors as ``self.state[p]``."""
        rt.state = state
        for p, entry in zip(rt.params, rt.per_param_state(state)):
            self.state[p] = entry

    def _drop_state(self, rt: GroupRuntime) -> None:
        rt.state = None
        for p in rt.params:
            self.state.pop(p, None)

    # ----------------------------------------------------------------- checkpoints

    def state_dict(self) -> Dict[str, Any]:
        """torch.optim's layout: ``{"state": {index: per-param dict}, "param_groups": [group dicts with
        "params" as indices]}``, indices numbered across groups in order.

        Like torch.optim, the state tensors are the live ones, not copies: ``torch.save`` writes their
        values at the time of the call, but a dict kept in memory changes as training goes on (take
        ``copy.deepcopy(opt.state_dict())`` for a snapshot). A "polargrad" group's momenta are views
        of one stacked buffer per shape group; ``torch.save`` stores that buffer once. Only tensors,
        numbers, strings, tuples, None and torch dtypes appear, so ``torch.load(weights_only=True)``
        reads it. Groups that never stepped have no state entries.
        """
        return super().state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint from ``state_dict()`` of an optimizer built the same way.

        All of it is validated first — number of groups and params per group, each group's algorithm,
        keys and hparam values, each state entry's keys, shapes and types — and on any mismatch a
        ValueError/TypeError names it and the optimizer is left unchanged. Then state is copied into
        the existing buffers (views taken earlier stay valid), cast to each buffer's dtype and device
        (the param's, or ``momentum_dtype``); the step counts stay float32. Group hparams (lr, …)
        are replaced by the checkpoint's, as in torch.optim.
        """
        state_dict = dict(state_dict) if isinstance(state_dict, Mapping) else state_dict
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        self._load(state_dict)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def __getstate__(self) -> Dict[str, Any]:
        # torch.optim keeps only defaults, state and param_groups; the compiled choice travels too
        # (the program itself, with its CUDA graph, is rebuilt at the next step).
        return {**super().__getstate__(), "_compiled_arg": self.__dict__.get("_compiled_arg")}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        state = dict(state)
        state.setdefault("_compiled_arg", self.__dict__.get("_compiled_arg"))
        super().__setstate__(state)
        self._program = None
        if "_runtime" not in self.__dict__:
            # Unpickled or deep-copied: the functional state objects were not part of the pickle.
            # Rebuild them and copy the per-param state back in, as a checkpoint load would.
            per_param = self.state
            self.state = defaultdict(dict)
            self._runtime = [GroupRuntime(g["algorithm"], list(g["params"])) for g in self.param_groups]
            self._load(checkpoint.pack(self.param_groups, per_param))

    @torch.no_grad()
    def _load(self, state_dict: Any) -> None:
        """Validate the whole checkpoint (``checkpoint.plan_load``; raises before any change), then
        replace each group's dict and state."""
        loads = checkpoint.plan_load(state_dict, self.param_groups, self._runtime, self.validate_group)
        for load in loads:
            rt = self._runtime[load.index]
            self.param_groups[load.index] = load.group
            rt.key = None  # hparams are rebuilt from the loaded group at the next step
            state = checkpoint.loaded_state(load, rt)
            if state is None:
                self._drop_state(rt)
            else:
                self._install_state(rt, state)


def _params_and_names(params: Any, where: str) -> Tuple[List[Tensor], Optional[List[str]]]:
    """A group's "params" as a list of tensors, plus names if given as (name, tensor) pairs."""
    if isinstance(params, Tensor):
        return [params], None
    if isinstance(params, set):
        raise TypeError(
            f"{where}: params must be an ordered collection (a list), not a set: set order changes between runs"
        )
    items = list(params)
    named = [isinstance(x, tuple) for x in items]
    if any(named) and not all(named):
        raise ValueError(f"{where}: give all params as (name, tensor) pairs or none")
    if items and all(named):
        for x in items:
            if len(x) != 2:
                raise ValueError(f"{where}: a named param must be a (name, tensor) pair, got {x!r}")
        return [x[1] for x in items], [x[0] for x in items]
    for i, x in enumerate(items):
        if not isinstance(x, Tensor):
            raise TypeError(f"{where}: params[{i}] is a {type(x).__name__}, not a tensor")
    return items, None
