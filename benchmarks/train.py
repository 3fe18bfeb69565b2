"""The whole train step of GPT-2-sized models, for every optimizer recipe: what a user sees end to end.

    python benchmarks/train.py [--models gpt2-small,gpt2-medium] [--only SUBSTR,...] [--budget-s 420]
                               [--recipe-timeout-s 150] [--json PATH] [--md PATH]
    python benchmarks/train.py --quick --device cpu      # tiny model, eager model, the CPU recipes
    python benchmarks/train.py --only 'compile_train_step' --profile 5   # + where each recipe's time goes

A step is forward (bf16 autocast on CUDA) + ``loss.backward()`` + the optimizer(s), on a fixed batch of
8 × 1024 random tokens. The hidden matrices of the blocks (attention qkv and out, MLP in and out) go to
the Muon-type optimizer; embeddings, the output head, biases and LayerNorm gains go to AdamW. Every
Muon runs 5 Newton–Schulz steps, momentum 0.95 with Nesterov, no weight decay.

Per recipe, with the model eager and with ``torch.compile(model)``: median ms per step (CUDA events, one
step each, after the first and ``--warmup-steps`` more), first-step seconds (building the optimizer,
compiling and capturing land here, or in the warm-up steps' seconds, also kept, for a capture made at a
later step; the compiled model's own compile is done before the column starts and reported apart), the peak allocated memory over the timed steps, and the optimizer overhead = step
− the AdamW-only step of the same model mode in the same run (measured first and again after the other
recipes, the lower of the two: ``floor_again``). The loss of the first and last step is
kept as a check that the recipe trains (the batch is fixed, so it must fall).

Recipes whose package is missing print "n/a (not installed)"; one that fails (or a compiled model that
fails) prints its error's first line, type and last lines, all three also kept in the JSON; one that
runs past ``--recipe-timeout-s`` or starts after ``--budget-s`` is cut and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.util
import inspect
import os
import signal
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: fpolar
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/: common, gpt

import fpolar  # noqa: E402
from common import (  # noqa: E402
    environment,
    pick_device,
    print_header,
    products_on_cublas,
    save_json,
    settle_compiler_for_peers,
    sync,
)
from gpt import GPT, GPT2_MEDIUM, GPT2_SMALL, GPTConfig, is_hidden_matrix, lm_loss, random_batch  # noqa: E402

MODELS: Dict[str, GPTConfig] = {"gpt2-small": GPT2_SMALL, "gpt2-medium": GPT2_MEDIUM}
QUICK_MODELS: Dict[str, GPTConfig] = {"tiny": GPTConfig(layers=2, d_model=64, heads=4, vocab=256, block=64)}

NS_STEPS = 5
LR_MUON = 0.02
LR_ADAMW = 1e-3
ADAMW_BETAS = (0.9, 0.95)

Step = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------- what a recipe gets


@dataclass
class Run:
    """One model and one way to run its forward, shared by the recipes of a column."""

    model: nn.Module  # parameters are reset to the same initial values before each recipe
    forward: nn.Module  # ``model`` or ``torch.compile(model)``
    compiled_model: bool
    device: torch.device
    autocast: Optional[torch.dtype]

    def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        ctx = torch.autocast(self.device.type, dtype=self.autocast) if self.autocast else contextlib.nullcontext()
        with ctx:
            return lm_loss(self.forward, idx, targets)

    def loss_fn(self, model: nn.Module, idx: Tensor, targets: Tensor) -> Tensor:
        """``loss_fn(model, *batch)`` for ``make_train_step``: ``model`` is this run's model, so the
        forward it runs is this run's (compiled or not)."""
        return self.loss(idx, targets)

    def hidden(self) -> List[Tensor]:
        return [p for n, p in self.model.named_parameters() if is_hidden_matrix(n, p)]

    def rest(self) -> List[Tensor]:
        return [p for n, p in self.model.named_parameters() if not is_hidden_matrix(n, p)]


@dataclass
class Recipe:
    name: str
    kind: str  # "floor", "peer" or "fpolar"
    build: Callable[[Run], Step]
    # The floor its overhead is taken against: the whole-step compiled recipe against AdamW compiled the
    # same way (forward + backward + optimizer in one graph), every other recipe against fused AdamW.
    floor: str = "AdamW fused, everything (the floor)"
    needs: Optional[str] = None  # import name of the peer package
    modes: Tuple[str, ...] = ("eager", "compiled")  # model modes it runs with
    cuda_only: bool = False
    compiles: bool = False  # the recipe compiles something itself (skipped by --no-compile)


def _adamw(params: Sequence[Tensor], device: torch.device) -> torch.optim.Optimizer:
    kind = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(params, lr=LR_ADAMW, betas=ADAMW_BETAS, weight_decay=0.0, **kind)


