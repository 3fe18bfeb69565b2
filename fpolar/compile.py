"""A whole train step — forward, backward, PolarGrad for the matrices, AdamW for the rest — built to be
compiled or captured.

Three recipes (README, "Compile your whole train step"):

* **CUDA graph of the eager step** (the main GPU recipe)::

      step = make_train_step(model, loss_fn, polar_hp, adamw_hp)          # backward="autograd"
      graphed = capture_cuda_graph(step, x, y)                             # warm-up, capture once
      for x, y in loader:
          loss = graphed(x, y)                                             # copy batch in, replay

* **torch.compile of the whole step**::

      step = make_train_step(model, loss_fn, polar_hp, adamw_hp, backward="func")
      compiled = compile_train_step(step)                                  # one frame, 0 graph breaks
      # = torch.compile(step, fullgraph=True, options=inductor_options()): the Inductor settings this
      # torch needs (fpolar.inductor_options). mode="reduce-overhead" on CUDA: every mutated tensor
      # is marked static-address already.

* **torch.compile of the optimizer step alone** (model compiled separately, ``loss.backward()`` as
  usual): ``mark_static(params, grads, state, adamw_state, hp, adamw_hp)`` once, then
  ``torch.compile(fn_calling_polargrad_step_and_adamw_step, fullgraph=True)``.

Why two backward modes: ``loss.backward()`` is a graph break for dynamo (torch 2.11–2.13 by default),
so a fullgraph compile needs the gradient inside the traced program: ``torch.func.grad_and_value``
over ``torch.func.functional_call`` traces as one graph. A CUDA graph records kernels, not Python, so
the plain autograd step captures as it is, provided every tensor it touches keeps its address: the
gradients live in ``.grad`` tensors allocated once and accumulated into in place.

Everything the step mutates (parameters, ``.grad``, optimizer state, module buffers) and the hparam
tensors it reads are marked with ``torch._dynamo.mark_static_address`` at construction, so Inductor's
CUDA graphs (``mode="reduce-overhead"``) are not skipped for mutated non-static inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from functools import partial
from typing import Callable, Dict, Iterator, List, Literal, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .adamw import adamw_step
from .adamw_fused import fused_adamw_available, fused_adamw_step
from .hparams import AdamWHParams, PolarGradHParams
from .inductor_options import inductor_options
from .nonfinite import found_nonfinite
from .polargrad import polargrad_step
from .routing import is_matrix
from . import side_streams
from .side_streams import being_captured, side_by_side
from .state import AdamWState, PolarGradState, init_adamw_state, init_state
from .validation import check_real_dense_float

LossFn = Callable[..., Tensor]
"""``loss_fn(model, *batch) -> loss``: a 0-d tensor. It calls ``model`` itself, so any forward works."""

Split = Callable[[str, Tensor], bool]
"""``split(name, param) -> True`` for parameters that go to PolarGrad, False for AdamW."""

Backward = Literal["autograd", "func"]

__all__ = [
    "Backward",
    "CUDAGraphTrainStep",
    "LossFn",
    "Split",
    "TrainStep",
    "capture_cuda_graph",
    "compile_train_step",
    "make_train_step",
    "mark_static",
    "matrices_to_polar",
]


def matrices_to_polar(name: str, param: Tensor) -> bool:
    """The default split, ``fpolar.routing.is_matrix``: every non-empty ≥ 2-D parameter to PolarGrad;
    0-/1-D ones (biases, norms) and empty ones to AdamW.

    Embeddings and output heads are matrices too; pass a split that sends them to AdamW if you want
    that, e.g. ``lambda name, p: is_matrix(p) and "embed" not in name``.
    """
    return is_matrix(param)


def mark_static(*objects: object) -> None:
    """``torch._dynamo.mark_static_address`` on every tensor in ``objects``.

    Accepts tensors, sequences of tensors, ``PolarGradState`` / ``AdamWState`` (all their tensors,
    momentum views included) and ``PolarGradHParams`` / ``AdamWHParams`` (a tensor lr / weight decay).
    The distributed state (``DistributedPolarGradState``) too: its momentum DTensors are marked as they
    are, and AOTAutograd, which flattens a DTensor input into its local tensor, carries the mark to it.
    Inductor's CUDA graphs (``mode="reduce-overhead"``) skip a graph that mutates an input whose address
    they cannot assume fixed ("skipping cudagraphs due to mutated inputs"); optimizer state is allocated
    once and only updated in place, so it can be marked. ``guard=False``: if an address did change, the
    CUDA graph is re-recorded rather than the function recompiled (``guard=True`` is not needed for the
    marking to count). Call it before the first compiled call: dynamo reads the marker when it first
    traces a tensor, and a later mark takes effect only after ``torch._dynamo.reset()``. Nothing is
    mutated but a marker attribute on each tensor.

    The marks are lost if the compiled function's tensor inputs alias each other and one of them is
    mutated: AOTAutograd then traces through a synthetic base and drops every static-input index, so
    every mutated input counts again. ``polargrad_step`` therefore takes its momentum views from the
    stacked buffers inside the graph under torch.compile; do not pass the same storage twice (e.g. a
    parameter and a view of it) to a compiled step yourself.
    """
    for obj in objects:
        if isinstance(obj, Tensor):
            torch._dynamo.mark_static_address(obj, guard=False)
        elif isinstance(obj, PolarGradState):
            mark_static(obj.step, obj.skipped, obj.buffers, obj.momentum)
        elif isinstance(obj, AdamWState):
            mark_static(obj.step, obj.skipped, obj.exp_avg, obj.exp_avg_sq)
        elif isinstance(obj, (PolarGradHParams, AdamWHParams)):
            mark_static(*[v for v in (obj.lr, obj.weight_decay) if isinstance(v, Tensor)])
        elif isinstance(obj, (list, tuple)):
            mark_static(*obj)
        else:
            raise TypeError(f"mark_static takes tensors, lists of tensors, fpolar states or hparams, got {type(obj).__name__}")


@contextlib.contextmanager
def _named(names: Sequence[str]) -> Iterator[None]:
    """Errors that say ``params[i]`` also name the parameter by its module path (``'0.weight'``)."""
    try:
        yield
    except (ValueError, TypeError) as e:
        if torch.compiler.is_compiling():
            raise

        def named(m: "re.Match[str]") -> str:
            i = int(m.group(1))
            return f"{names[i]!r} ({m.group(0)})" if i < len(names) else m.group(0)

        raise type(e)(re.sub(r"(?<![\w.])params\[(\d+)\]", named, str(e))) from None


class _LossOf(nn.Module):
    """``loss_fn(model, *batch)`` as a module, so ``functional_call`` can swap the model's parameters
    under any user-written forward, not only ``model(*inputs)``."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *batch: Tensor) -> Tensor:
        return self.loss_fn(self.model, *batch)


