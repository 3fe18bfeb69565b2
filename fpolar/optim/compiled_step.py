"""The math of a ``fpolar.optim`` step as one program per parameter layout, not op-by-op dispatch.

``PolarOptimizer.step()`` is ``_prepare`` (eager: validation, hparams, state, refilling the 0-d lr /
weight-decay tensors from the groups' floats) followed by the math: one ``polargrad_step`` or AdamW
step per group. Eagerly that math is hundreds of small kernel launches, so on a GPU the host, not the
device, sets the pace. ``StepProgram`` runs it as one program instead:

* ``"cuda_graph"`` (the CUDA default): the eager functional steps captured in one
  ``torch.cuda.CUDAGraph``. AdamW groups run torch's fused AdamW kernel (``fpolar.adamw_fused``).
  The first step of a layout runs eagerly (cuBLAS and allocator warm-up must happen outside a
  capture), the second is captured (``capture_keeping_cache``) and replayed, later ones replay. The graph reads the lr
  and weight-decay tensors that ``_prepare`` refills, so schedulers work without a recapture.
  It reads the grads at the addresses it was captured with, and holds none of them: ``zero_grad()``
  is torch.optim's, and a loop that frees its grads (``set_to_none=True``) gets the same blocks back
  from PyTorch's caching allocator at the next backward, so the graph finds them where it reads them
  (checked before every replay, ``grad_address``): no copy, and one set of grads alive. Why not keep
  the grads and let backward add into them: that accumulate is an extra read and write of every grad
  (1.02 ms of add kernels per step in a profile of GPT-2-small's train step on the H200; a copy
  would move 2 × 0.65 GB, ≈ 0.3 ms at the bandwidth, an estimate). When a step's grads
  come back elsewhere the layout is captured again on them (the fused glue's one-launch tables are
  built first, ``build_offsets_tables``, and the skip check's, ``build_max_abs_tables``: a capture
  cannot build them), and the earlier graphs are
  kept: a loop whose grads cycle between a few places (a grad allocated while the last one is alive
  takes the other of two blocks) replays the graph captured for where they are now. The graphs of
  a layout share one memory pool, since they run one at a time and their workspace is scratch.
  After ``RECAPTURES_BEFORE_COPYING`` captures for places not seen before, the program stops
  following and copies each step's grads into tensors of its own before the replay. Small grads
  (biases, norm weights: at most ``SMALL_GRAD_BYTES``) are always copied in, one foreach copy of a
  few hundred KiB: the allocator serves them from segments shared with every small temporary of
  the step, where they land somewhere else from step to step (GPT-2-small's loop on the H200, model
  eager: 5 to 50 of them moved every step, in a cycle of six steps), while the large ones keep their
  blocks.
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
from functools import partial
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..adamw import adamw_step_prechecked
from ..adamw_fused import fused_adamw_available, fused_adamw_step_prechecked
from ..dtensor import is_dtensor, local_tensor
from ..inductor_options import inductor_options
from ..nonfinite import build_max_abs_tables, found_nonfinite
from ..nonfinite_ranks import agree, shard_groups
from ..fused_glue import build_offsets_tables
from ..polargrad import polargrad_step_prechecked
from ..side_streams import side_by_side
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
        found = found_nonfinite(_checked_tensors(work), skipped.device)
        found = agree(found, shard_groups([p for rt, _, _ in work for p in rt.params]))
        skipped.add_(found)
    # Every group's inputs passed the optimizer's checks in ``_prepare``: the steps do not check again.
    # Captured, the AdamW groups (memory-bound) are a branch beside the polar groups (fpolar.side_streams).
    polar = [item for item in work if item[0].algorithm == "polargrad"]
    adamw = [item for item in work if item[0].algorithm != "polargrad"]
    jobs = [partial(_polar_groups, polar, found)] if polar else []
    if adamw:
        jobs.append(partial(_adamw_groups, adamw, fused_adamw, found))
    side_by_side(work[0][0].params[0].device, jobs)


def _checked_tensors(work: Work) -> List[Optional[Tensor]]:
    """What the skip decision reads: every grad and every scheduled lr / weight-decay tensor."""
    every = [g for _, grads, _ in work for g in grads]
    return every + [t for rt, _, _ in work for t in (rt.lr, rt.weight_decay) if isinstance(t, Tensor)]


def _polar_groups(work: Work, found: Optional[Tensor]) -> None:
    for rt, grads, _ in work:
        polargrad_step_prechecked(rt.params, grads, rt.state, rt.hparams, found_inf=found)  # type: ignore[arg-type]


def _adamw_groups(work: Work, fused_adamw: bool, found: Optional[Tensor]) -> None:
    for rt, grads, decay in work:
        if fused_adamw:
            fused_adamw_step_prechecked(rt.params, grads, rt.state, rt.hparams, decay=decay, found_inf=found)  # type: ignore[arg-type]
        else:
            adamw_step_prechecked(rt.params, grads, rt.state, rt.hparams, found_inf=found)  # type: ignore[arg-type]


def copy_grads_into(kept: List[Tensor], fresh: List[Tensor]) -> None:
    """``kept[i].copy_(fresh[i])`` for each pair, in place, as one foreach copy. DTensor grads (FSDP2)
    are copied through their local shards: DTensor has no sharding rule for ``_foreach_copy_``, and two
    grads of one param share its placements, so the local copy is the whole copy. A pair whose layouts
    differ is copied as DTensors (``copy_`` redistributes)."""
    if all(type(t) is Tensor for t in kept) and all(type(t) is Tensor for t in fresh):
        torch._foreach_copy_(kept, fresh)  # plain tensors: no per-pair checks (host time every step)
        return
    locals_, redistributed = [], []
    for k, f in zip(kept, fresh):
        plain = not is_dtensor(k) and not is_dtensor(f)
        alike = is_dtensor(k) and is_dtensor(f) and k.placements == f.placements and k.device_mesh == f.device_mesh
        (locals_ if plain or alike else redistributed).append((k, f))
    if locals_:
        torch._foreach_copy_([local_tensor(k) for k, _ in locals_], [local_tensor(f) for _, f in locals_])
    for k, f in redistributed:
        k.copy_(f)


# A captured graph reads the grads at the addresses it was captured with. It follows the grads: when a
# step's grads come back at addresses none of the layout's graphs reads, the layout is captured again
# on them, and the graphs captured before are kept for when the grads come back there. After this
# many such recaptures of one layout (an allocator that keeps handing out new blocks), the program
# stops following and copies each step's grads into tensors of its own before the replay. So a layout
# holds at most this many graphs plus one; all share one memory pool.
RECAPTURES_BEFORE_COPYING = 3

# Grads of at most this many bytes (per local tensor) are copied into the program's own tensors every
# step instead of followed: PyTorch's caching allocator serves requests up to 1 MiB from 2 MiB
# segments that all small tensors share, so where a small grad lands depends on every small
# temporary before it, and it moves between steps that a large grad survives in place.
SMALL_GRAD_BYTES = 1 << 20

GradAddress = Optional[tuple]


def grad_address(g: Optional[Tensor]) -> GradAddress:
    """What a captured graph relies on about a grad it reads: where its (local) memory starts and how
    it is laid out there. Two grads of one param with equal addresses occupy the same bytes the same
    way. A plain tensor's shape is its param's (torch refuses a ``.grad`` of another shape), so its
    address is its pointer, strides and dtype (checked once per grad every step: the cheap fields
    only); a tensor subclass's, a DTensor's included, also names its local shape, device and
    placements, which follow the sharding rather than the param."""
    if g is None:
        return None
    if type(g) is Tensor:
        return (g.data_ptr(), g.stride(), g.dtype)
    local = local_tensor(g)
    placements = tuple(g.placements) if is_dtensor(g) else None  # type: ignore[attr-defined]
    return (local.data_ptr(), tuple(local.shape), local.stride(), local.dtype, local.device, placements)


# One capture stream per device, as torch.cuda.graph keeps one: cuBLAS keeps a workspace per stream.
_capture_streams: dict = {}


def capture_keeping_cache(
    graph: "torch.cuda.CUDAGraph", record: Callable[[], None], device: torch.device, pool: Any = None
) -> None:
    """Records ``record()`` into ``graph`` on a side stream of ``device``, as ``torch.cuda.graph``
    does, but without its ``empty_cache()`` first. The graph follows the grads backward leaves in
    blocks the caching allocator hands back each step; emptying the cache hands the freed segments
    back to the driver, the next step's activations and grads land in new ones, and the graph would
    have to be captured again (and again: each capture emptied the cache anew). ``pool``: a memory
    pool handle (``torch.cuda.graph_pool_handle()`` or another graph's ``pool()``) to record into,
    shared with graphs that never run at the same time; None gives the graph a pool of its own.
    Raises what the capture raised, after ending it."""
    origin = torch.cuda.current_stream(device)
    if device not in _capture_streams:
        _capture_streams[device] = torch.cuda.Stream(device)
    side = _capture_streams[device]
    side.wait_stream(origin)
    with torch.cuda.stream(side):
        graph.capture_begin(pool=pool)
        try:
            record()
        except BaseException:
            try:
                graph.capture_end()
            except RuntimeError:
                pass  # the capture was invalidated by the failure: the failure is the error to raise
            raise
        graph.capture_end()
    origin.wait_stream(side)


def _addresses(work: Work) -> List[List[GradAddress]]:
    return [[grad_address(g) for g in grads] for _, grads, _ in work]


class StepProgram:
    """Runs an optimizer's math (after its ``_prepare``) through ``backend``; see the module docstring.

    Attributes (read them): ``backend``; ``captures``: CUDA graphs captured so far; ``warmups``:
    eager warm-up steps run for new layouts; ``recaptures``: captures of a layout again because its
    grads came back at addresses none of its graphs reads; ``replays``: graph replays so far;
    ``graphs``: how many graphs the current layout holds; ``copies_grads``: whether the current graph
    reads every grad from tensors the program copies it into (after ``RECAPTURES_BEFORE_COPYING``);
    ``copied_grads``: how many grads it copies in each step (the small ones, or all); ``layout``: the
    current layout key.
    """

    def __init__(self, backend: str, *, compiler: Any = None) -> None:
        """``backend``: one of ``BACKENDS``. ``compiler``: for "compile", a torch.compile backend to
        use instead of Inductor with ``fpolar.inductor_options()`` (tests pass a counting one)."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {list(BACKENDS)}")
        self.backend = backend
        self.captures = 0
        self.warmups = 0
        self.recaptures = 0
        self.replays = 0
        self.layout: Optional[tuple] = None
        self._warm = False  # the current layout has had its eager warm-up step
        # The current layout's graphs, each with the grads it reads, where they were at its capture.
        self._graphs: List[Tuple[List[List[GradAddress]], "torch.cuda.CUDAGraph"]] = []
        self._pool: Any = None  # the memory pool the current layout's graphs share
        # Per group, per grad: the program's own tensor the grad is copied into before each replay
        # (the small ones; every one once following stopped), or None (read where backward left it).
        self._own_grads: Optional[List[List[Optional[Tensor]]]] = None
        self._copies_all = False
        self._compiled: Optional[Callable[[Work, bool, Optional[Tensor]], None]] = None
        self._compiler = compiler
        self._eager_layout: Optional[tuple] = None  # a layout whose capture failed: it runs eagerly

    @property
    def copies_grads(self) -> bool:
        return self._copies_all

    @property
    def copied_grads(self) -> int:
        return sum(t is not None for own in self._own_grads or [] for t in own)

    @property
    def graphs(self) -> int:
        return len(self._graphs)

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

    def _run_graph(self, work: Work, layout: tuple, skipped: Optional[Tensor]) -> None:
        if layout != self.layout:  # drop the old graphs (and any grads they kept)
            self._warm, self._graphs, self._pool, self._own_grads, self._copies_all = False, [], None, None, False
        if not self._warm:  # this step, eagerly, is the warm-up
            # On the current stream: its workspace goes back to the blocks the train loop's own
            # forward and backward reuse (blocks freed on a side stream stay cached for that stream).
            run_math(work, self._fused(work), skipped)
            self.warmups += 1
            self._warm = True
            return
        if self._own_grads is None:
            self._own_grads = _own_tensors(work, lambda g: _nbytes(g) <= SMALL_GRAD_BYTES)
        read = self._copied_in(work)  # what the graph reads: copied-in grads, the rest in place
        if self._graphs:
            where = _addresses(read)
            graph = next((g for addresses, g in self._graphs if addresses == where), None)
            if graph is not None:  # the grads are where one of the graphs reads them
                self._replay(graph)
                return
            # Somewhere no graph reads them: replaying would read whatever now lies at the old addresses.
            self.recaptures += 1
            if len(self._graphs) > RECAPTURES_BEFORE_COPYING:  # this would be one recapture too many
                # Drop the graphs and their pool (a pool no graph holds any more is released).
                self._graphs, self._pool, self._copies_all = [], None, True
                self._own_grads = _own_tensors(work, lambda g: True)
                read = self._copied_in(work)
        graph = self._capture(read, self._fused(work), skipped, layout)  # a replay needs no such decision
        if graph is not None:
            self._replay(graph)

    def _replay(self, graph: "torch.cuda.CUDAGraph") -> None:
        graph.replay()
        self.replays += 1

    def _capture(self, work: Work, fused: bool, skipped: Optional[Tensor], layout: tuple) -> Optional["torch.cuda.CUDAGraph"]:
        """Captures the math on ``work``'s grads into a new graph of the layout (not run: the caller
        replays it) and returns it. On failure warns, marks the layout eager, runs this step eagerly
        and returns None."""
        for rt, grads, _ in work:  # the one-launch glue tables, which a capture cannot build
            if rt.algorithm == "polargrad":
                build_offsets_tables(rt.params, grads, rt.state, rt.hparams)  # type: ignore[arg-type]
        if skipped is not None:  # and the skip check's max-abs tables
            build_max_abs_tables(_checked_tensors(work))
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            capture_keeping_cache(graph, lambda: run_math(work, fused, skipped), work[0][0].params[0].device, self._pool)
        except RuntimeError as e:  # nothing ran during the failed capture: run this step eagerly
            warnings.warn(f"fpolar.optim: capturing the step in a CUDA graph failed ({str(e).strip()[:200]}); "
                          "this parameter layout runs eagerly (pass compiled=False to skip the attempt)")
            self._eager_layout, self._warm, self._graphs, self._pool = layout, False, [], None
            self._own_grads, self._copies_all = None, False
            run_math(work, fused, skipped)
            return None
        self._graphs.append((_addresses(work), graph))
        self.captures += 1
        return graph

    def _copied_in(self, work: Work) -> Work:
        """This step's grads copied into the program's own tensors where it keeps one (one foreach
        copy), and ``work`` with those tensors in their place: what the graph reads."""
        own, fresh = [], []
        for (_, grads, _), kept in zip(work, self._own_grads or []):
            for g, k in zip(grads, kept):
                if g is not None and k is not None and g is not k:
                    own.append(k)
                    fresh.append(g)
        if own:
            copy_grads_into(own, fresh)
        return [
            (rt, [g if k is None else k for g, k in zip(grads, kept)], decay)
            for (rt, grads, decay), kept in zip(work, self._own_grads or [])
        ]


def _nbytes(g: Tensor) -> int:
    local = local_tensor(g)
    return local.numel() * local.element_size()


def _own_tensors(work: Work, copied: Callable[[Tensor], bool]) -> List[List[Optional[Tensor]]]:
    """Per group, per grad: a tensor of the program's own, like the grad, where ``copied(grad)``;
    None where not, or where the grad is None (its layout says so)."""
    return [[None if g is None or not copied(g) else torch.empty_like(g) for g in grads] for _, grads, _ in work]