def _loop(run: Run, *opts: torch.optim.Optimizer, set_to_none: bool = True) -> Step:
    """The usual loop body: forward, backward, every optimizer's step, zero_grad."""

    def step(idx: Tensor, targets: Tensor) -> Tensor:
        loss = run.loss(idx, targets)
        loss.backward()
        for o in opts:
            o.step()
        for o in opts:
            o.zero_grad(set_to_none=set_to_none)
        return loss.detach()

    step.optimizers = opts  # type: ignore[attr-defined]  (measure reads their CUDA-graph programs)
    return step


# --------------------------------------------------------------------------- recipes


def adamw_only(run: Run) -> Step:
    return _loop(run, _adamw(list(run.model.parameters()), run.device))


def torch_muon(run: Run) -> Step:
    if not hasattr(torch.optim, "Muon"):
        raise ModuleNotFoundError(f"torch {torch.__version__} has no torch.optim.Muon")
    muon = torch.optim.Muon(run.hidden(), lr=LR_MUON, weight_decay=0.0, momentum=0.95, nesterov=True, ns_steps=NS_STEPS)
    return _loop(run, muon, _adamw(run.rest(), run.device))


def _dion_muon(run: Run):
    import dion

    groups = [
        {"params": run.hidden()},
        {"params": run.rest(), "algorithm": "adamw", "lr": LR_ADAMW, "beta1": ADAMW_BETAS[0], "beta2": ADAMW_BETAS[1]},
    ]
    # distributed_mesh=None: one device. Its NS is Polar Express, 5 steps, bf16, torch.compile'd.
    return dion.Muon(groups, distributed_mesh=None, lr=LR_MUON, mu=0.95, weight_decay=0.0, nesterov=True)


def dion_muon(run: Run) -> Step:
    return _loop(run, _dion_muon(run))


def dion_muon_cuda_graph(run: Run) -> Step:
    from dion.cuda_graph import CudaGraphOptimizer

    # its wrapper captures the optimizer step after the warm-up steps; .grad must keep its address
    return _loop(run, CudaGraphOptimizer(_dion_muon(run), warmup_steps=2), set_to_none=False)


def heavyball_muon(run: Run) -> Step:
    import heavyball
    import heavyball.utils as hbu

    # heavyball's own default mode ("max-autotune-no-cudagraphs") autotunes every matmul shape on
    # the first step; the default mode is what its users get without that minutes-long wait.
    hbu.compile_mode = "default"
    muon = heavyball.Muon(run.hidden(), lr=LR_MUON, betas=(0.95, 0.99), weight_decay=0.0, nesterov=True)
    return _loop(run, muon, _adamw(run.rest(), run.device))


def eo_muon(run: Run) -> Step:
    from emerging_optimizers.orthogonalized_optimizers import Muon

    # fp32_matmul_prec="medium": its Newton–Schulz in bf16, one matrix at a time
    muon = Muon(run.hidden(), lr=LR_MUON, momentum=0.95, weight_decay=0.0, num_ns_steps=NS_STEPS,
                nesterov=True, scale_mode="shape_scaling", fp32_matmul_prec="medium")
    return _loop(run, muon, _adamw(run.rest(), run.device))


def _fpolar_muon(run: Run, **extra) -> torch.optim.Optimizer:
    import fpolar.optim as fo

    accepted = inspect.signature(fo.Muon.__init__).parameters
    missing = [k for k in extra if k not in accepted]
    if missing:
        raise TypeError(f"fpolar.optim.Muon takes no {missing} in this version")
    groups = fo.param_groups(run.model, adamw={"lr": LR_ADAMW, "betas": ADAMW_BETAS, "weight_decay": 0.0})
    return fo.Muon(groups, lr=LR_MUON, weight_decay=0.0, momentum=0.95, nesterov=True, ns_steps=NS_STEPS, **extra)


def fpolar_muon(run: Run) -> Step:
    return _loop(run, _fpolar_muon(run))


def fpolar_muon_torch_glue(run: Run) -> Step:
    """The drop-in with the torch glue instead of the fused glue ops (``FPOLAR_GLUE=torch`` while its
    plan is built, at the first step): the two glues side by side in one run."""
    opt = _fpolar_muon(run)
    step = _loop(run, opt)
    built: List[bool] = []

    def first_with_torch_glue(idx: Tensor, targets: Tensor) -> Tensor:
        if built:
            return step(idx, targets)
        before = os.environ.get("FPOLAR_GLUE")
        os.environ["FPOLAR_GLUE"] = "torch"
        try:
            return step(idx, targets)
        finally:
            built.append(True)
            if before is None:
                del os.environ["FPOLAR_GLUE"]
            else:
                os.environ["FPOLAR_GLUE"] = before

    return first_with_torch_glue


