"""Distributed fpolar on N GPUs (NCCL, one process a GPU): parity, CUDA-graph capture, scaling, end to end.

    python3 benchmarks/distributed_gpu.py --out DIR               # every visible GPU (1 GPU: the baseline rows)
    python3 benchmarks/distributed_gpu.py --world 2 --out DIR     # 2 of them
    python3 benchmarks/distributed_gpu.py --device cpu --world 2 --quick --out DIR   # gloo smoke run

No torchrun: the script spawns its own ranks (``torch.multiprocessing``, a free port), one spawn per part,
each with its own time limit; a part that fails or hangs is recorded (error, or "timed out") and the
next part runs. World 1 is a 1-rank NCCL group with ``fully_shard`` on a 1-GPU mesh: the single-GPU
baseline rows of the same code. NCCL's NVLink multicast is kept off (the three variables below).

Parts (``--parts``, default all):

* ``parity``: the distributed checks of the gloo suite (``tests/distributed/checks.py``: FSDP2, DDP-style
  replicated, Replicate DTensors, tensor-parallel polar, fpolar.optim.Muon on fully_shard with DCP,
  the compiled step, ...) run on NCCL, one GPU a rank; pass/fail and measured errors per check. On CUDA
  the checks iterate in float32 against the one-process CPU reference (tolerance 1e-3), and
  ``bf16_exchange`` checks the bfloat16 path within its bf16 bound. World 1 runs the checks that mean
  something on one rank.
* ``capture`` (CUDA only): the functional distributed step on a fully_shard model captured in one
  ``torch.cuda.CUDAGraph`` (replays against eager steps from the same state, same grads), the same step
  under ``torch.compile(mode="reduce-overhead")`` with its state marked static (``fpolar.compile.mark_static``;
  cudagraph skips counted), and ``fpolar.optim.Muon``
  with ``compiled="cuda_graph"`` on fully_shard params against ``compiled=False``.
* ``scaling``: per-rank optimizer step time (median; CUDA events) on the GPT-2-medium matrix set (24 ×
  qkv 3072×1024, out 1024×1024, fc 4096×1024, proj 1024×4096) and a ~1.2B set (d 2048, 24 layers),
  fully_shard per layer: the fpolar functional step (eager and CUDA graph), fpolar.optim.Muon (eager and
  ``compiled="cuda_graph"``), dion's Muon on the same model; the all_to_all time of the step's payload
  (the plan's row groups, there and back, in the polar dtype); the one-device step on rank 0 on whole
  tensors; and the target 1.1 × one-device time / world + all_to_all time.
* ``e2e``: a GPT-2-medium train step (forward, backward, optimizer; bf16 autocast; fully_shard on each
  block and the root; 8 × 1024 tokens a rank): AdamW only (foreach), fpolar.optim.Muon + AdamW (eager
  and ``compiled="cuda_graph"``), dion Muon + its AdamW; median ms per step (slowest rank).

Writes ``DIR/distributed_gpu.json`` and ``DIR/distributed_gpu.md``. Muon settings everywhere: 5
Newton–Schulz steps, momentum 0.95, Nesterov, no weight decay, lr 0.02 (AdamW lr 1e-3).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# NVLink multicast stays off in NCCL, PyTorch's symmetric memory and NVSHMEM (the spawned ranks inherit).
os.environ.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import Tensor, nn  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = os.path.join(ROOT, "tests", "distributed")
for path in (ROOT, HERE, TESTS):
    if path not in sys.path:
        sys.path.insert(0, path)

PARTS = ("parity", "capture", "scaling", "e2e")
CUDA_ONLY = {"capture"}
# seconds per part (each part's spawn is killed at its limit); their sum stays under the suite's 540 s
PART_LIMITS = {"parity": 140, "capture": 80, "scaling": 170, "e2e": 110}
# checks that mean nothing on one rank (two meshes of one rank are one mesh; a checkpoint from world 4)
NOT_AT_WORLD_1 = {"bad_input_changes_nothing", "dcp_reshard_from_4"}
LR_MUON, LR_ADAMW, NS_STEPS = 0.02, 1e-3, 5


# --------------------------------------------------------------------------- shapes


def matrix_set(d: int, layers: int) -> List[Tuple[int, int]]:
    """A GPT-2 block's hidden matrices (nn.Linear weights, (out, in)) for ``layers`` blocks of width d:
    the fused qkv (3d, d), attention out (d, d), MLP in (4d, d) and out (d, 4d)."""
    return [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)] * layers


def matrix_sets(quick: bool) -> Dict[str, List[Tuple[int, int]]]:
    if quick:
        return {"tiny (d 32, 2 layers)": matrix_set(32, 2)}
    return {"gpt2-medium (d 1024, 24 layers)": matrix_set(1024, 24), "~1.2B (d 2048, 24 layers)": matrix_set(2048, 24)}


class Weights(nn.Module):
    """One block's matrices as bare weights (what the optimizer sees; no forward needed)."""

    def __init__(self, shapes: Sequence[Tuple[int, int]]) -> None:
        super().__init__()
        self.w = nn.ParameterList(nn.Parameter(torch.randn(s) / s[1] ** 0.5) for s in shapes)

    def forward(self, x: Tensor) -> Tensor:  # fully_shard wants a forward
        return x


