"""Whole optimizer step: fpolar vs the other polar-factor optimizers, one run, one table per matrix set.

    python benchmarks/peers.py [--json PATH] [--only SUBSTR,...] [--sets gpt2-small,gpt2-medium,large]
    python benchmarks/peers.py --quick --device cpu          # tiny sizes: a smoke test of every code path

Rows (each in its own try/except: a missing package prints "n/a (reason)"):
  fpolar PolarGrad / Muon, functional step eager and under torch.compile(fullgraph=True) (0-d tensor lr),
  fpolar.optim.PolarGrad / Muon (if present), torch.optim.Muon eager and compiled,
  Emerging-Optimizers PolarGrad and Muon (bf16 NS), heavyball Muon (eager and compiled),
  dion Muon (single-GPU; cuBLAS and Triton NS), and fused AdamW as the memory-bound reference.

Every row takes 5 Newton–Schulz steps in bf16 (where the peer lets one choose), fp32 params, no weight
decay. Per row: median ms/step (warm-up excluded; CUDA events), first-step seconds (compilation and
autotuning land there), optimizer memory (state, and the peak of one step above params + grads), the
ratio to the fastest peer and to the dense NS5 FLOP floor at the bf16 matmul ceiling measured in the
same run, and the update's agreement with the exact polar factor (float64) on two of the set's
gradients: a Gaussian one and one with singular values spread log-uniformly over [1e-3, 1].

The gradients stay constant across steps, so every optimizer's momentum remains a multiple of the
gradient and its update direction stays that gradient's (approximate) polar factor: the agreement is
read off a timed step, with no extra compilation.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: fpolar
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/: common

import fpolar  # noqa: E402
from common import (  # noqa: E402
    bench_ms,
    environment,
    first_call_s,
    fmt,
    matmul_ceiling_tflops,
    memory_allocated,
    mib,
    ns_flops,
    peak_bytes_over,
    pick_device,
    print_header,
    print_table,
    save_json,
    settle_compiler_for_peers,
    sync,
)

Shapes = List[Tuple[Tuple[int, int], int]]  # ((rows, cols), how many)

# The matrices of each model's transformer blocks (qkv, attention out, MLP in, MLP out) per layer.
SETS: Dict[str, Shapes] = {
    "gpt2-small": [((2304, 768), 12), ((768, 768), 12), ((3072, 768), 12), ((768, 3072), 12)],
    "gpt2-medium": [((3072, 1024), 24), ((1024, 1024), 24), ((4096, 1024), 24), ((1024, 4096), 24)],
    "large": [((4096, 4096), 4), ((4096, 16384), 4)],
}
# --quick: the same layouts, sides divided by 16, two layers (one for "large").
QUICK_SETS: Dict[str, Shapes] = {
    name: [((r // 16, c // 16), min(k, 2 if name != "large" else 1)) for (r, c), k in shapes]
    for name, shapes in SETS.items()
}

NS_STEPS = 5
# Step sizes only set the magnitude of the parameter change; nothing here trains. PolarGrad's update
# is lr·‖X‖_*·O, orders of magnitude larger than Muon's lr·O for the same lr, hence a smaller lr.
LR_MUON = 0.02
LR_POLARGRAD = 1e-4
LR_ADAMW = 1e-3


# --------------------------------------------------------------------------- candidates


@dataclass
class Built:
    """What a candidate's builder hands back."""

    step: Callable[[], None]
    overhead_ms: Callable[[], float] = lambda: 0.0  # measured per-step harness cost to subtract
    restores_grads: bool = False  # the step re-writes the grads itself (the peer consumes them)
    note: str = ""


@dataclass
class Ctx:
    params: List[Tensor]  # fresh clones, requires_grad, on the device
    grads: List[Tensor]  # this candidate's own copy of the gradients
    src_grads: List[Tensor]  # the pristine gradients (read only)
    device: torch.device
    args: argparse.Namespace


@dataclass
class Candidate:
    name: str
    kind: str  # "fpolar", "peer" (ratios are to the fastest of these) or "reference"
    coeffs: str  # the NS coefficient schedule it runs (accuracy differs by schedule, not speed)
    build: Callable[[Ctx], Built]
    compiles: bool = False  # skipped by --no-compile