def _tuning_on() -> Callable[[], ContextManager[None]]:
    """A context factory: inside, the process-wide kernel tuner is one that tunes (``FPOLAR_TUNE=1``),
    the same one each time, so what it measured at the first step holds for the rest."""
    from fpolar.kernels import tuning

    tuner = tuning.KernelTuner(enabled=True)

    @contextlib.contextmanager
    def inside() -> Iterator[None]:
        before, tuning._TUNER = tuning._TUNER, tuner
        try:
            yield
        finally:
            tuning._TUNER = before

    return inside


def _inside(setting: Callable[[], ContextManager[None]], build: Callable[[Run], Step]) -> Callable[[Run], Step]:
    """``build``'s recipe with its building and every step run inside ``setting()`` (a context
    factory), so the setting holds for the plan, the capture and each replay, and nowhere else."""

    def built(run: Run) -> Step:
        with setting():
            step = build(run)

        def inside(idx: Tensor, targets: Tensor) -> Tensor:
            with setting():
                return step(idx, targets)

        inside.optimizers = getattr(step, "optimizers", ())  # type: ignore[attr-defined]
        return inside

    return built


def _tuned(build: Callable[[Run], Step]) -> Callable[[Run], Step]:
    """``build``'s recipe with the kernel tuner on: the ``auto`` choices and Triton configs measured on
    this device at the first step (tuning time lands in the first step's seconds)."""
    return lambda run: _inside(_tuning_on(), build)(run)


def fpolar_muon_eager(run: Run) -> Step:
    return _loop(run, _fpolar_muon(run, compiled=False))


def fpolar_muon_grads_kept(run: Run) -> Step:
    # .grad tensors zeroed in place keep their addresses (the captured step reads them), and backward
    # adds into them: what accumulating costs against the default loop's fresh grads
    return _loop(run, _fpolar_muon(run), set_to_none=False)


def adamw_grads_kept(run: Run) -> Step:
    """AdamW-only with ``zero_grad(set_to_none=False)``: what zeroing the grads and accumulating into
    them costs the floor itself (compare with the floor row of the same run)."""
    return _loop(run, _adamw(list(run.model.parameters()), run.device), set_to_none=False)


def _hparams(device: torch.device) -> Tuple[fpolar.PolarGradHParams, fpolar.AdamWHParams]:
    """torch.optim.Muon's math on fpolar's functional step; 0-d tensor lrs on the device."""
    polar = fpolar.PolarGradHParams(
        lr=torch.tensor(LR_MUON, device=device), weight_decay=0.0, momentum=0.95, nesterov=True, scale="shape",
        coefficients="muon", ns_steps=NS_STEPS, polar_dtype=torch.bfloat16 if device.type == "cuda" else None,
    )
    adamw = fpolar.AdamWHParams(lr=torch.tensor(LR_ADAMW, device=device), betas=ADAMW_BETAS, weight_decay=0.0)
    return polar, adamw


def fpolar_cuda_graph(run: Run, lanes: Optional[int] = None) -> Step:
    """``make_train_step`` + ``capture_cuda_graph`` (``lanes``: its argument; None: its default)."""
    from fpolar.compile import capture_cuda_graph, make_train_step

    polar, adamw = _hparams(run.device)
    step = make_train_step(run.model, run.loss_fn, polar, adamw, split=is_hidden_matrix)
    graphed: List[Callable] = []

    def replay(idx: Tensor, targets: Tensor) -> Tensor:
        if not graphed:  # the capture (with its eager warm-up steps) is part of the first step
            lanes_kw = {} if lanes is None else {"lanes": lanes}
            graphed.append(capture_cuda_graph(step, idx, targets, **lanes_kw))
        return graphed[0](idx, targets)

    return replay


# The drop-in with 4 lanes during each step (its default is 1, groups in order), and the one-graph
# recipe captured with ``lanes=1`` (its default is 4): what the lanes give end to end, beside the
# defaults of the same run.
fpolar_muon_side_by_side = _inside(lambda: fpolar.side_streams.lanes(4), fpolar_muon)


def fpolar_cuda_graph_in_order(run: Run) -> Step:
    return fpolar_cuda_graph(run, lanes=1)


def _fpolar_whole_step_compiled(mode: Optional[str]) -> Callable[[Run], Step]:
    def build(run: Run) -> Step:
        from fpolar.compile import make_train_step

        polar, adamw = _hparams(run.device)
        step = make_train_step(run.model, run.loss_fn, polar, adamw, split=is_hidden_matrix, backward="func")
        compile_step = getattr(fpolar.compile, "compile_train_step", None)
        if compile_step is not None:
            return compile_step(step, mode=mode)
        return torch.compile(step, fullgraph=True, mode=mode)

    return build


