"""The math of a ``fpolar.optim`` step as one program per parameter layout, not op-by-op dispatch.

``PolarOptimizer.step()`` is ``_prepare`` (eager: validation, hparams, state, refilling the 0-d lr /
weight-decay tensors from the groups' floats) followed by the math: one ``polargrad_step`` or AdamW
step per group. Eagerly that math is hundreds of small kernel launches, so on a GPU the host, not the
device, sets the pace. ``StepProgram`` runs it as one program instead:

* ``"cuda_graph"`` (the CUDA default): the eager functional steps captured in one
  ``torch.cuda.CUDAGraph``. AdamW groups run torch's fused AdamW kernel (``fpolar.adamw_fused``).
  The first step of a layout runs eagerly on a side stream (cuBLAS and allocator warm-up must happen
  outside a capture), the second is captured and replayed, later ones replay. The capture reads
  the warm-up step's grad tensors (the second step's grads copied into them, once), whose addresses
  the fused glue's one-launch tables already know; so from the warm-up to the capture, and only then,
  a second set of grads is alive. The graph reads the lr
  and weight-decay tensors that ``_prepare`` refills, so schedulers work without a recapture. It
  reads the gradients at the addresses it was captured with: it keeps those tensors, and before a
  replay copies in any ``p.grad`` that is another tensor. So that no second set of grads is ever
  alive, the optimizer's ``zero_grad`` (also with ``set_to_none=True``, the default) leaves the
  captured tensors as the params' ``.grad``, zeroed in place (``zero_grads``): backward then adds
  into them where the graph reads them, and nothing is copied. A param that backward did not reach
  since (its grad's version counter unchanged) gets ``.grad = None`` at the next step
  (``release_untouched``), as ``set_to_none=True`` would have left it, so which params step is the
  same as with fresh grads.
* ``"compile"`` (any device; what ``compiled=True`` means off CUDA): the same calls under
  ``torch.compile(fullgraph=True)``; dynamo's guards recompile for a new layout, and the lr tensors
  are graph inputs, so a schedule does not recompile.

Layouts that cannot be captured (a group on the SVD backend, whose solver syncs with the host, or a
capture that fails: a warning says so) run eagerly. The layout — which groups step, which of their params have a grad, the identity of each group's
state and hparams objects (new ones come with a changed static hparam or a first step), whether an
AdamW group's weight decay is zero, and the params' addresses — is checked at every step; a new layout is warmed up and
captured again, and the old graph is dropped.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..adamw import adamw_step_prechecked
from ..adamw_fused import fused_adamw_available, fused_adamw_step_prechecked
from ..dtensor import is_dtensor, local_tensor
from ..inductor_options import inductor_options
from ..nonfinite import found_nonfinite
from ..nonfinite_ranks import agree, shard_groups
from ..polargrad import polargrad_step_prechecked
from .group_state import GroupRuntime

__all__ = ["BACKENDS", "Compiled", "StepProgram", "check_compiled", "copy_grads_into", "resolve_backend"]

BACKENDS: Tuple[str, ...] = ("cuda_graph", "compile")

Compiled = Union[None, bool, str]
# One stepping group: its runtime, its grads (None where a param has none), and whether an AdamW
# group needs its decay multiply (False only for a float weight decay of exactly 0).
Work = List[Tuple[GroupRuntime, List[Optional[Tensor]], bool]]


def resolve_backend(compiled: Compiled, devices: Sequence[torch.device]) -> Optional[str]:
    """The backend for the optimizer's ``compiled`` argument and its params' devices.

    None (default): "cuda_graph" when every param is on CUDA, else off (None). False: off. True: the
    device's default ("cuda_graph" on CUDA, "compile" elsewhere). A name from ``BACKENDS``: that one.
    Raises ValueError for another value, or "cuda_graph" with a param off CUDA.
    """
    check_compiled(compiled)
    on_cuda = bool(devices) and all(d.type == "cuda" for d in devices)
    if compiled is None:
        return "cuda_graph" if on_cuda else None
    if compiled is False:
        return None
    if compiled is True:
        return "cuda_graph" if on_cuda else "compile"
    if compiled == "cuda_graph" and not on_cuda:
        off = next((d for d in devices if d.type != "cuda"), None)
        raise ValueError(f"compiled='cuda_graph' needs every param on CUDA; one is on {off}")
    return compiled


def check_compiled(compiled: Compiled) -> None:
    """Raise ValueError unless ``compiled`` is None, True, False or a name from ``BACKENDS``."""
    if not (compiled is None or isinstance(compiled, bool) or (isinstance(compiled, str) and compiled in BACKENDS)):
        raise ValueError(f"compiled must be None, True, False or one of {list(BACKENDS)}, got {compiled!r}")


def _decays(group: dict) -> bool:
    wd = group["weight_decay"]
    return isinstance(wd, Tensor) or float(wd) != 0.0


def _capturable(work: Work) -> bool:
    """Whether the math can be recorded in a CUDA graph: not with the SVD backend, whose solver
    checks convergence on the host."""
    return not any(rt.algorithm == "polargrad" and rt.hparams.polar == "svd" for rt, _, _ in work)  # type: ignore[union-attr]


def run_math(work: Work, fused_adamw: bool, skipped: Optional[Tensor] = None) -> None:
    """The functional steps of the stepping groups, in order (what eager ``_apply`` does).

    ``skipped`` (the optimizer's 0-d int64 counter, or None for no check): one skip decision for the
    whole step, from every grad and every scheduled lr / weight-decay tensor, made on the device and
    passed to each call as ``found_inf``; the counter adds it. On sharded (DTensor) params each rank
    checks its own shards and one ``all_reduce`` per process group makes the flag every rank's
    (``fpolar.nonfinite_ranks``), so every rank skips, or steps, together."""
    found = None
    if skipped is not None:
        every = [g for _, grads, _ in work for g in grads]
        every += [t for rt, _, _ in work for t in (rt.lr, rt.weight_decay) if isinstance(t, Tensor)]
        found = found_nonfinite(every, skipped.device)
        found = agree(found, shard_groups([p for rt, _, _ in work for p in rt.params]))
        skipped.add_(found)
    # Every group's inputs passed the optimizer's checks in ``_prepare``: the steps do not check again.
    for rt, grads, decay in work:
        if rt.algorithm == "polargrad":
            polargrad_step_prechecked(rt.params, grads, rt.state, rt.hparams, found_inf=found)  # type: ignore[arg-type]
        elif fused_adamw:
            fused_adamw_step_prechecked(rt.params, grads, rt.state, rt.hparams, decay=decay, found_inf=found)  # type: ignore[arg-type]
        else:
            adamw_step_prechecked(rt.params, grads, rt.state, rt.hparams, found_inf=found)  # type: ignore[arg-type]


def copy_grads_into(kept: List[Tensor], fresh: List[Tensor]) -> None:
    """``kept[i].copy_(fresh[i])`` for each pair, in place, as one foreach copy. DTensor grads (FSDP2)
    are copied through their local shards: DTensor has no sharding rule for ``_foreach_copy_``, and two
    grads of one param share its placements, so the local copy is the whole copy. A pair whose layouts
    differ is copied as DTensors (``copy_`` redistributes)."""
    locals_, redistributed = [], []
    for k, f in zip(kept, fresh):
        plain = not is_dtensor(k) and not is_dtensor(f)
        alike = is_dtensor(k) and is_dtensor(f) and k.placements == f.placements and k.device_mesh == f.device_mesh
        (locals_ if plain or alike else redistributed).append((k, f))
    if locals_:
        torch._foreach_copy_([local_tensor(k) for k, _ in locals_], [local_tensor(f) for _, f in locals_])
    for k, f in redistributed:
        k.copy_(f)


def _alike(a: Tensor, b: Tensor) -> bool:
    """Whether ``b`` can stand in for grad ``a``: same shape, dtype, device, strides and layout."""
    return (
        a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and a.stride() == b.stride()
        and is_dtensor(a) == is_dtensor(b) and (not is_dtensor(a) or a.placements == b.placements)
    )


class StepProgram:
    """Runs an optimizer's math (after its ``_prepare``) through ``backend``; see the module docstring.

    Attributes (read them): ``backend``; ``captures``: CUDA graphs captured so far; ``warmups``:
    eager warm-up steps run for new layouts; ``layout``: the current layout key.
    """

    def __init__(self, backend: str, *, compiler: Any = None) -> None:
        """``backend``: one of ``BACKENDS``. ``compiler``: for "compile", a torch.compile backend to
        use instead of Inductor with ``fpolar.inductor_options()`` (tests pass a counting one)."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {list(BACKENDS)}")
        self.backend = backend
        self.captures = 0
        self.warmups = 0
        self.layout: Optional[tuple] = None
        self._warm = False  # the current layout has had its eager warm-up step
        self._graph: Optional["torch.cuda.CUDAGraph"] = None
        self._graph_grads: List[List[Optional[Tensor]]] = []
        self._compiled: Optional[Callable[[Work, bool, Optional[Tensor]], None]] = None
        self._compiler = compiler
        self._eager_layout: Optional[tuple] = None  # a layout whose capture failed: it runs eagerly
        # (param, its captured grad, the grad's version right after zero_grads zeroed it)
        self._zeroed: List[Tuple[Tensor, Tensor, int]] = []
        self._warm_grads: List[List[Optional[Tensor]]] = []  # the warm-up step's grads, until the capture

    def holds_grads(self) -> bool:
        """Whether a captured graph reads grads at fixed addresses (kept by this program)."""
        return self._graph is not None and any(g is not None for grads in self._graph_grads for g in grads)

    def zero_grads(self, params: Sequence[Tensor]) -> None:
        """``zero_grad(set_to_none=True)`` for a captured program: a param whose ``.grad`` is a tensor
        the graph reads keeps it, zeroed in place (detached from any graph, like torch.optim's
        ``set_to_none=False``); every other param's ``.grad`` becomes None. Backward adds into the
        kept ones, so the graph finds the new grads where it reads them: one set of grads alive."""
        kept = {id(g) for grads in self._graph_grads for g in grads if g is not None}
        static: List[Tensor] = []
        for p in params:
            g = p.grad
            if g is None:
                continue
            if id(g) in kept:
                if g.grad_fn is not None:
                    g.detach_()
                else:
                    g.requires_grad_(False)
                static.append(p)
            else:
                p.grad = None
        grads = [p.grad for p in static]
        if grads:
            torch._foreach_zero_(grads)  # type: ignore[arg-type]
        self._zeroed = [(p, g, g._version) for p, g in zip(static, grads)]  # type: ignore[misc]

    def release_untouched(self) -> None:
        """Set ``.grad = None`` on each param kept by ``zero_grads`` whose grad nothing wrote since
        (version counter unchanged): backward did not reach it, so with ``set_to_none=True`` it would
        have no grad and must not step. Reads only host-side counters (no sync)."""
        for p, g, version in self._zeroed:
            if p.grad is g and g._version == version:
                p.grad = None
        self._zeroed = []

    def __call__(self, optimizer: Any) -> None:
        """One step's math for ``optimizer`` (a ``PolarOptimizer`` whose ``_prepare`` just ran):
        params and state updated in place, as its eager ``_apply`` would."""
        work = [
            (rt, grads, rt.algorithm == "polargrad" or _decays(group))
            for group, rt in zip(optimizer.param_groups, optimizer._runtime)
            if rt.state is not None
            for grads in [[p.grad for p in rt.params]]
            if any(g is not None for g in grads)
        ]
        if not work:
            return
        skipped = optimizer._skip_counter()
        # Param addresses too: a graph writes where the params were at capture (``p.data = …`` moves one).
        layout = tuple(
            (id(rt), id(rt.state), id(rt.hparams), tuple(g is not None for g in grads), decay,
             tuple(p.data_ptr() for p in rt.params))
            for rt, grads, decay in work
        )
        if self.backend == "compile":
            self._run_compiled(work, skipped)
        elif torch.cuda.is_current_stream_capturing():
            run_math(work, self._fused(work), skipped)  # inside the user's own capture: just record
        elif layout == self._eager_layout or not _capturable(work):
            run_math(work, self._fused(work), skipped)
        else:
            self._run_graph(work, layout, skipped)
        self.layout = layout

    # ----------------------------------------------------------------- backends

    @staticmethod
    def _fused(work: Work) -> bool:
        return all(
            fused_adamw_available(p.device, p.dtype)
            for rt, _, _ in work if rt.algorithm == "adamw" for p in rt.params
        )

    def _run_compiled(self, work: Work, skipped: Optional[Tensor]) -> None:
        if self._compiled is None:
            if self._compiler is None:
                self._compiled = torch.compile(run_math, fullgraph=True, options=inductor_options())
            else:
                self._compiled = torch.compile(run_math, fullgraph=True, backend=self._compiler)
        fused = all(p.device.type == "cuda" for rt, _, _ in work for p in rt.params) and self._fused(work)
        self._compiled(work, fused, skipped)

    def _onto_warm_grads(self, work: Work) -> Work:
        """``work`` with each grad replaced by the warm-up step's grad of the same param (this step's
        values copied in, and made the param's ``.grad``), where the two are alike. Why: the fused glue
        ops read a list of tensors in one launch through a table of their addresses, built eagerly and
        only looked up during a capture (``fpolar.kernels._glue_common.matrix_offsets``); capturing on
        the addresses the warm-up already saw gives the graph that one launch. Costs one grad copy, once
        per capture."""
        warm = self._warm_grads
        self._warm_grads = []
        if len(warm) != len(work):
            return work
        out: Work = []
        kept, fresh = [], []
        for (rt, grads, decay), old in zip(work, warm):
            new: List[Optional[Tensor]] = []
            for p, g, w in zip(rt.params, grads, old):
                if g is not None and w is not None and g is not w and _alike(g, w):
                    kept.append(w)
                    fresh.append(g)
                    p.grad = w
                    g = w
                new.append(g)
            out.append((rt, new, decay))
        if kept:
            copy_grads_into(kept, fresh)
        return out

    def _run_graph(self, work: Work, layout: tuple, skipped: Optional[Tensor]) -> None:
        fused = self._fused(work)
        if layout != self.layout:  # drop the old graph (and the grads it kept alive)
            self._warm, self._graph, self._graph_grads, self._warm_grads = False, None, [], []
        if not self._warm:  # this step, eagerly, is the warm-up
            device = work[0][0].params[0].device
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                run_math(work, fused, skipped)
            torch.cuda.current_stream(device).wait_stream(side)
            self.warmups += 1
            self._warm = True
            self._warm_grads = [list(grads) for _, grads, _ in work]
            return
        if self._graph is None:
            work = self._onto_warm_grads(work)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    run_math(work, fused, skipped)
            except RuntimeError as e:  # nothing ran during the failed capture: run this step eagerly
                warnings.warn(f"fpolar.optim: capturing the step in a CUDA graph failed ({str(e).strip()[:200]}); "
                              "this parameter layout runs eagerly (pass compiled=False to skip the attempt)")
                self._eager_layout, self._warm = layout, False
                run_math(work, fused, skipped)
                return
            self._graph_grads = [list(grads) for _, grads, _ in work]  # kept: the graph reads these
            self._warm_grads = []
            self._graph = graph
            self.captures += 1
        else:
            stale, fresh = [], []
            for (_, grads, _), kept in zip(work, self._graph_grads):
                for g, k in zip(grads, kept):
                    if g is not None and g is not k:
                        stale.append(k)
                        fresh.append(g)
            if stale:
                copy_grads_into(stale, fresh)
        self._graph.replay()