def _attach(params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
    for p, g in zip(params, grads):
        p.grad = g


def _accepted(fn: Callable, kwargs: Dict[str, object]) -> Dict[str, object]:
    """The subset of ``kwargs`` that ``fn`` names explicitly (for a class whose API may still move)."""
    names = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in names}


def _fpolar_functional(compiled: bool, **hp_kw) -> Callable[[Ctx], Built]:
    def build(c: Ctx) -> Built:
        kw = dict(hp_kw)
        # A 0-d tensor lr on the device: a compiled step reads it as an input, never as a constant.
        lr = torch.tensor(kw.pop("lr_value"), device=c.device)
        hp = fpolar.PolarGradHParams(lr=lr, ns_steps=NS_STEPS, polar_dtype=torch.bfloat16, **kw)
        state = fpolar.init_state(c.params, hp)
        params, grads = c.params, c.grads

        def step() -> None:
            with torch.no_grad():
                fpolar.polargrad_step(params, grads, state, hp)

        return Built(torch.compile(step, fullgraph=True) if compiled else step)

    return build


def _fpolar_class(cls_name: str, compiled: bool = False, **kw) -> Callable[[Ctx], Built]:
    def build(c: Ctx) -> Built:
        try:
            import fpolar.optim as fo
        except ImportError as e:
            raise RuntimeError(f"fpolar.optim not importable ({e})") from None
        cls = getattr(fo, cls_name, None)
        if cls is None:
            raise RuntimeError(f"fpolar.optim has no {cls_name}")
        opt = cls(c.params, **_accepted(cls.__init__, kw))
        _attach(c.params, c.grads)
        return Built(torch.compile(opt.step) if compiled else opt.step)

    return build


def _torch_muon(compiled: bool) -> Callable[[Ctx], Built]:
    def build(c: Ctx) -> Built:
        if not hasattr(torch.optim, "Muon"):
            raise RuntimeError(f"torch {torch.__version__} has no torch.optim.Muon")
        opt = torch.optim.Muon(
            c.params, lr=LR_MUON, weight_decay=0.0, momentum=0.95, nesterov=True, ns_steps=NS_STEPS
        )
        _attach(c.params, c.grads)
        return Built(torch.compile(opt.step) if compiled else opt.step)

    return build


def _eo(cls_name: str, **eo_kw) -> Callable[[Ctx], Built]:
    def build(c: Ctx) -> Built:
        from emerging_optimizers.orthogonalized_optimizers import Muon, PolarGrad

        cls = {"PolarGrad": PolarGrad, "Muon": Muon}[cls_name]
        # fp32_matmul_prec="medium" makes its Newton–Schulz run in bf16 (its PolarGrad defaults to
        # "highest", fp32); it runs one matrix at a time.
        kw = {"fp32_matmul_prec": "medium", **eo_kw}
        opt = cls(c.params, momentum=0.95, weight_decay=0.0, num_ns_steps=NS_STEPS, **kw)
        _attach(c.params, c.grads)
        return Built(opt.step)

    return build


def _heavyball(mode: Optional[str]) -> Callable[[Ctx], Built]:
    """heavyball Muon; ``mode`` None runs its helpers eagerly, else torch.compile with that mode."""

    def build(c: Ctx) -> Built:
        import heavyball
        import heavyball.utils as hbu

        # heavyball reads this module global on every call of its compiled helpers.
        def set_mode() -> None:
            hbu.compile_mode = mode

        set_mode()
        opt = heavyball.Muon(c.params, lr=LR_MUON, betas=(0.95, 0.99), weight_decay=0.0, nesterov=True)
        params, grads, src = c.params, c.grads, c.src_grads

        # heavyball sets p.grad = None after each step and updates the fp32 grad in place (its Nesterov
        # EMA), so every step gets freshly written grads, as a backward pass would give it.
        def restore() -> None:
            torch._foreach_copy_(grads, src)
            _attach(params, grads)

        def step() -> None:
            set_mode()
            restore()
            opt.step()

        def overhead() -> float:
            return bench_ms(restore, c.device, warmup_ms=c.args.warmup_ms, rep_ms=c.args.rep_ms)

        return Built(step, overhead_ms=overhead, restores_grads=True, note="grad re-write time subtracted")

    return build