def _fpolar_optimizer_compiled(mode: Optional[str], kernels: str = "auto") -> Callable[[Run], Step]:
    """The model runs as the column says, ``loss.backward()`` as usual, then fpolar's functional
    PolarGrad + AdamW step as one compiled function (state marked static-address); ``kernels``: the
    polar step's ``kernels`` option."""

    def build(run: Run) -> Step:
        from fpolar.compile import mark_static

        polar, adamw = _hparams(run.device)
        polar = dataclasses.replace(polar, kernels=kernels)
        mats, rest = run.hidden(), run.rest()
        state, astate = fpolar.init_state(mats, polar), fpolar.init_adamw_state(rest, adamw)
        for p in mats + rest:
            p.grad = torch.zeros_like(p)  # static .grad buffers: backward accumulates into them
        grads = [p.grad for p in mats + rest]
        mark_static(mats, rest, grads, state, astate, polar, adamw)
        n = len(mats)

        def opt_step() -> None:
            fpolar.polargrad_step(mats, grads[:n], state, polar)
            fpolar.adamw_step(rest, grads[n:], astate, adamw)

        compiled = torch.compile(opt_step, fullgraph=True, mode=mode)

        def step(idx: Tensor, targets: Tensor) -> Tensor:
            loss = run.loss(idx, targets)
            loss.backward()
            with torch.no_grad():
                compiled()
            torch._foreach_zero_(grads)
            return loss.detach()

        return step

    return build


def adamw_whole_step_compiled(run: Run) -> Step:
    """The whole-step floor: every parameter on fpolar's functional AdamW, forward + backward + AdamW
    compiled as one graph (``make_train_step(backward="func")`` + ``compile_train_step``)."""
    from fpolar.compile import compile_train_step, make_train_step

    polar, adamw = _hparams(run.device)
    step = make_train_step(run.model, run.loss_fn, polar, adamw, split=lambda name, p: False, backward="func")
    return compile_train_step(step)


WHOLE_STEP_FLOOR = "AdamW, make_train_step(func) + compile_train_step (whole-step floor)"


def recipes() -> List[Recipe]:
    """In the order they run: the rows a time budget must not lose first, slow-to-compile peers last."""
    return [
        Recipe("AdamW fused, everything (the floor)", "floor", adamw_only),
        Recipe("torch.optim.Muon + fused AdamW", "peer", torch_muon),
        Recipe("dion Muon (+ its AdamW)", "peer", dion_muon, needs="dion", compiles=True),
        Recipe("dion Muon + its CudaGraphOptimizer", "peer", dion_muon_cuda_graph, needs="dion", cuda_only=True, compiles=True),
        Recipe("fpolar.optim.Muon(param_groups(model))", "fpolar", fpolar_muon),
        Recipe("fpolar.optim.Muon, torch glue (FPOLAR_GLUE=torch)", "fpolar", fpolar_muon_torch_glue, cuda_only=True),
        Recipe("fpolar.optim.Muon, groups side by side (MAX_LANES=4)", "fpolar", fpolar_muon_side_by_side, cuda_only=True),
        Recipe("fpolar.optim.Muon, zero_grad(set_to_none=False)", "fpolar", fpolar_muon_grads_kept, cuda_only=True),
        Recipe("AdamW fused, zero_grad(set_to_none=False)", "peer", adamw_grads_kept),
        Recipe("fpolar.optim.Muon(..., compiled=False)", "fpolar", fpolar_muon_eager),
        Recipe("fpolar.optim.Muon, every product on cuBLAS", "fpolar", _inside(products_on_cublas, fpolar_muon),
               cuda_only=True),
        Recipe("fpolar make_train_step + capture_cuda_graph", "fpolar", fpolar_cuda_graph, cuda_only=True),
        Recipe("fpolar capture_cuda_graph, every product on cuBLAS", "fpolar",
               _inside(products_on_cublas, fpolar_cuda_graph), cuda_only=True),
        Recipe("fpolar capture_cuda_graph, groups in order (lanes=1)", "fpolar", fpolar_cuda_graph_in_order, cuda_only=True),
        Recipe("fpolar capture_cuda_graph, tuned kernels (FPOLAR_TUNE=1)", "fpolar", _tuned(fpolar_cuda_graph), cuda_only=True),
        Recipe("fpolar.optim.Muon, tuned kernels (FPOLAR_TUNE=1)", "fpolar", _tuned(fpolar_muon), cuda_only=True),
        Recipe("fpolar step compiled apart (torch.compile)", "fpolar", _fpolar_optimizer_compiled(None), compiles=True),
        Recipe(WHOLE_STEP_FLOOR, "floor", adamw_whole_step_compiled, modes=("eager",), compiles=True),
        Recipe("fpolar make_train_step(func) + compile_train_step", "fpolar",
               _fpolar_whole_step_compiled(None), modes=("eager",), compiles=True, floor=WHOLE_STEP_FLOOR),
        Recipe("Emerging-Optimizers Muon + fused AdamW", "peer", eo_muon, needs="emerging_optimizers"),
        Recipe("heavyball Muon + fused AdamW", "peer", heavyball_muon, needs="heavyball", compiles=True),
        Recipe("fpolar step compiled apart (reduce-overhead)", "fpolar", _fpolar_optimizer_compiled("reduce-overhead"),
               cuda_only=True, compiles=True),
        Recipe('fpolar step compiled apart (reduce-overhead), kernels="symmetric"', "fpolar",
               _fpolar_optimizer_compiled("reduce-overhead", kernels="symmetric"), cuda_only=True, compiles=True),
    ]