class Blocks(nn.Module):
    def __init__(self, shapes: Sequence[Tuple[int, int]], per_block: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Weights(shapes[i : i + per_block]) for i in range(0, len(shapes), per_block))

    def forward(self, x: Tensor) -> Tensor:
        return x


# --------------------------------------------------------------------------- per-rank helpers


class Ctx:
    """What a rank's part gets: rank, world, device, the 1-D mesh, the arguments."""

    def __init__(self, rank: int, world: int, device: torch.device, args: Dict[str, Any]) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        self.rank, self.world, self.device, self.args = rank, world, device, args
        self.mesh = init_device_mesh(device.type, (world,))
        self.quick = bool(args.get("quick"))

    def sharded(self, module: nn.Module, children: Sequence[nn.Module]) -> nn.Module:
        from torch.distributed.fsdp import fully_shard

        module.to(self.device)
        for child in children:
            fully_shard(child, mesh=self.mesh)
        fully_shard(module, mesh=self.mesh)
        return module


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_times_ms(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> List[float]:
    """ms of each of ``iters`` calls after ``warmup`` (CUDA events, else the host clock). A fixed count:
    every rank runs the same collectives."""
    import torch.distributed as dist

    for _ in range(warmup):
        fn()
    sync(device)
    dist.barrier()
    if device.type == "cuda":
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for a, b in ev:
            a.record()
            fn()
            b.record()
        torch.cuda.synchronize(device)
        return [a.elapsed_time(b) for a, b in ev]
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def median(xs: Sequence[float]) -> float:
    return round(statistics.median(xs), 4)


def failure(e: BaseException) -> Dict[str, Any]:
    lines = traceback.format_exception(type(e), e, e.__traceback__)
    return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300],
            "traceback_tail": "".join(lines)[-1500:]}


def dion_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("dion") is not None


def random_grads(params: Sequence[Tensor], seed: int) -> List[Tensor]:
    """A random grad per param in its layout (DTensor Shard(0) for a DTensor), different on every rank."""
    from torch.distributed.tensor import DTensor

    device = locals_of(params[:1])[0].device if params else torch.device("cpu")
    gen = torch.Generator(device=device).manual_seed(seed)  # drawn where they live: 1B numbers take a while on a CPU
    out = []
    for p in params:
        local = p.to_local() if hasattr(p, "to_local") else p
        g = torch.randn(local.shape, generator=gen, device=device, dtype=p.dtype)
        if hasattr(p, "to_local"):
            g = DTensor.from_local(g, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride())
        out.append(g)
    return out


def locals_of(ts: Sequence[Tensor]) -> List[Tensor]:
    return [t.to_local() if hasattr(t, "to_local") else t for t in ts]