class TrainStep:
    """``step(*batch) -> loss``: one forward + backward + optimizer step, parameters updated in place.

    Build it with ``make_train_step``. Attributes (read them, do not rebind them: their addresses are
    what a compiled or captured step relies on):

        model, loss_fn, backward: as given.
        polar_names, adamw_names: parameter names (``model.named_parameters()``) in each group.
        polar_params, adamw_params: the parameters themselves; frozen ones (requires_grad=False) are in
            neither group and are never touched.
        polar_state, adamw_state: the optimizer state (``fpolar.init_state`` / ``init_adamw_state``).
        polar_hparams, adamw_hparams: as given. Schedule 0-d tensor lr / weight decay with ``fill_``.
        grads: ``backward="autograd"``: the ``.grad`` tensors, allocated once, zeroed in place each
            eager step (backward accumulates into them); once the step is captured
            (``capture_cuda_graph``), the tensors the graph's backward writes, in its pool (the
            buffers they replace are dropped). Empty for ``backward="func"`` (that mode leaves ``.grad``
            alone).
        fused_adamw: True when every AdamW param is on CUDA and torch's fused AdamW kernel takes it;
            then the eager (and CUDA-graph captured) step runs ``fused_adamw_step``, and a step under
            torch.compile ``adamw_step``. The same math either way (``adamw_step`` is the twin).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        polar_hparams: PolarGradHParams,
        adamw_hparams: AdamWHParams,
        *,
        split: Split = matrices_to_polar,
        backward: Backward = "autograd",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(model, *batch), got {type(loss_fn).__name__}")
        if not isinstance(polar_hparams, PolarGradHParams):
            raise TypeError(f"polar_hparams must be PolarGradHParams, got {type(polar_hparams).__name__}")
        if not isinstance(adamw_hparams, AdamWHParams):
            raise TypeError(f"adamw_hparams must be AdamWHParams, got {type(adamw_hparams).__name__}")
        if backward not in ("autograd", "func"):
            raise ValueError(f"unknown backward {backward!r}; expected 'autograd' or 'func'")
        self.model = model
        self.loss_fn = loss_fn
        self.backward: Backward = backward
        self.polar_hparams = polar_hparams
        self.adamw_hparams = adamw_hparams
        self._loss_of = _LossOf(model, loss_fn)

        polar: List[Tuple[str, nn.Parameter]] = []
        adamw: List[Tuple[str, nn.Parameter]] = []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (polar if split(name, p) else adamw).append((name, p))
        # Checked here with the model's names ("0.weight"), before init_state would name "params[0]".
        for name, p in polar + adamw:
            check_real_dense_float(p, f"parameter {name!r}")
        for name, p in polar:
            if not is_matrix(p):
                raise ValueError(
                    f"split sent parameter {name!r} of shape {tuple(p.shape)} to PolarGrad, which takes non-empty "
                    "tensors with ≥ 2 dims; return False for it from split (the default split, "
                    "fpolar.compile.matrices_to_polar, sends it to AdamW)"
                )
        self.polar_names: Tuple[str, ...] = tuple(n for n, _ in polar)
        self.adamw_names: Tuple[str, ...] = tuple(n for n, _ in adamw)
        self.polar_params: List[Tensor] = [p for _, p in polar]
        self.adamw_params: List[Tensor] = [p for _, p in adamw]
        with _named(self.polar_names):
            self.polar_state: PolarGradState = init_state(self.polar_params, polar_hparams)
        with _named(self.adamw_names):
            self.adamw_state: AdamWState = init_adamw_state(self.adamw_params, adamw_hparams)
        # One skip decision for the whole step (both calls), made here; the calls take it as found_inf.
        self._skip = "skip" in (polar_hparams.nonfinite, adamw_hparams.nonfinite)
        self._polar_call = dataclasses.replace(polar_hparams, nonfinite="propagate")
        self._adamw_call = dataclasses.replace(adamw_hparams, nonfinite="propagate")
        # Eagerly (and so inside a CUDA graph captured from the eager step) torch's fused AdamW kernel
        # replaces adamw_step's dozen foreach passes, as in fpolar.optim on CUDA; under torch.compile
        # adamw_step runs, which Inductor fuses itself.
        self.fused_adamw: bool = bool(self.adamw_params) and all(
            p.device.type == "cuda" and fused_adamw_available(p.device, p.dtype) for p in self.adamw_params
        )
        # functional_call keys: the wrapper prefixes the model's parameter names with "model.".
        self._func_params: Dict[str, Tensor] = {f"model.{n}": p for n, p in polar + adamw}

        self.grads: List[Tensor] = []
        if backward == "autograd":
            for p in self.polar_params + self.adamw_params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            self.grads = [p.grad for p in self.polar_params + self.adamw_params]  # type: ignore[misc]
        self.mark_static_addresses()

    def mutable_tensors(self) -> List[Tensor]:
        """Every tensor one step writes: parameters, ``.grad`` buffers, optimizer state, model buffers
        (e.g. BatchNorm running statistics). Momentum views are covered by their stacked buffers."""
        st, ast = self.polar_state, self.adamw_state
        return [
            *self.polar_params,
            *self.adamw_params,
            *self.grads,
            st.step,
            st.skipped,
            *st.buffers,
            *ast.step,
            ast.skipped,
            *ast.exp_avg,
            *ast.exp_avg_sq,
            *self.model.buffers(),
        ]

    def mark_static_addresses(self) -> None:
        """Mark the mutated tensors, the momentum views and the hparam tensors static-address (see
        ``mark_static``)."""
        mark_static(
            self.polar_params,
            self.adamw_params,
            self.grads,
            self.polar_state,
            self.adamw_state,
            self.polar_hparams,
            self.adamw_hparams,
            list(self.model.buffers()),
        )

    def __call__(self, *batch: Tensor) -> Tensor:
        """One train step on ``batch`` (passed to ``loss_fn(model, *batch)``).

        Returns the loss (0-d, detached) computed *before* the update. Mutates the parameters, the
        optimizer state, and (``backward="autograd"``) the ``.grad`` tensors in place.
        """
        if self.backward == "func":
            return self._func_step(batch)
        return self._autograd_step(batch)

    def _autograd_step(self, batch: Sequence[Tensor]) -> Tensor:
        params = self.polar_params + self.adamw_params
        captured = _being_captured(params)
        for p, g in zip(params, self.grads):
            # Captured: None, so backward hands over its own grad tensors (see _grads_after_backward).
            # Else the static buffer, zeroed in place: backward accumulates into the same addresses.
            want = None if captured else g
            if p.grad is not want:  # the .grad setter checks shape and device: only when it changes
                p.grad = want
        if self.grads and not captured:
            torch._foreach_zero_(self.grads)
        with torch.enable_grad():
            loss = self._loss_of(*batch)
            loss.backward()
        if captured:
            self.grads = self._grads_after_backward(params)
        n = len(self.polar_params)
        with torch.no_grad():
            self._apply(self.grads[:n], self.grads[n:])
        return loss.detach()

    def _grads_after_backward(self, params: Sequence[Tensor]) -> List[Tensor]:
        """The grads of a captured step: backward's own tensors, allocated in the graph's pool at the
        addresses every replay writes again, so no static buffer, no zeroing pass and no
        read-add-write accumulate is needed (that accumulate cost 1.0–1.2 ms per step on GPT-2-small,
        H200). A param that backward did not reach gets its buffer zeroed, the zero grad the eager step
        gives it. They become the params' ``.grad`` and ``self.grads``."""
        grads = []
        for p, g in zip(params, self.grads):
            if p.grad is None:
                p.grad = g.zero_()
            grads.append(p.grad)
        return grads  # type: ignore[return-value]

    def _func_step(self, batch: Sequence[Tensor]) -> Tensor:
        def loss_of(params: Dict[str, Tensor]) -> Tensor:
            return torch.func.functional_call(self._loss_of, params, tuple(batch))

        # torch.func.grad enables grad inside even under an outer no_grad, which the update needs.
        with torch.no_grad():
            try:
                grads, loss = torch.func.grad_and_value(loss_of)(self._func_params)
            except RuntimeError as e:
                if "mutate a captured Tensor" not in str(e):
                    raise
                raise RuntimeError(self._buffer_mutation_hint()) from e
            self._apply(
                [grads[f"model.{n}"] for n in self.polar_names],
                [grads[f"model.{n}"] for n in self.adamw_names],
            )
        return loss.detach()

    def _buffer_mutation_hint(self) -> str:
        stateful = [
            f"{name!r} ({type(m).__name__})"
            for name, m in self.model.named_modules()
            if m.training and any(True for _ in m.buffers(recurse=False))
        ]
        which = f" (modules with buffers in train mode: {', '.join(stateful)})" if stateful else ""
        return (
            f"backward='func' cannot run a forward that updates module buffers in place{which}, e.g. BatchNorm's "
            "running statistics: torch.func's gradient transform refuses in-place writes to captured tensors. "
            "Build the step with make_train_step(..., backward='autograd') (it also captures in a CUDA graph), "
            "or put those modules in eval mode. Nothing was updated."
        )

    def _apply(self, polar_grads: List[Tensor], adamw_grads: List[Tensor]) -> None:
        found = None
        if self._skip and (self.polar_params or self.adamw_params):
            device = (self.polar_params or self.adamw_params)[0].device
            found = found_nonfinite(list(polar_grads) + list(adamw_grads), device)
        # Captured in a CUDA graph, the AdamW step (memory-bound) is a branch beside the polar step
        # (fpolar.side_streams); elsewhere the two run in order.
        jobs = [partial(self._polar_apply, polar_grads, found)] if self.polar_params else []
        if self.adamw_params:
            jobs.append(partial(self._adamw_apply, adamw_grads, found))
        if jobs:
            side_by_side((self.polar_params or self.adamw_params)[0].device, jobs)

    def _polar_apply(self, polar_grads: List[Tensor], found: Optional[Tensor]) -> None:
        with _named(self.polar_names):
            polargrad_step(self.polar_params, polar_grads, self.polar_state, self._polar_call, found_inf=found)

    def _adamw_apply(self, adamw_grads: List[Tensor], found: Optional[Tensor]) -> None:
        adamw = fused_adamw_step if self.fused_adamw and not torch.compiler.is_compiling() else adamw_step
        with _named(self.adamw_names):
            adamw(self.adamw_params, adamw_grads, self.adamw_state, self._adamw_call, found_inf=found)