def select_recipes(only: Optional[str], no_compile: bool) -> List[Recipe]:
    """The recipes to run, in order: those whose name contains one of the comma-separated ``only``
    substrings (case-insensitive; all when None), minus those that compile when ``no_compile``, and
    the floors they are measured against (fused AdamW always), all in the order ``recipes()`` lists them
    (a floor is listed before the recipes measured against it)."""
    # One list: the builders of some recipes are closures made by recipes(), so a second call's
    # Recipe objects compare unequal to the first's.
    listed = recipes()
    wanted = [o.strip().lower() for o in only.split(",")] if only else None
    chosen = [
        r for r in listed
        if r.kind != "floor" and (wanted is None or any(o in r.name.lower() for o in wanted))
        and not (no_compile and r.compiles)
    ]
    needed = {Recipe.floor} | {r.floor for r in chosen}
    return [
        r for r in listed
        if (r.kind == "floor" and r.name in needed and not (no_compile and r.compiles)) or r in chosen
    ]


# --------------------------------------------------------------------------- measuring


class RecipeTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise RecipeTimeout in the main thread after ``seconds`` (SIGALRM; a no-op where it is missing)."""
    if not hasattr(signal, "SIGALRM") or seconds == float("inf"):
        yield
        return

    def on_alarm(signum, frame):
        raise RecipeTimeout(f"timed out after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def step_times_ms(step: Step, batch: Tuple[Tensor, Tensor], n: int, device: torch.device) -> Tuple[List[float], Tensor]:
    """Milliseconds of each of ``n`` steps (CUDA events on CUDA, host clock on CPU) and the last loss."""
    loss = None
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for start, end in events:
            start.record()
            loss = step(*batch)
            end.record()
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in events], loss
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        loss = step(*batch)
        times.append((time.perf_counter() - t0) * 1e3)
    return times, loss


def reset_model(model: nn.Module, initial: List[Tensor]) -> None:
    with torch.no_grad():
        for p, p0 in zip(model.parameters(), initial):
            p.copy_(p0)
            p.grad = None


def measure(recipe: Recipe, run: Run, batch: Tuple[Tensor, Tensor], args: argparse.Namespace) -> Dict[str, object]:
    device = run.device
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    step = recipe.build(run)
    first_loss = step(*batch)
    sync(device)
    first_s = time.perf_counter() - t0
    # read now: a captured step returns the graph's static loss tensor, which every replay rewrites
    first_loss = first_loss.detach().clone()
    t0 = time.perf_counter()
    for _ in range(args.warmup_steps):
        step(*batch)
    sync(device)
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, last_loss = step_times_ms(step, batch, args.steps, device)
    row: Dict[str, object] = {
        "ms": statistics.median(times),
        "ms_min": min(times),
        "first_step_s": first_s,
        "warmup_steps_s": warmup_s,  # captures made at a later step (CUDA graphs) land here
        "loss_first": float(first_loss),
        "loss_last": float(last_loss),
    }
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    programs = [getattr(o, "_program", None) for o in getattr(step, "optimizers", ())]
    programs = [p for p in programs if p is not None and hasattr(p, "recaptures")]
    if programs:  # fpolar's drop-in: did its graph follow the grads backward left, or copy them in?
        row["cuda_graph"] = {"captures": sum(p.captures for p in programs),
                             "recaptures": sum(p.recaptures for p in programs),
                             "graphs": sum(p.graphs for p in programs),
                             "copied_grads": sum(p.copied_grads for p in programs),
                             "copies_grads": any(p.copies_grads for p in programs)}
    if args.profile > 0:
        try:
            row["profile"] = profile_steps(step, batch, args.profile, device)
        except Exception as e:  # noqa: BLE001 - the timed row stands without its profile
            row["profile_error"] = f"{type(e).__name__}: {str(e).strip()[:200]}"
    return row


PROFILE_TOP = 12


def profile_steps(step: Step, batch: Tuple[Tensor, Tensor], n: int, device: torch.device) -> Dict[str, object]:
    """``n`` more steps under torch.profiler: wall ms per step (from the first launch to the end of the
    last, synchronized; the profiler adds some host cost), the ms per step the device spent in kernels
    and copies (summed, so overlapping streams count twice), and the ``PROFILE_TOP`` costliest kernels
    (host ops, off CUDA) per step. Wall well above device-busy: the device waits on the host
    (launches, syncs)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    sync(device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(n):
            step(*batch)
        sync(device)
        wall_ms = (time.perf_counter() - t0) * 1e3 / n
    averages = prof.key_averages()
    if on_cuda:
        # record_function ranges (e.g. "Optimizer.step#Muon.step") also show as device-side rows, their
        # span of the kernels inside them: not kernels, so left out of the busy sum and the top list
        timed = [(e.key, e.count, e.self_device_time_total) for e in averages
                 if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
    else:
        timed = [(e.key, e.count, e.self_cpu_time_total) for e in averages]
    timed.sort(key=lambda t: -t[2])
    return {
        "steps": n,
        "wall_ms_per_step": wall_ms,
        "device_busy_ms_per_step": sum(t[2] for t in timed) / 1e3 / n if on_cuda else None,
        "top": [{"name": k[:120], "calls_per_step": c / n, "ms_per_step": us / 1e3 / n} for k, c, us in timed[:PROFILE_TOP]],
    }


def _print_profile(row: Dict[str, object]) -> None:
    """The profile of a row (``--profile``), indented under its status line."""
    if "profile_error" in row:
        print(f"    profile failed: {row['profile_error']}", flush=True)
    prof = row.get("profile")
    if not prof:
        return
    busy = prof["device_busy_ms_per_step"]
    busy_text = f", device busy {busy:.2f} ms" if busy is not None else ""
    print(f"    profile over {prof['steps']} steps: wall {prof['wall_ms_per_step']:.2f} ms/step{busy_text}", flush=True)
    for t in prof["top"]:
        print(f"    {t['ms_per_step']:8.3f} ms  {t['calls_per_step']:6.1f}×  {t['name'][:90]}", flush=True)


def compile_model_warmup(run: Run, batch: Tuple[Tensor, Tensor]) -> float:
    """Seconds of the compiled model's first forward + backward (its compile), done once per column."""
    sync(run.device)
    t0 = time.perf_counter()
    for _ in range(2):  # the second call settles any recompile from the first backward
        run.loss(*batch).backward()
    sync(run.device)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- the run


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, model eager only, recipes that need no compile")
    ap.add_argument("--device", default=None)
    ap.add_argument("--models", default=None, help=f"comma list of {list(MODELS)} (default: both)")
    ap.add_argument("--modes", default=None, help="comma list of eager,compiled (default both; --quick: eager)")
    ap.add_argument("--only", default=None, help="comma list of substrings of recipe names (the floor always runs)")
    ap.add_argument("--no-compile", action="store_true", help="skip recipes that compile something themselves")
    ap.add_argument("--batch", type=int, default=None, help="sequences per batch (default 8; --quick 2)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 1024; --quick 32)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20; --quick 3)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="steps after the first, before timing (default 3; --quick 1)")
    ap.add_argument("--autocast", choices=["bf16", "none"], default=None, help="default bf16 on CUDA, none on CPU")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="no recipe starts after this many seconds, and none runs past it (default 420 on CUDA)")
    ap.add_argument("--recipe-timeout-s", type=float, default=150.0, help="cut one recipe after this many seconds")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after the timed steps, profile N more per recipe: host and device-busy ms per step and "
                         "the top kernels (tells a host-bound step from a device-bound one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write every number to this JSON file")
    ap.add_argument("--md", default=None, help="write the markdown tables to this file")
    args = ap.parse_args(argv)
    args.batch = args.batch or (2 if args.quick else 8)
    args.seq = args.seq or (32 if args.quick else 1024)
    args.steps = args.steps or (3 if args.quick else 20)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (1 if args.quick else 3)
    if args.quick:
        args.no_compile = True
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    settle_compiler_for_peers()
    device = pick_device(args.device)
    if args.quick and device.type == "cpu":
        torch.set_num_threads(1)  # tiny shapes: threads only wait on each other
    budget = args.budget_s if args.budget_s is not None else (420.0 if device.type == "cuda" else float("inf"))
    autocast = {"bf16": torch.bfloat16, "none": None}[args.autocast or ("bf16" if device.type == "cuda" else "none")]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    table = QUICK_MODELS if args.quick else MODELS
    model_names = [m.strip() for m in (args.models or ",".join(table)).split(",") if m.strip()]
    unknown = [m for m in model_names if m not in table]
    if unknown:
        print(f"unknown model(s) {unknown}; choose from {list(table)}")
        return 2
    modes = [m.strip() for m in (args.modes or ("eager" if args.quick else "eager,compiled")).split(",") if m.strip()]
    if any(m not in ("eager", "compiled") for m in modes):
        print(f"unknown mode in {modes}; choose from eager, compiled")
        return 2
    all_recipes = select_recipes(args.only, args.no_compile)

    env = environment(device)
    print_header(env)
    t_start = time.perf_counter()
    deadline = t_start + budget
    results: Dict[str, object] = {
        "env": env, "batch": args.batch, "seq": args.seq, "steps": args.steps, "autocast": str(autocast),
        "budget_s": budget, "recipe_timeout_s": args.recipe_timeout_s, "models": {},
    }
    for model_name in model_names:
        cfg = table[model_name]
        torch.manual_seed(args.seed)
        model = GPT(cfg).to(device)
        initial = [p.detach().clone() for p in model.parameters()]
        batch = random_batch(cfg, args.batch, args.seq, device, seed=args.seed)
        entry: Dict[str, object] = {
            "config": vars(cfg) if hasattr(cfg, "__dict__") else str(cfg),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "columns": {},
        }
        results["models"][model_name] = entry
        for mode in modes:
            column: Dict[str, object] = {"rows": []}
            entry["columns"][mode] = column
            run = Run(model, torch.compile(model) if mode == "compiled" else model, mode == "compiled", device, autocast)
            if mode == "compiled":
                left = deadline - time.perf_counter()
                try:
                    with time_limit(min(args.recipe_timeout_s, left)):
                        column["model_compile_s"] = compile_model_warmup(run, batch)
                    print(f"[{time.perf_counter() - t_start:6.1f} s] {model_name} | compiled model: first fwd+bwd "
                          f"{column['model_compile_s']:.1f} s", flush=True)
                except Exception as e:  # noqa: BLE001
                    column.update(_failure(e))
                    print(f"{model_name} | compiled model failed: {column['error']}", flush=True)
                    _print_detail(column)
                    continue
                reset_model(model, initial)
            for recipe in all_recipes:
                if mode not in recipe.modes:
                    continue
                row: Dict[str, object] = {"name": recipe.name, "kind": recipe.kind, "floor": recipe.floor}
                left = deadline - time.perf_counter()
                if recipe.cuda_only and device.type != "cuda":
                    row["error"] = "n/a (needs CUDA)"
                elif recipe.needs and importlib.util.find_spec(recipe.needs) is None:
                    row["error"] = "n/a (not installed)"
                elif left < 5:
                    row["error"] = f"n/a (time budget of {budget:.0f} s spent)"
                else:
                    try:
                        with time_limit(min(args.recipe_timeout_s, left)):
                            row.update(measure(recipe, run, batch, args))
                    except RecipeTimeout as e:
                        row["error"] = f"cut: {e}"
                    except Exception as e:  # noqa: BLE001 - one recipe failing must not stop the table
                        row.update(_failure(e))
                        if os.environ.get("TRAIN_TRACEBACK"):
                            traceback.print_exc()
                    finally:
                        _cleanup(model, initial, device)
                column["rows"].append(row)
                status = row.get("error") or (
                    f"{row['ms']:.2f} ms/step, first step {row['first_step_s']:.1f} s, "
                    f"loss {row['loss_first']:.3f} → {row['loss_last']:.3f}"
                )
                print(f"[{time.perf_counter() - t_start:6.1f} s] {model_name} | model {mode} | {recipe.name}: {status}",
                      flush=True)
                _print_detail(row)
                _print_profile(row)
            floor_again(column, all_recipes, run, batch, args, deadline, model, initial, t_start)
            # the lower of the floor's two measurements: a transient slowdown must not shrink overheads
            floors = {r["name"]: min(r["ms"], r.get("ms_again", r["ms"])) for r in column["rows"]
                      if r["kind"] == "floor" and "ms" in r}
            for r in column["rows"]:
                floor = floors.get(r["floor"])
                if "ms" in r and floor is not None:
                    r["overhead_ms"] = r["ms"] - floor
        del model, initial, batch
        _cleanup(None, [], device)

    md = markdown(results, modes)
    print()
    print(md)
    print(f"total {time.perf_counter() - t_start:.0f} s")
    results["markdown"] = md
    save_json(args.json, results)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md + "\n")
        print(f"wrote {args.md}")
    return 0