def _dion(use_triton: bool) -> Callable[[Ctx], Built]:
    def build(c: Ctx) -> Built:
        import dion

        # distributed_mesh=None: single device. Its Newton–Schulz is Polar Express, 5 steps, bf16,
        # torch.compile'd (and with use_triton, its symmetric Triton kernels).
        opt = dion.Muon(
            c.params, distributed_mesh=None, lr=LR_MUON, mu=0.95, weight_decay=0.0, nesterov=True,
            use_triton=use_triton,
        )
        _attach(c.params, c.grads)
        return Built(opt.step)

    return build


def _adamw(c: Ctx) -> Built:
    try:
        opt = torch.optim.AdamW(c.params, lr=LR_ADAMW, weight_decay=0.0, fused=True)
        note = ""
    except (RuntimeError, ValueError) as e:  # fused unsupported here: the foreach path
        opt = torch.optim.AdamW(c.params, lr=LR_ADAMW, weight_decay=0.0, foreach=True)
        note = f"foreach (fused unavailable: {str(e)[:40]})"
    _attach(c.params, c.grads)
    return Built(opt.step, note=note)


def candidates(args: argparse.Namespace) -> List[Candidate]:
    pg = dict(lr_value=LR_POLARGRAD)  # PolarGrad: nuclear scale, EMA momentum, Polar Express
    mu = dict(lr_value=LR_MUON, scale="shape", nesterov=True, coefficients="muon")  # = torch.optim.Muon's math
    out = [
        Candidate("fpolar PolarGrad fn eager", "fpolar", "polar_express", _fpolar_functional(False, **pg)),
        Candidate("fpolar PolarGrad fn compiled", "fpolar", "polar_express", _fpolar_functional(True, **pg), True),
        Candidate("fpolar Muon fn eager", "fpolar", "muon (Jordan)", _fpolar_functional(False, **mu)),
        Candidate("fpolar Muon fn compiled", "fpolar", "muon (Jordan)", _fpolar_functional(True, **mu), True),
        Candidate(
            "fpolar.optim.PolarGrad", "fpolar", "polar_express",
            _fpolar_class("PolarGrad", lr=LR_POLARGRAD, weight_decay=0.0, ns_steps=NS_STEPS, polar_dtype=torch.bfloat16),
        ),
        Candidate(
            "fpolar.optim.Muon", "fpolar", "muon (Jordan)",
            _fpolar_class("Muon", lr=LR_MUON, weight_decay=0.0, nesterov=True, ns_steps=NS_STEPS, polar_dtype=torch.bfloat16),
        ),
        Candidate("torch.optim.Muon eager", "peer", "muon (Jordan)", _torch_muon(False)),
        Candidate("torch.optim.Muon compiled", "peer", "muon (Jordan)", _torch_muon(True), True),
        Candidate("EO PolarGrad (bf16)", "peer", "quintic", _eo("PolarGrad", lr=LR_POLARGRAD)),
        Candidate(
            "EO Muon (bf16)", "peer", "quintic",
            _eo("Muon", lr=LR_MUON, nesterov=True, scale_mode="shape_scaling"),
        ),
    ]
    out += [
        Candidate("heavyball Muon eager", "peer", "quintic", _heavyball(None)),
        Candidate(f"heavyball Muon compiled ({args.heavyball_mode})", "peer", "quintic", _heavyball(args.heavyball_mode), True),
        Candidate("dion Muon", "peer", "polar_express", _dion(False), True),
        Candidate("dion Muon (Triton NS)", "peer", "polar_express", _dion(True), True),
        Candidate("AdamW fused (reference)", "reference", "—", _adamw),
    ]
    if args.extras:
        out += [
            Candidate(
                "fpolar.optim.PolarGrad compiled", "fpolar", "polar_express",
                _fpolar_class("PolarGrad", compiled=True, lr=LR_POLARGRAD, weight_decay=0.0, ns_steps=NS_STEPS,
                              polar_dtype=torch.bfloat16),
                True,
            ),
            Candidate(
                "fpolar.optim.Muon compiled", "fpolar", "muon (Jordan)",
                _fpolar_class("Muon", compiled=True, lr=LR_MUON, weight_decay=0.0, nesterov=True, ns_steps=NS_STEPS,
                              polar_dtype=torch.bfloat16),
                True,
            ),
            Candidate("EO PolarGrad (fp32, its default)", "peer", "quintic",
                      _eo("PolarGrad", lr=LR_POLARGRAD, fp32_matmul_prec="highest")),
            Candidate(
                "EO Muon (bf16, Triton SYRK)", "peer", "quintic",
                _eo("Muon", lr=LR_MUON, nesterov=True, scale_mode="shape_scaling", use_syrk=True),
            ),
        ]
    return out