def _being_captured(params: Sequence[Tensor]) -> bool:
    """Whether this eager call is being recorded into a CUDA graph (``capture_cuda_graph``)."""
    return bool(params) and being_captured(params[0].device)


def make_train_step(
    model: nn.Module,
    loss_fn: LossFn,
    polar_hparams: PolarGradHParams,
    adamw_hparams: AdamWHParams,
    *,
    split: Split = matrices_to_polar,
    backward: Backward = "autograd",
) -> TrainStep:
    """A train step for ``model``: ``step(*batch)`` runs ``loss_fn(model, *batch)``, its backward, then
    ``polargrad_step`` on the parameters ``split`` selects (default: ``fpolar.routing.is_matrix``, every
    non-empty ≥ 2-D one) and ``adamw_step`` on the other trainable parameters.

    Args:
        model: its trainable parameters are **updated in place** by every call.
        loss_fn: ``loss_fn(model, *batch) -> loss`` (0-d tensor), e.g.
            ``lambda m, x, y: F.cross_entropy(m(x), y)``.
        polar_hparams, adamw_hparams: for the two groups. For a CUDA graph, give scheduled scalars as
            0-d tensors on the parameters' device and change them with ``fill_``.
        split: ``split(name, param) -> bool``, True for PolarGrad.
        backward: ``"autograd"`` (default): ``loss.backward()`` into ``.grad`` tensors allocated here
            and zeroed in place each step; runs eagerly and captures in a CUDA graph
            (``capture_cuda_graph``, whose backward hands over its own grads instead); under torch.compile it graph-breaks at ``backward()``.
            ``"func"``: gradients from ``torch.func.grad_and_value`` over ``functional_call``, so
            ``torch.compile(step, fullgraph=True)`` traces forward + backward + both optimizer steps
            as one graph; ``.grad`` is not touched. Forwards that mutate module buffers (BatchNorm in
            train mode) need ``"autograd"``.

    Returns:
        a ``TrainStep``; its optimizer state is fresh (zero momentum, step 0).
    """
    return TrainStep(model, loss_fn, polar_hparams, adamw_hparams, split=split, backward=backward)