def floor_again(column: Dict[str, object], all_recipes: Sequence[Recipe], run: Run, batch: Tuple[Tensor, Tensor],
                args: argparse.Namespace, deadline: float, model: nn.Module, initial: List[Tensor], t_start: float) -> None:
    """Measures the fused-AdamW floor of a column a second time, after its other recipes, into its row's
    ``ms_again``. Why: the floor runs first, right after the model's compile, and one run (H200,
    2026-12-03) measured it 1.2 ms slower there than in the next run, which would have shrunk every
    overhead of the column by as much. The overheads are taken against the lower of the two."""
    row = next((r for r in column["rows"] if r["name"] == Recipe.floor and "ms" in r), None)
    recipe = next((r for r in all_recipes if r.name == Recipe.floor), None)
    left = deadline - time.perf_counter()
    if row is None or recipe is None or len(column["rows"]) < 2 or left < 5:
        return
    try:
        with time_limit(min(args.recipe_timeout_s, left)):
            again = measure(recipe, run, batch, args)
    except Exception as e:  # noqa: BLE001 - the first measurement stands
        row["again_error"] = f"{type(e).__name__}: {str(e).strip()[:160]}"
        return
    finally:
        _cleanup(model, initial, run.device)
    row["ms_again"] = again["ms"]
    print(f"[{time.perf_counter() - t_start:6.1f} s] the floor again, after the other recipes: {again['ms']:.2f} "
          f"ms/step (first: {row['ms']:.2f}); overheads are taken against {min(row['ms'], again['ms']):.2f}", flush=True)