# --------------------------------------------------------------------------- data and exact answers


def make_set(shapes: Shapes, device: torch.device, seed: int) -> Tuple[List[Tensor], List[Tensor], Dict[str, int]]:
    """Params and grads in model order (layer by layer), and which two grads are the probes.

    Probe "gauss" (the first matrix) is a Gaussian gradient; probe "decay" (the last matrix of the
    first layer) has singular values log-uniform in [1e-3, 1], like a real gradient's decaying spectrum.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    layers = max(k for _, k in shapes)
    params, grads = [], []
    for layer in range(layers):
        for (r, c), k in shapes:
            if layer < k:
                params.append((torch.randn(r, c, generator=gen) * 0.02).to(device))
                grads.append(torch.randn(r, c, generator=gen).to(device))
    decay = len(shapes) - 1
    r, c = grads[decay].shape
    k = min(r, c)
    u, _ = torch.linalg.qr(torch.randn(r, k, generator=gen, dtype=torch.float64).to(device))
    v, _ = torch.linalg.qr(torch.randn(c, k, generator=gen, dtype=torch.float64).to(device))
    s = torch.logspace(0, -3, k, dtype=torch.float64, device=device)
    grads[decay] = ((u * s) @ v.mT * (k**0.5)).float()
    return params, grads, {"gauss": 0, "decay": decay}


def exact_polar(g: Tensor) -> Tensor:
    """U Vᵀ of g = U Σ Vᵀ in float64, from the eigendecomposition of the small Gram matrix."""
    x = g.double()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.mT
    evals, evecs = torch.linalg.eigh(x @ x.mT)
    inv_sqrt = evals.clamp_min(torch.finfo(torch.float64).tiny).rsqrt()
    o = (evecs * inv_sqrt) @ (evecs.mT @ x)
    return o.mT if tall else o


def direction_error(update: Tensor, exact: Tensor) -> float:
    """‖U/‖U‖ − O/‖O‖‖_F for the update direction U (descent sign removed) vs the exact polar factor O."""
    u = update.double()
    return float((u / u.norm() - exact / exact.norm()).norm())


def sigma_range(update: Tensor, exact: Tensor) -> Tuple[float, float]:
    """Smallest and largest singular value of the update scaled to the exact factor's Frobenius norm.

    The exact polar factor has every singular value 1; Newton–Schulz leaves a spread around 1.
    """
    u = update.double()
    u = u * (exact.norm() / u.norm())
    if u.shape[0] > u.shape[1]:
        u = u.mT
    s = torch.linalg.eigvalsh(u @ u.mT).clamp_min(0).sqrt()
    return float(s.min()), float(s.max())


# --------------------------------------------------------------------------- measuring one row


def measure(
    cand: Candidate,
    base_params: List[Tensor],
    src_grads: List[Tensor],
    probes: Dict[str, int],
    exact: Dict[str, Tensor],
    device: torch.device,
    args: argparse.Namespace,
) -> Dict[str, object]:
    torch._dynamo.reset()  # each row pays its own compilation, in its first step
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    params = [p.clone().requires_grad_(True) for p in base_params]
    grads = [g.clone() for g in src_grads]
    base = memory_allocated(device)
    built = cand.build(Ctx(params, grads, src_grads, device, args))
    step = built.step

    first_s = first_call_s(step, device)
    for _ in range(args.warmup_steps):
        step()
    sync(device)
    state_bytes = None if base is None else memory_allocated(device) - base
    peak = peak_bytes_over(step, device, base)
    ms_raw = bench_ms(step, device, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms)
    overhead = built.overhead_ms()
    ms = ms_raw - overhead

    # One more step, from a snapshot: the update of the probe matrices.
    before = {k: params[i].detach().clone() for k, i in probes.items()}
    step()
    sync(device)
    row: Dict[str, object] = {}
    for k, i in probes.items():
        upd = before[k].double() - params[i].detach().double()  # the descent direction, sign removed
        row[f"dir_err_{k}"] = direction_error(upd, exact[k])
        if k == "gauss":
            row["sigma_min"], row["sigma_max"] = sigma_range(upd, exact[k])
    notes = [built.note] if built.note else []
    if not built.restores_grads and any(not torch.equal(g, s) for g, s in zip(grads, src_grads)):
        notes.append("modified the grads in place")
    row.update(
        ms=ms, ms_raw=ms_raw, overhead_ms=overhead, first_step_s=first_s,
        state_mib=mib(state_bytes), peak_mib=mib(peak), note="; ".join(notes),
    )
    del built, step, params, grads
    return row


# --------------------------------------------------------------------------- main


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny matrices and short timings: a smoke test")
    ap.add_argument("--sets", default=None,
                    help=f"comma-separated, from {list(SETS)} (default: all; with --quick: gpt2-small)")
    ap.add_argument("--only", default=None, help="comma-separated substrings; run only rows whose name has one")
    ap.add_argument("--no-compile", action="store_true", help="skip the rows that torch.compile")
    ap.add_argument("--extras", action="store_true",
                    help="add rows: fpolar.optim classes compiled, Emerging-Optimizers PolarGrad in fp32 (its "
                         "default) and its Muon with the Triton SYRK kernel (autotunes for over a minute)")
    ap.add_argument("--heavyball-mode", default="default",
                    help="torch.compile mode for heavyball's compiled row; heavyball itself ships "
                         "'max-autotune-no-cudagraphs', which autotunes every matmul shape on the first step")
    ap.add_argument("--warmup-steps", type=int, default=3, help="steps after the first, before timing")
    ap.add_argument("--warmup-ms", type=float, default=None)
    ap.add_argument("--rep-ms", type=float, default=None)
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip rows that would start after this many seconds (default 300 on CUDA, none on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write every number to this JSON file")
    args = ap.parse_args(argv)
    args.warmup_ms = args.warmup_ms if args.warmup_ms is not None else (5.0 if args.quick else 25.0)
    args.rep_ms = args.rep_ms if args.rep_ms is not None else (20.0 if args.quick else 100.0)
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    settle_compiler_for_peers()
    device = pick_device(args.device)
    if args.budget_s is None:
        args.budget_s = 300.0 if device.type == "cuda" else float("inf")

    env = environment(device)
    print_header(env)
    t_start = time.perf_counter()
    ceiling = matmul_ceiling_tflops(device, n=8192 if device.type == "cuda" else 512)
    unit = "bf16" if device.type == "cuda" else "fp32"
    print(f"matmul ceiling: {ceiling:.4g} TFLOP/s ({unit}, {8192 if device.type == 'cuda' else 512}³)")

    table = QUICK_SETS if args.quick else SETS
    sets_arg = args.sets or ("gpt2-small" if args.quick else ",".join(SETS))
    set_names = [s.strip() for s in sets_arg.split(",") if s.strip()]
    unknown = [s for s in set_names if s not in table]
    if unknown:
        print(f"unknown set(s) {unknown}; choose from {list(table)}")
        return 2
    only = [s.strip().lower() for s in args.only.split(",")] if args.only else None
    cands = [
        c for c in candidates(args)
        if (only is None or any(o in c.name.lower() for o in only)) and not (args.no_compile and c.compiles)
    ]

    results: Dict[str, object] = {"env": env, "ceiling_tflops": ceiling, "ns_steps": NS_STEPS, "sets": {}}
    sets: Dict[str, Dict[str, object]] = {}
    for set_name in set_names:
        shapes = table[set_name]
        base_params, src_grads, probes = make_set(shapes, device, args.seed)
        flops = sum(ns_flops(*p.shape, steps=NS_STEPS) for p in base_params)
        sets[set_name] = dict(
            shapes=shapes, base_params=base_params, src_grads=src_grads, probes=probes,
            exact={k: exact_polar(src_grads[i]) for k, i in probes.items()},
            numel=sum(p.numel() for p in base_params), ns_flops=flops,
            floor_ms=flops / (ceiling * 1e12) * 1e3, rows=[None] * len(cands),
        )

    # Rows that compile pay tens of seconds each in their first step: run every other row of every set
    # first, so a spent time budget costs only compiled rows of the last sets.
    order = [(s, i) for phase in (False, True) for s in set_names for i, c in enumerate(cands) if c.compiles == phase]
    for set_name, i in order:
        d, cand = sets[set_name], cands[i]
        row: Dict[str, object] = {"name": cand.name, "kind": cand.kind, "coeffs": cand.coeffs}
        elapsed = time.perf_counter() - t_start
        if elapsed > args.budget_s:
            row["error"] = f"time budget ({args.budget_s:.0f} s) spent"
        else:
            try:
                row.update(measure(cand, d["base_params"], d["src_grads"], d["probes"], d["exact"], device, args))
            except Exception as e:  # noqa: BLE001 - one peer failing must not stop the table
                msg = str(e).strip().splitlines()[0][:100] if str(e).strip() else ""
                row["error"] = f"{type(e).__name__}: {msg}"
                if os.environ.get("PEERS_TRACEBACK"):
                    traceback.print_exc()
        d["rows"][i] = row
        status = row.get("error") or f"{row['ms']:.3f} ms/step, first step {row['first_step_s']:.1f} s"
        print(f"[{time.perf_counter() - t_start:6.1f} s] {set_name} | {cand.name}: {status}", flush=True)

    for set_name, d in sets.items():
        desc = ", ".join(f"{k}×{r}×{c}" for (r, c), k in d["shapes"])
        src, probes = d["src_grads"], d["probes"]
        print(f"\n== {set_name}: {desc} — {d['numel'] / 1e6:.1f}M fp32 params; dense NS{NS_STEPS} "
              f"{d['ns_flops'] / 1e12:.4g} TFLOP → floor {d['floor_ms']:.4g} ms at the ceiling; probes: "
              f"gauss {tuple(src[probes['gauss']].shape)}, decay {tuple(src[probes['decay']].shape)}")
        report(d["rows"], d["floor_ms"])
        results["sets"][set_name] = {k: d[k] for k in ("shapes", "numel", "ns_flops", "floor_ms", "rows")}
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    save_json(args.json, results)
    return 0


def report(rows: List[Dict[str, object]], floor_ms: float) -> None:
    peers = [r["ms"] for r in rows if r.get("kind") == "peer" and "ms" in r]
    best_peer = min(peers) if peers else None
    best_name = next((r["name"] for r in rows if r.get("ms") == best_peer), None)
    for r in rows:
        if "ms" in r:
            r["x_best_peer"] = r["ms"] / best_peer if best_peer else None
            r["x_floor"] = r["ms"] / floor_ms
    headers = ["optimizer", "NS coeffs", "ms/step", "×peer", "×floor", "1st step s", "state MiB", "peak MiB",
               "dir err gauss", "dir err decay", "σ range gauss", "note"]
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["name"], r["coeffs"], "n/a", "", "", "", "", "", "", "", "", f"({r['error']})"])
            continue
        sig = f"[{r['sigma_min']:.2f}, {r['sigma_max']:.2f}]" if "sigma_min" in r else "—"
        body.append([
            r["name"], r["coeffs"], fmt(r["ms"], ".3f", 0), fmt(r.get("x_best_peer"), ".2f", 0),
            fmt(r["x_floor"], ".1f", 0), fmt(r["first_step_s"], ".2f", 0), fmt(r["state_mib"], ".0f", 0),
            fmt(r["peak_mib"], ".0f", 0), fmt(r["dir_err_gauss"], ".4f", 0), fmt(r["dir_err_decay"], ".4f", 0),
            sig, r.get("note", ""),
        ])
    print()
    print_table(headers, body, left=2, note_last=True)
    print(f"×peer: / fastest peer ({best_name or 'none ran'}); ×floor: / dense NS{NS_STEPS} FLOPs at the ceiling. "
          "peak MiB: optimizer state + one step's workspace, above params and grads. dir err: ‖Û − Ô‖_F of "
          "unit-norm update vs exact polar (0 = exact; AdamW's is not a polar factor).")


if __name__ == "__main__":
    raise SystemExit(main())