def compile_train_step(step: "TrainStep", *, mode: Optional[str] = None, dynamic: Optional[bool] = None) -> Callable[..., Tensor]:
    """``torch.compile(step, fullgraph=True)`` with the Inductor options this torch needs for a whole
    train step (``fpolar.inductor_options``: on torch < 2.13, no loop reordering after fusion, which
    asserts on a transformer's step), scoped to this compile. ``mode`` as in torch.compile.

    Returns the compiled callable (``compiled(*batch) -> loss``); it compiles at its first call.
    Raises TypeError if ``step`` is not a ``TrainStep``, ValueError for an unknown ``mode``.
    """
    if not isinstance(step, TrainStep):
        raise TypeError(f"step must be a TrainStep from make_train_step, got {type(step).__name__}")
    return torch.compile(step, fullgraph=True, dynamic=dynamic, options=inductor_options(mode))


class CUDAGraphTrainStep:
    """A ``TrainStep`` captured in one ``torch.cuda.CUDAGraph``; ``graphed(*batch)`` copies the batch
    into the static input buffers and replays.

    Attributes:
        step: the captured ``TrainStep`` (its parameters and state are the ones the graph updates).
        graph: the ``torch.cuda.CUDAGraph``.
        static_batch: the input buffers the graph reads, one per positional batch tensor.
        static_loss: the 0-d tensor the graph writes the loss into.
    """

    def __init__(self, step: TrainStep, graph: "torch.cuda.CUDAGraph", static_batch: Tuple[Tensor, ...], static_loss: Tensor) -> None:
        self.step = step
        self.graph = graph
        self.static_batch = static_batch
        self.static_loss = static_loss

    def __call__(self, *batch: Tensor) -> Tensor:
        """Copy ``batch`` (same shapes and dtypes as the capture example; any device) into the static
        buffers and replay the step.

        Returns ``static_loss``: it is overwritten by the next call (``.clone()`` it to keep it).
        """
        if len(batch) != len(self.static_batch):
            raise ValueError(f"the graph was captured with {len(self.static_batch)} batch tensors, got {len(batch)}")
        for i, (s, b) in enumerate(zip(self.static_batch, batch)):
            if not isinstance(b, Tensor) or b.shape != s.shape or b.dtype != s.dtype:
                got = f"shape {tuple(b.shape)}, {b.dtype}" if isinstance(b, Tensor) else type(b).__name__
                raise ValueError(
                    f"batch[{i}] must match the captured input (shape {tuple(s.shape)}, {s.dtype}), got {got}; "
                    "a CUDA graph replays fixed shapes: capture one graph per shape"
                )
            s.copy_(b, non_blocking=True)
        self.graph.replay()
        return self.static_loss