DETAIL_LINES = 15


def _failure(e: BaseException) -> Dict[str, object]:
    """What a failed recipe or compiled model keeps: a one-line ``error`` for the table, the exception's
    ``error_type`` and ``error_detail``, the last ``DETAIL_LINES`` non-empty lines of its traceback and
    message (chained causes included). The cause of e.g. ``BackendCompilerFailed`` sits at the end of a
    long message whose first line only names the backend, so the first line alone loses it."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    full = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    tail = [ln.rstrip() for ln in full.splitlines() if ln.strip()][-DETAIL_LINES:]
    return {"error": f"{type(e).__name__}: {lines[0][:120] if lines else ''}",
            "error_type": f"{type(e).__module__}.{type(e).__qualname__}",
            "error_detail": "\n".join(tail)}


def _print_detail(entry: Dict[str, object]) -> None:
    """The kept last lines of a failure, indented under its status line; for fpolar's drop-in, its
    CUDA graph's captures, recaptures and whether it copies the grads in."""
    if "cuda_graph" in entry:
        print(f"    CUDA graph: {entry['cuda_graph']}", flush=True)
    if "error_detail" in entry:
        print(f"    {entry['error_type']}, last lines:", flush=True)
        for ln in str(entry["error_detail"]).splitlines():
            print(f"    | {ln}", flush=True)