def max_over_ranks(x: float, device: torch.device) -> float:
    import torch.distributed as dist

    t = torch.tensor([float(x)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def functional_hparams(device: torch.device, polar_dtype: Optional[torch.dtype] = None):
    """torch.optim.Muon's math on the functional step: lr a 0-d tensor on the device (read at each replay).
    The distributed step does not take the on-device skip yet: "propagate"."""
    import fpolar

    return fpolar.PolarGradHParams(
        lr=torch.tensor(LR_MUON, device=device), weight_decay=0.0, momentum=0.95, nesterov=True, scale="shape",
        coefficients="muon", ns_steps=NS_STEPS, nonfinite="propagate", polar_dtype=polar_dtype,
    )


def capture(fn: Callable[[], Any], device: torch.device) -> "torch.cuda.CUDAGraph":
    """``fn`` captured in a CUDA graph after one warm-up call on a side stream (NCCL communicators,
    cuBLAS workspaces and the allocator are set up outside the capture). The warm-up runs ``fn`` once."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


# --------------------------------------------------------------------------- part: capture


def part_capture(ctx: Ctx, record: Callable[[str, Any], None]) -> None:
    import fpolar
    import fpolar.optim
    from fpolar.compile import mark_static

    shapes = matrix_set(64 if ctx.quick else 512, 2)
    steps = 5

    def model_pair() -> Tuple[nn.Module, nn.Module]:
        torch.manual_seed(0)
        with ctx.device:
            a = Blocks(shapes)
            b = Blocks(shapes)
        b.load_state_dict(a.state_dict())
        return ctx.sharded(a, a.blocks), ctx.sharded(b, b.blocks)

    # 1. the functional step in one torch.cuda.CUDAGraph, replayed, against eager steps from the same state
    try:
        eager_m, graph_m = model_pair()
        pe, pg = list(eager_m.parameters()), list(graph_m.parameters())
        hp = functional_hparams(ctx.device)
        se, sg = fpolar.init_state(pe, hp), fpolar.init_state(pg, hp)
        static = random_grads(pg, 0)
        mutated = locals_of(pg) + locals_of(sg.momentum) + [sg.step]
        before = [t.clone() for t in mutated]
        with torch.no_grad():
            graph = capture(lambda: fpolar.polargrad_step(pg, static, sg, hp), ctx.device)
            for t, b in zip(mutated, before):  # undo the warm-up: the first replay is the first step
                t.copy_(b)
            start = [t.clone() for t in locals_of(pe)]
            for k in range(steps):
                grads = random_grads(pe, 100 * ctx.rank + k)
                for s, g in zip(locals_of(static), locals_of(grads)):
                    s.copy_(g)
                graph.replay()
                fpolar.polargrad_step(pe, grads, se, hp)
        sync(ctx.device)
        diff = max((a - b).abs().max().item() for a, b in zip(locals_of(pg), locals_of(pe)))
        moved = max((a - b).abs().max().item() for a, b in zip(locals_of(pe), start))
        diff, moved = max_over_ranks(diff, ctx.device), max_over_ranks(moved, ctx.device)
        record("functional_cuda_graph", {
            "steps": steps, "max_abs_diff_vs_eager": diff, "max_abs_update": moved,
            # equal, or within bf16 rounding of the update (cuBLAS may pick other kernels inside a graph)
            "replays_match_eager": diff <= 1e-2 * moved, "bitwise_equal": diff == 0.0,
        })
    except Exception as e:  # noqa: BLE001 - recorded, the next case runs
        record("functional_cuda_graph", failure(e))

    # 2. fpolar.optim.Muon(compiled="cuda_graph") on fully_shard params against compiled=False
    try:
        eager_m, graph_m = model_pair()
        kw = dict(lr=LR_MUON, weight_decay=0.0, momentum=0.95, nesterov=True, ns_steps=NS_STEPS)
        opt_e = fpolar.optim.Muon(eager_m.parameters(), compiled=False, **kw)
        opt_g = fpolar.optim.Muon(graph_m.parameters(), compiled="cuda_graph", **kw)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for k in range(steps):
                for m in (eager_m, graph_m):
                    for p, g in zip(m.parameters(), random_grads(list(m.parameters()), 100 * ctx.rank + k)):
                        p.grad = g
                opt_e.step()
                opt_g.step()
        sync(ctx.device)
        diff = max_over_ranks(max((a - b).abs().max().item() for a, b in zip(locals_of(list(graph_m.parameters())), locals_of(list(eager_m.parameters())))), ctx.device)
        program = opt_g._program
        record("optim_muon_cuda_graph", {
            "steps": steps, "captures": getattr(program, "captures", 0), "warmups": getattr(program, "warmups", 0),
            "max_abs_diff_vs_eager": diff, "warnings": sorted({str(w.message)[:200] for w in caught}),
        })
    except Exception as e:  # noqa: BLE001
        record("optim_muon_cuda_graph", failure(e))

    # 3. the functional step under torch.compile(mode="reduce-overhead"): cudagraph skips counted
    try:
        from torch._dynamo.utils import counters

        torch._dynamo.reset()
        counters.clear()
        eager_m, comp_m = model_pair()
        pe, pc = list(eager_m.parameters()), list(comp_m.parameters())
        hp = functional_hparams(ctx.device)
        se, sc = fpolar.init_state(pe, hp), fpolar.init_state(pc, hp)
        # the one-device recipe: state (DTensor momentum, step) and the lr tensor static-address, before
        # the first compiled call; else every mutated state tensor skips the CUDA graph ("mutated inputs")
        mark_static(sc, hp)
        step = torch.compile(fpolar.polargrad_step, mode="reduce-overhead", fullgraph=True)
        with torch.no_grad():
            for k in range(steps):
                grads = random_grads(pe, 100 * ctx.rank + k)
                step(pc, grads, sc, hp)
                fpolar.polargrad_step(pe, grads, se, hp)
        sync(ctx.device)
        diff = max_over_ranks(max((a - b).abs().max().item() for a, b in zip(locals_of(pc), locals_of(pe))), ctx.device)
        n_skips = int(counters["inductor"]["cudagraph_skips"])
        record("functional_reduce_overhead", {
            "steps": steps, "cudagraph_skips": n_skips, "max_abs_diff_vs_eager": diff,
            "graph_breaks": sum(counters["graph_break"].values()),
        })
    except Exception as e:  # noqa: BLE001
        record("functional_reduce_overhead", failure(e))


# --------------------------------------------------------------------------- part: scaling


def a2a_ms(state: Any, polar_dtype: torch.dtype, ctx: Ctx, warmup: int, iters: int) -> Dict[str, Any]:
    """The step's payload moved alone: per "rows" group of the plan, one all_to_all_single of the rows to
    their owners and one back (the step's two), in the polar dtype, with equal splits as the step's."""
    import torch.distributed as dist

    bufs = []
    for g in state.plan.groups:
        if g.kind == "rows":
            elems = g.world_size * g.slots * g.block_rows * g.n
            bufs.append((torch.empty(elems, dtype=polar_dtype, device=ctx.device), g.process_group))
    if not bufs:
        return {"ms": 0.0, "bytes_per_rank": 0, "groups": 0}
    outs = [torch.empty_like(b) for b, _ in bufs]

    def run() -> None:
        for (b, pg), o in zip(bufs, outs):
            dist.all_to_all_single(o, b, group=pg)
            dist.all_to_all_single(b, o, group=pg)

    times = step_times_ms(run, ctx.device, warmup, iters)
    return {"ms": median(times), "bytes_per_rank": 2 * sum(b.numel() * b.element_size() for b, _ in bufs), "groups": len(bufs)}


def part_scaling(ctx: Ctx, record: Callable[[str, Any], None]) -> None:
    import torch.distributed as dist

    import fpolar
    import fpolar.optim

    warmup, iters = (1, 3) if ctx.quick else (3, 10)
    polar_dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    for set_name, shapes in matrix_sets(ctx.quick).items():
        rows: Dict[str, Any] = {"matrices": len(shapes), "params": sum(m * n for m, n in shapes)}

        def bench(name: str, make: Callable[[], Callable[[], Any]]) -> None:
            try:
                fn = make()
                mine = median(step_times_ms(fn, ctx.device, warmup, iters))
                rows[name] = {"ms": round(max_over_ranks(mine, ctx.device), 4), "ms_rank0": mine}
            except ModuleNotFoundError as e:
                rows[name] = {"skipped": f"n/a (not installed: {e.name})"}
            except Exception as e:  # noqa: BLE001 - recorded, the next recipe runs
                rows[name] = failure(e)
            record(set_name, rows)  # after every recipe: a part cut at its limit keeps the rows so far
            gc.collect()  # the recipe's optimizer, graph and momentum go before the next one is built
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()

        # one device, whole tensors, on rank 0 alone (the others wait): the single-GPU time of this run
        if ctx.rank == 0:
            try:
                torch.manual_seed(0)
                full = [torch.randn(s, device=ctx.device) / s[1] ** 0.5 for s in shapes]
                grads = [torch.randn_like(p) for p in full]
                hp = functional_hparams(ctx.device, polar_dtype)
                st = fpolar.init_state(full, hp)
                one = lambda: fpolar.polargrad_step(full, grads, st, hp)  # noqa: E731
                with torch.no_grad():
                    for _ in range(warmup):
                        one()
                    sync(ctx.device)
                    times = []
                    for _ in range(iters):
                        if ctx.device.type == "cuda":
                            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                            a.record()
                            one()
                            b.record()
                            torch.cuda.synchronize(ctx.device)
                            times.append(a.elapsed_time(b))
                        else:
                            t0 = time.perf_counter()
                            one()
                            times.append((time.perf_counter() - t0) * 1e3)
                rows["one_device_fpolar_step"] = {"ms": median(times)}
                del full, grads, st
            except Exception as e:  # noqa: BLE001
                rows["one_device_fpolar_step"] = failure(e)
        dist.barrier()

        torch.manual_seed(0)
        with ctx.device:
            model = Blocks(shapes)
        model = ctx.sharded(model, model.blocks)
        params = list(model.parameters())
        grads = random_grads(params, ctx.rank)

        hp = functional_hparams(ctx.device, polar_dtype)
        state = fpolar.init_state(params, hp)

        def functional() -> Callable[[], Any]:
            def f() -> None:
                with torch.no_grad():
                    fpolar.polargrad_step(params, grads, state, hp)
            return f

        def functional_graph() -> Callable[[], Any]:
            if ctx.device.type != "cuda":
                raise RuntimeError("needs CUDA")
            with torch.no_grad():
                graph = capture(lambda: fpolar.polargrad_step(params, grads, state, hp), ctx.device)
            return graph.replay

        def set_grads() -> None:
            for p, g in zip(params, grads):
                p.grad = g

        def muon(compiled: Any) -> Callable[[], Callable[[], Any]]:
            def make() -> Callable[[], Any]:
                set_grads()
                opt = fpolar.optim.Muon(params, lr=LR_MUON, weight_decay=0.0, momentum=0.95, nesterov=True,
                                        ns_steps=NS_STEPS, polar_dtype=polar_dtype, compiled=compiled)
                return opt.step
            return make

        def dion_muon() -> Callable[[], Any]:
            import dion

            set_grads()
            opt = dion.Muon(params, distributed_mesh=ctx.mesh, lr=LR_MUON, mu=0.95, weight_decay=0.0, nesterov=True)
            return opt.step

        try:  # before the recipes: the target line needs it even if a later recipe is cut
            rows["all_to_all of the payload"] = a2a_ms(state, polar_dtype, ctx, warmup, iters)
        except Exception as e:  # noqa: BLE001
            rows["all_to_all of the payload"] = failure(e)
        bench("fpolar functional step (eager)", functional)
        if ctx.device.type == "cuda":
            bench("fpolar functional step (CUDA graph)", functional_graph)
            bench("fpolar.optim.Muon (compiled='cuda_graph')", muon("cuda_graph"))
        else:
            rows["fpolar functional step (CUDA graph)"] = {"skipped": "needs CUDA"}
            rows["fpolar.optim.Muon (compiled='cuda_graph')"] = {"skipped": "needs CUDA"}
        bench("fpolar.optim.Muon (eager)", muon(False))
        if dion_available():
            bench("dion Muon", dion_muon)
        else:
            rows["dion Muon"] = {"skipped": "n/a (not installed)"}
        record(set_name, rows)
        del model, params, grads, state
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------- part: e2e


def part_e2e(ctx: Ctx, record: Callable[[str, Any], None]) -> None:
    import fpolar.optim
    from gpt import GPT, GPT2_MEDIUM, GPTConfig, is_hidden_matrix, lm_loss, random_batch

    cfg = GPTConfig(layers=2, d_model=64, heads=4, vocab=256, block=64) if ctx.quick else GPT2_MEDIUM
    batch, seq = (2, 32) if ctx.quick else (8, 1024)
    warmup, iters = (1, 2) if ctx.quick else (3, 8)
    idx, targets = random_batch(cfg, batch, seq, ctx.device, seed=ctx.rank)
    cuda = ctx.device.type == "cuda"
    record("config", {"model": "tiny GPT" if ctx.quick else "GPT-2-medium (24 layers, d 1024, 16 heads, vocab 50304)",
                      "tokens_per_rank": batch * seq, "autocast": "bf16" if cuda else "none"})

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        with ctx.device:
            m = GPT(cfg)
        return ctx.sharded(m, list(m.h))

    def adamw(params: Sequence[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=LR_ADAMW, betas=(0.9, 0.95), weight_decay=0.0, foreach=True)

    def split(model: nn.Module) -> Tuple[List[Tensor], List[Tensor]]:
        named = list(model.named_parameters())
        return [p for n, p in named if is_hidden_matrix(n, p)], [p for n, p in named if not is_hidden_matrix(n, p)]

    def recipes() -> Dict[str, Callable[[nn.Module], List[torch.optim.Optimizer]]]:
        def fp(compiled: Any) -> Callable[[nn.Module], List[torch.optim.Optimizer]]:
            def make(model: nn.Module) -> List[torch.optim.Optimizer]:
                groups = fpolar.optim.param_groups(model, adamw={"lr": LR_ADAMW, "betas": (0.9, 0.95), "weight_decay": 0.0})
                return [fpolar.optim.Muon(groups, lr=LR_MUON, weight_decay=0.0, momentum=0.95, nesterov=True,
                                          ns_steps=NS_STEPS, compiled=compiled)]
            return make

        def dion_muon(model: nn.Module) -> List[torch.optim.Optimizer]:
            import dion

            hidden, rest = split(model)
            groups = [{"params": hidden},
                      {"params": rest, "algorithm": "adamw", "lr": LR_ADAMW, "beta1": 0.9, "beta2": 0.95}]
            return [dion.Muon(groups, distributed_mesh=ctx.mesh, lr=LR_MUON, mu=0.95, weight_decay=0.0, nesterov=True)]

        out = {"AdamW only (foreach)": lambda m: [adamw(list(m.parameters()))],
               "fpolar.optim.Muon + AdamW (eager)": fp(False)}
        out["fpolar.optim.Muon + AdamW (compiled='cuda_graph')"] = fp("cuda_graph") if cuda else None
        out["dion Muon + its AdamW"] = dion_muon if dion_available() else None
        return out

    for name, make in recipes().items():
        if make is None:
            record(name, {"skipped": "needs CUDA" if "cuda_graph" in name else "n/a (not installed)"})
            continue
        model = None
        try:
            model = fresh()
            with warnings.catch_warnings(record=True) as caught:  # e.g. a capture that fell back to eager
                warnings.simplefilter("always")
                opts = make(model)
            losses: List[float] = []

            def step() -> None:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                    loss = lm_loss(model, idx, targets)
                loss.backward()
                for o in opts:
                    o.step()
                for o in opts:
                    o.zero_grad(set_to_none=False)
                losses.append(loss.detach())

            with warnings.catch_warnings(record=True) as more:
                warnings.simplefilter("always")
                times = step_times_ms(step, ctx.device, warmup, iters)
            said = sorted({str(w.message)[:200] for w in list(caught) + list(more) if "not skipped on sharded" not in str(w.message)})
            mine = median(times)
            record(name, {"ms": round(max_over_ranks(mine, ctx.device), 4), "ms_rank0": mine,
                          "loss_first_last": [round(float(losses[0]), 4), round(float(losses[-1]), 4)],
                          "peak_mib": round(torch.cuda.max_memory_allocated(ctx.device) / 2**20) if cuda else None,
                          "warnings": said[:5]})
        except Exception as e:  # noqa: BLE001
            record(name, failure(e))
        del model
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(ctx.device)


PART_FNS = {"capture": part_capture, "scaling": part_scaling, "e2e": part_e2e}


# --------------------------------------------------------------------------- spawn


def _worker(rank: int, world: int, port: int, part: str, backend: str, device_type: str, args: Dict[str, Any], out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device_type == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        torch.set_num_threads(1)
        device = torch.device("cpu")
    extra = {"device_id": device} if device_type == "cuda" else {}  # NCCL communicators made now, on this GPU
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=120), **extra)
    results: Dict[str, Any] = {}
    path = os.path.join(out_dir, f"{part}_rank{rank}.json")

    def record(name: str, value: Any) -> None:  # written at once: a later hang keeps what finished
        results[name] = value
        with open(path, "w") as f:
            json.dump(results, f, default=str)

    try:
        PART_FNS[part](Ctx(rank, world, device, args), record)
    except Exception as e:  # noqa: BLE001 - the part's own failure, recorded
        record("__part__", failure(e))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_part(part: str, world: int, backend: str, device_type: str, args: Dict[str, Any], limit_s: float) -> Dict[str, Any]:
    """Run ``part`` on ``world`` spawned ranks; kill them at ``limit_s``. Returns rank 0's records (every
    rank's for a recipe that failed only on some), plus "timed_out"/"spawn_error" when so."""
    out_dir = tempfile.mkdtemp(prefix=f"fpolar_distgpu_{part}_")
    path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, HERE, TESTS] + ([path] if path else []))
    ctx = mp.start_processes(_worker, args=(world, free_port(), part, backend, device_type, args, out_dir),
                             nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + limit_s
    extra: Dict[str, Any] = {}
    try:
        while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                extra["timed_out"] = f"killed after {limit_s:.0f} s; the records before it are kept"
                break
    except Exception as e:  # noqa: BLE001 - a rank died outside the per-case guards
        extra["spawn_error"] = str(e)[-1500:]
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
    per_rank = []
    for r in range(world):
        try:
            with open(os.path.join(out_dir, f"{part}_rank{r}.json")) as f:
                per_rank.append(json.load(f))
        except (FileNotFoundError, json.JSONDecodeError):
            per_rank.append({})
    merged = dict(per_rank[0])
    for r, recs in enumerate(per_rank[1:], start=1):
        for k, v in recs.items():
            if isinstance(v, dict) and "error" in v and not (isinstance(merged.get(k), dict) and "error" in merged[k]):
                merged[k] = {**v, "rank": r}
            merged.setdefault(k, v)
    merged.update(extra)
    return merged


def run_parity(world: int, backend: str, device_type: str, quick: bool, limit_s: float) -> Dict[str, Any]:
    import checks
    from harness import run_world

    # every check, but those made only for one rank (``worlds`` == (1,)) on more ranks
    names = [n for n, f in checks.CHECKS if world == 1 or max(getattr(f, "worlds", (2, 4))) > 1]
    if quick:
        names = ["plan_same_on_every_rank", "replicated_parity", "comm_counts"]
    elif world == 1:
        names = [n for n in names if n not in NOT_AT_WORLD_1]
    else:
        names = [n for n in names if n != "dcp_reshard_from_4" or world == 2]
    shared = tempfile.mkdtemp(prefix="fpolar_distgpu_shared_")
    out: Dict[str, Any] = {}
    if "dcp_reshard_from_4" in names:
        out["dcp_reshard_from_4"] = {"skipped": "needs the checkpoint a world-4 run writes first"}
        names.remove("dcp_reshard_from_4")
    results = run_world(world, shared, timeout_s=limit_s, backend=backend, device=device_type, names=names)
    for name in names:
        recs = results.get(name, [])
        bad = [r for r in recs if not r.get("ok")]
        if bad:
            out[name] = {"ok": False, "error": bad[0].get("error", "")[-1500:], "seconds": bad[0].get("seconds")}
        elif len(recs) != world:
            why = results.get("__spawn__", [{"error": "did not run"}])[0]["error"]
            out[name] = {"ok": False, "error": f"ran on {len(recs)} of {world} ranks: {why}"[-1500:]}
        else:
            out[name] = {"ok": True, "seconds": max(r.get("seconds", 0) for r in recs), "values": recs[0].get("values")}
    if world == 1:
        for n in NOT_AT_WORLD_1:
            out.setdefault(n, {"skipped": "needs ≥ 2 ranks"})
    return out


# --------------------------------------------------------------------------- report


def targets(scaling: Dict[str, Any], world: int) -> None:
    """Adds the target line to each matrix set: 1.1 × one-device time / world + all_to_all time, and
    whether each fpolar recipe meets it and beats dion."""
    for set_name, rows in scaling.items():
        if not isinstance(rows, dict) or "matrices" not in rows:
            continue
        one = rows.get("one_device_fpolar_step", {}).get("ms")
        a2a = rows.get("all_to_all of the payload", {}).get("ms")
        dion = rows.get("dion Muon", {}).get("ms")
        if one is None or a2a is None:
            rows["target"] = {"skipped": "one-device or all_to_all time missing"}
            continue
        target = round(1.1 * one / world + a2a, 4)
        verdict = {}
        for k, v in rows.items():
            if k.startswith("fpolar") and isinstance(v, dict) and "ms" in v:
                verdict[k] = {"meets_target": v["ms"] <= target, "faster_than_dion": None if dion is None else v["ms"] < dion}
        rows["target"] = {"ms": target, "formula": f"1.1 × {one} / {world} + {a2a}", "verdict": verdict}


def cell(v: Any) -> str:
    if not isinstance(v, dict):
        return str(v)
    if "ms" in v:
        return f"{v['ms']:.3f}"
    for k in ("skipped", "error", "timed_out"):
        if k in v:
            return str(v[k]).splitlines()[0][:90].replace("|", "/")
    return "—"


def markdown(res: Dict[str, Any]) -> str:
    env = res["environment"]
    out = [f"# Distributed fpolar: world {res['world']} ({res['backend']}, {env['device']})", "",
           f"`{env['command']}` · torch {env['torch']} · {env['date']}", ""]
    parts = res["parts"]
    if "parity" in parts:
        out += ["## Parity (the gloo checks on this backend)", "", "| check | result | seconds | max abs error |", "|---|---|---|---|"]
        for name, v in parts["parity"].items():
            if not isinstance(v, dict):
                continue
            ok = "pass" if v.get("ok") else cell(v) if "skipped" in v else "FAIL: " + cell({"error": (v.get("error") or "").strip().splitlines()[-1] if v.get("error") else ""})
            err = (v.get("values") or {}).get("max_abs_error") if isinstance(v.get("values"), dict) else None
            if isinstance(err, dict):
                err = max(err.values()) if err else None
            out.append(f"| {name} | {ok} | {v.get('seconds', '')} | {'' if err is None else f'{err:.3g}'} |")
        out.append("")
    if "capture" in parts:
        out += ["## CUDA-graph capture of the distributed step", "", "| case | result |", "|---|---|"]
        for name, v in parts["capture"].items():
            if isinstance(v, dict) and ("error" in v or "skipped" in v):
                out.append(f"| {name} | {cell(v)} |")
            elif isinstance(v, dict):
                out.append(f"| {name} | " + ", ".join(f"{k}={v[k]}" for k in v if k != "warnings") + " |")
            else:
                out.append(f"| {name} | {v} |")
        out.append("")
    if "scaling" in parts:
        out += ["## Optimizer step per rank (median ms over steps, the slowest rank's)", ""]
        for set_name, rows in parts["scaling"].items():
            if not isinstance(rows, dict) or "matrices" not in rows:
                out.append(f"- {set_name}: {cell(rows) if isinstance(rows, dict) else rows}")
                continue
            out += [f"**{set_name}**: {rows['matrices']} matrices, {rows['params'] / 1e6:.1f} M params", "",
                    "| recipe | ms |", "|---|---|"]
            for k, v in rows.items():
                if isinstance(v, dict) and k != "target":
                    extra = f" ({v['bytes_per_rank'] / 2**20:.1f} MiB/rank)" if "bytes_per_rank" in v else ""
                    out.append(f"| {k} | {cell(v)}{extra} |")
            t = rows.get("target", {})
            if "ms" in t:
                out.append(f"| target = {t['formula']} | {t['ms']:.3f} |")
                for k, v in t["verdict"].items():
                    out.append(f"| {k} meets target / faster than dion | {v['meets_target']} / {v['faster_than_dion']} |")
            out.append("")
    if "e2e" in parts:
        out += ["## End to end train step (median ms per step, the slowest rank's)", ""]
        c = parts["e2e"].get("config")
        if isinstance(c, dict):
            out += [f"{c['model']}, {c['tokens_per_rank']} tokens a rank, autocast {c['autocast']}", ""]
        out += ["| recipe | ms/step | loss first → last | peak MiB |", "|---|---|---|---|"]
        for name, v in parts["e2e"].items():
            if name == "config":
                continue
            if isinstance(v, dict) and "ms" in v:
                lf = v.get("loss_first_last") or ["", ""]
                out.append(f"| {name} | {v['ms']:.2f} | {lf[0]} → {lf[1]} | {v.get('peak_mib') or ''} |")
            else:
                out.append(f"| {name} | {cell(v) if isinstance(v, dict) else v} | | |")
        out.append("")
    return "\n".join(out)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for distributed_gpu.json and distributed_gpu.md")
    ap.add_argument("--world", type=int, default=None, help="ranks (default: every visible GPU; 2 on CPU)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None, help="cuda (NCCL) or cpu (gloo smoke run)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--quick", action="store_true", help="tiny shapes and few steps (the CPU smoke test)")
    ap.add_argument("--budget-s", type=float, default=500.0, help="whole run; a part gets min(its limit, what is left)")
    args = ap.parse_args(argv)
    unknown = [p for p in args.parts.split(",") if p not in PARTS]
    if unknown:
        ap.error(f"unknown parts {unknown}; choose from {list(PARTS)}")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    backend = "nccl" if device_type == "cuda" else "gloo"
    world = args.world if args.world is not None else (torch.cuda.device_count() if device_type == "cuda" else 2)
    if world < 1 or (device_type == "cuda" and world > torch.cuda.device_count()):
        raise SystemExit(f"--world {world}: {torch.cuda.device_count() if device_type == 'cuda' else 'any ≥ 1'} GPUs visible")
    from common import environment

    env = environment(torch.device(device_type))
    env["gpus_visible"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    env["dion"] = "installed" if dion_available() else "n/a (not installed)"
    env["nccl_nvls_enable"] = os.environ.get("NCCL_NVLS_ENABLE")
    res: Dict[str, Any] = {"world": world, "backend": backend, "quick": args.quick, "environment": env, "parts": {}}
    os.makedirs(args.out, exist_ok=True)
    json_path, md_path = os.path.join(args.out, "distributed_gpu.json"), os.path.join(args.out, "distributed_gpu.md")
    start = time.monotonic()
    worker_args = {"quick": args.quick}
    for part in args.parts.split(","):
        left = args.budget_s - (time.monotonic() - start)
        limit = min(PART_LIMITS[part], left)
        t0 = time.monotonic()
        print(f"=== {part} (world {world}, {backend}, limit {limit:.0f} s) ===", flush=True)
        if part in CUDA_ONLY and device_type != "cuda":
            res["parts"][part] = {"skipped": "needs CUDA"}
        elif limit < 10:
            res["parts"][part] = {"skipped": f"no time left in --budget-s {args.budget_s:.0f}"}
        else:
            try:
                if part == "parity":
                    res["parts"][part] = run_parity(world, backend, device_type, args.quick, limit)
                else:
                    res["parts"][part] = spawn_part(part, world, backend, device_type, worker_args, limit)
            except Exception as e:  # noqa: BLE001 - the next part runs
                res["parts"][part] = failure(e)
        if part == "scaling" and isinstance(res["parts"][part], dict):
            targets(res["parts"][part], world)
        res.setdefault("seconds", {})[part] = round(time.monotonic() - t0, 1)
        with open(json_path, "w") as f:  # after every part: a killed run keeps the parts that finished
            json.dump(res, f, indent=1, default=str)
        with open(md_path, "w") as f:
            f.write(markdown(res))
    print(markdown(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