def capture_cuda_graph(
    step: TrainStep,
    *example_batch: Tensor,
    warmup_steps: int = 3,
    pool: Optional[tuple] = None,
    lanes: int = 4,
) -> CUDAGraphTrainStep:
    """Capture ``step`` (a whole forward + backward + optimizer step) in one CUDA graph.

    The step is first run ``warmup_steps`` times on a side stream (cuBLAS/cuSOLVER workspaces, autograd
    and allocator warm-up must happen outside the capture), then every tensor it mutates is restored to
    its value before the warm-up, so the first replay is the first step: replays match the eager loop.

    Args:
        step: from ``make_train_step``; all its parameters on one CUDA device. Scheduled hparams must be
            Python floats (frozen into the graph) or 0-d tensors on that device (read at every replay).
        example_batch: tensors with the shapes and dtypes of every later batch; copied, not kept.
        warmup_steps: eager steps before the capture (≥ 1).
        pool: optional memory pool handle (``torch.cuda.graph_pool_handle()``) to share with other graphs.
        lanes: how many streams the optimizer's independent pieces (each shape group's polar step,
            the AdamW groups) are recorded on, as parallel branches of the graph (``fpolar.side_streams``;
            pieces whose workspace adds up past its memory bound stay in order). 1: one after
            another. The default 4 made GPT-2-small's whole captured train step 0.38–0.43 ms faster
            than 1 on the H200, in two runs (BENCHMARKS.md), for a larger graph pool (a few hundred
            MiB there).

    Returns:
        a ``CUDAGraphTrainStep``. Raises ValueError for CPU parameters, hparam tensors on another device,
        a non-positive ``warmup_steps`` or ``lanes``, before running anything.
    """
    if not isinstance(step, TrainStep):
        raise TypeError(f"step must be a TrainStep from make_train_step, got {type(step).__name__}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
        raise ValueError(f"warmup_steps must be an int ≥ 1, got {warmup_steps!r}")
    side_streams.check_lanes(lanes)
    params = step.polar_params + step.adamw_params
    if not params:
        raise ValueError("the model has no trainable parameters")
    device = params[0].device
    for name, p in zip(step.polar_names + step.adamw_names, params):
        if p.device.type != "cuda" or p.device != device:
            raise ValueError(f"CUDA graph capture needs every parameter on one CUDA device; {name} is on {p.device}")
    for which, hp in (("polar_hparams", step.polar_hparams), ("adamw_hparams", step.adamw_hparams)):
        for field in ("lr", "weight_decay"):
            v = getattr(hp, field)
            if isinstance(v, Tensor) and v.device != device:
                raise ValueError(
                    f"{which}.{field} is a tensor on {v.device}; a CUDA graph reads a tensor not on {device} "
                    f"only once, at capture, so later fill_ calls would be ignored. Create it on {device}"
                )
    static_batch = tuple(b.detach().to(device).clone() for b in example_batch)

    mutable = step.mutable_tensors()
    with torch.no_grad():
        saved = [t.detach().clone() for t in mutable]
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup_steps):
            step(*static_batch)
    torch.cuda.current_stream(device).wait_stream(side)
    with torch.no_grad():
        for t, s in zip(mutable, saved):
            t.copy_(s)
    del saved

    graph = torch.cuda.CUDAGraph()
    with side_streams.lanes(lanes), torch.cuda.graph(graph, pool=pool):
        static_loss = step(*static_batch)
    return CUDAGraphTrainStep(step, graph, static_batch, static_loss)