def _cleanup(model: Optional[nn.Module], initial: List[Tensor], device: torch.device) -> None:
    """Back to the same starting point for the next recipe: initial weights, no grads, no leftovers."""
    if model is not None:
        reset_model(model, initial)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def markdown(results: Dict[str, object], modes: Sequence[str]) -> str:
    """One table per model: a row per recipe, column pairs (ms/step, overhead over AdamW) per model mode."""
    env = results["env"]
    out = [f"Command: `{env['command']}`; device: {env['device']}, torch {env['torch']}; batch "
           f"{results['batch']} × {results['seq']} tokens, autocast {results['autocast']}; median of "
           f"{results['steps']} steps."]
    for model_name, entry in results["models"].items():
        cols = entry["columns"]
        out.append("")
        header = [f"{model_name} ({entry['params_m']:.0f}M params)"]
        for mode in modes:
            extra = f", model compile {cols[mode]['model_compile_s']:.0f} s" if "model_compile_s" in cols.get(mode, {}) else ""
            header += [f"model {mode}: ms/step{extra}", "overhead ms", "1st step s", "peak GiB"]
        header.append("loss first → last")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        names: List[str] = []
        for mode in modes:
            for r in cols.get(mode, {}).get("rows", []):
                if r["name"] not in names:
                    names.append(r["name"])
        for name in names:
            cells = [name]
            loss = ""
            for mode in modes:
                r = next((x for x in cols.get(mode, {}).get("rows", []) if x["name"] == name), None)
                if r is None:
                    cells += ["—", "", "", ""]
                elif "error" in r:
                    cells += [r["error"].replace("|", "/"), "", "", ""]
                else:
                    again = f" (again: {r['ms_again']:.2f})" if "ms_again" in r else ""
                    cells += [f"{r['ms']:.2f}{again}", f"{r.get('overhead_ms', float('nan')):+.2f}",
                              f"{r['first_step_s']:.1f}", f"{r['peak_gib']:.2f}" if "peak_gib" in r else "—"]
                    loss = loss or f"{r['loss_first']:.3f} → {r['loss_last']:.3f}"
            cells.append(loss)
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
