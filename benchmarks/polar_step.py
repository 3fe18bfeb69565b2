"""Polar-step and whole-step timings on the GPU, all measured in one run, printed as one table.

    python benchmarks/polar_step.py [--json PATH] [--quick]

Rows: per shape group of the GPT-2-small matrix set and for the whole set —
  * plain stacked cuBLAS NS5 (bf16 X@Xᵀ, b·A + c·A², a·X + B·X: the baseline every Muon uses),
  * fpolar's polar step through each implementation (cuBLAS ops, Triton kernels, Gram NS),
  * fpolar's whole step (polargrad_step: momentum + polar + scale + apply), eager, compiled and
    CUDA-graph replayed (groups in order, and side by side on 4 lanes as ``capture_cuda_graph``
    records them by default), vs torch.optim.Muon eager and compiled,
  * the dense NS5 FLOP floor at the bf16 matmul ceiling measured in this run.
Plus TFLOP/s achieved on 4096×4096 and 4096×16384.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import sys
from typing import Callable, Dict, List, Optional, Tuple

import torch

import fpolar
from fpolar.coefficients import SCHEDULES
from fpolar.compile import mark_static
from fpolar.polar import PolarSpec, polar_wide
from fpolar.side_streams import lanes

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent))
from common import cuda_graph_ms, products_on_cublas  # noqa: E402

GPT2_SMALL: List[Tuple[Tuple[int, int], int]] = [((2304, 768), 12), ((768, 768), 12), ((3072, 768), 12), ((768, 3072), 12)]
MUON = SCHEDULES["muon"].coefficients[0]


def bench(fn: Callable[[], object], ms: int = 200) -> float:
    """Median milliseconds of ``fn`` (CUDA events via triton's do_bench, warm-up excluded)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=50, rep=ms, return_mode="median"))


def ns5_flops(m: int, n: int, steps: int = 5) -> float:
    """Dense NS FLOPs for one wide m×n matrix (m ≤ n): X Xᵀ, A·A and B·X per step."""
    m, n = min(m, n), max(m, n)
    return steps * (2 * m * m * n + 2 * m**3 + 2 * m * m * n)


def matmul_ceiling() -> float:
    """bf16 TFLOP/s of an 8192³ product on random data."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t = bench(lambda: a @ b, ms=500)
    return 2 * 8192**3 / (t * 1e-3) / 1e12


def plain_stacked_ns5(x: torch.Tensor) -> torch.Tensor:
    """The textbook batched Muon NS5 on a wide stack: the baseline."""
    a_, b_, c_ = MUON
    x = x.bfloat16()
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(5):
        a = x @ x.mT
        b = b_ * a + c_ * a @ a
        x = a_ * x + b @ x
    return x


def polar_variants() -> Dict[str, PolarSpec]:
    muon5 = dict(coefficients=[MUON], ns_steps=5, polar_dtype=torch.bfloat16)
    out = {
        "fpolar NS5 cuBLAS": PolarSpec.build("newton_schulz", kernels="torch", **muon5),
        "fpolar NS5 Triton": PolarSpec.build("newton_schulz", kernels="triton", **muon5),
        "fpolar NS5 auto": PolarSpec.build("newton_schulz", kernels="auto", **muon5),
        "fpolar Gram-NS5 cuBLAS": PolarSpec.build("gram_newton_schulz", kernels="torch", **muon5),
        "fpolar Gram-NS5 Triton X-lines": PolarSpec.build("gram_newton_schulz", kernels="triton", **muon5),
        "fpolar NS5 symmetric": PolarSpec.build("newton_schulz", kernels="symmetric", **muon5),
    }
    return out


def group_inputs(shapes: List[Tuple[Tuple[int, int], int]]) -> List[torch.Tensor]:
    """Wide (B, m, n) bf16 stacks per shape group, as the step hands them to the polar backend."""
    out = []
    for (r, c), b in shapes:
        x = torch.randn(b, r, c, device="cuda")
        out.append((x.mT if r > c else x).contiguous())
    return out


def row(name: str, ms: float, floor_ms: float, ref_ms: float | None = None) -> Dict[str, object]:
    return {"name": name, "ms": ms, "x_floor": ms / floor_ms, "x_ref": (ms / ref_ms) if ref_ms else None}


def time_polar(results: list, shapes, ceiling: float) -> None:
    """Each variant's polar factor per shape group, timed as CUDA-graph replays (the way the captured
    step runs it: "auto" then takes its in-graph choice, and small launches are not timed by the host)."""
    xs = group_inputs(shapes)
    floors = [sum(ns5_flops(x.shape[1], x.shape[2]) for _ in range(x.shape[0])) / (ceiling * 1e12) * 1e3 for x in xs]
    base = [cuda_graph_ms(lambda x=x: plain_stacked_ns5(x), 200) for x in xs]
    for (shape, b), x, f, t in zip(shapes, xs, floors, base):
        results.append({"group": f"{b}×{shape[0]}×{shape[1]}", **row("plain stacked cuBLAS NS5", t, f, t)})
    for name, spec in polar_variants().items():
        for (shape, b), x, f, t in zip(shapes, xs, floors, base):
            try:
                ms = cuda_graph_ms(lambda x=x, spec=spec: polar_wide(x, spec), 200)
                results.append({"group": f"{b}×{shape[0]}×{shape[1]}", **row(name, ms, f, t)})
            except Exception as e:  # noqa: BLE001 - report and continue
                results.append({"group": f"{b}×{shape[0]}×{shape[1]}", "name": name, "error": repr(e)[:120]})


def make_params(shapes) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    params, grads = [], []
    for (r, c), b in shapes:
        for _ in range(b):
            params.append(torch.randn(r, c, device="cuda") * 0.02)
            grads.append(torch.randn(r, c, device="cuda"))
    return params, grads


def captured(step: Callable[[], object], warmup: int = 3) -> torch.cuda.CUDAGraph:
    """``step`` captured in a CUDA graph after ``warmup`` eager runs on a side stream (Triton compiles,
    the allocator settles); the graph is not replayed here."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def whole_step_rows(shapes, floor_ms: float, only: Optional[str] = None) -> List[Dict[str, object]]:
    """torch.optim.Muon and each fpolar configuration (those whose label holds one of the comma-separated
    ``only`` substrings; all when None): eager, compiled, reduce-overhead, CUDA graph."""
    rows: List[Dict[str, object]] = []
    params, grads = make_params(shapes)

    # torch.optim.Muon, eager and compiled
    tparams = [p.clone().requires_grad_() for p in params]
    for p, g in zip(tparams, grads):
        p.grad = g.clone()
    opt = torch.optim.Muon(tparams, lr=0.02, weight_decay=0.0)
    t_muon = bench(opt.step)
    rows.append(row("torch.optim.Muon eager", t_muon, floor_ms, t_muon))
    try:
        cstep = torch.compile(opt.step)
        for _ in range(3):
            cstep()
        rows.append(row("torch.optim.Muon compiled", bench(cstep), floor_ms, t_muon))
    except Exception as e:  # noqa: BLE001
        rows.append({"name": "torch.optim.Muon compiled", "error": repr(e)[:120]})

    muon = dict(scale="shape", nesterov=True, coefficients="muon", ns_steps=5)
    # (hparams, the plan's setting): "every product on cuBLAS" makes the plan as on a device without
    # TMA, the rules before the symmetric products moved to fpolar's kernels, for the same-run ratio.
    configs = {
        "fpolar Muon": (muon, contextlib.nullcontext),
        "fpolar Muon, every product on cuBLAS": (muon, products_on_cublas),
        # the symmetric products on fpolar's kernels at every launch: what reduce-overhead can reach
        'fpolar Muon, kernels="symmetric"': ({**muon, "kernels": "symmetric"}, contextlib.nullcontext),
        "fpolar PolarGrad": ({}, contextlib.nullcontext),
        "fpolar PolarGrad, every product on cuBLAS": ({}, products_on_cublas),
        'fpolar PolarGrad, kernels="symmetric"': ({"kernels": "symmetric"}, contextlib.nullcontext),
    }
    wanted = [o.strip() for o in only.split(",")] if only else None
    for label, (kw, planning) in configs.items():
        if wanted is not None and not any(o in label for o in wanted):
            continue
        hp = fpolar.PolarGradHParams(lr=torch.tensor(0.02, device="cuda"), **kw)
        ps = [p.clone() for p in params]
        with planning():
            state = fpolar.init_state(ps, hp)
        rows.append({"name": f"{label} plan", "plan": [i.label for i in state.polar_impls]})

        def step(ps=ps, state=state, hp=hp):
            fpolar.polargrad_step(ps, grads, state, hp)

        rows.append(row(f"{label} step eager", bench(step), floor_ms, t_muon))
        try:
            mark_static(ps, grads, state, hp)  # every tensor the step mutates (step count, skip counter, …)
            # each configuration's step is the same code object: a fresh Dynamo cache, else the
            # configurations add up to its recompile limit
            torch._dynamo.reset()
            cstep = torch.compile(step, fullgraph=True)
            for _ in range(3):
                cstep()
            rows.append(row(f"{label} step compiled", bench(cstep), floor_ms, t_muon))
            rstep = torch.compile(step, fullgraph=True, mode="reduce-overhead")
            for _ in range(3):
                rstep()
            rows.append(row(f"{label} step compiled reduce-overhead", bench(rstep), floor_ms, t_muon))
        except Exception as e:  # noqa: BLE001
            rows.append({"name": f"{label} step compiled", "error": repr(e)[:160]})
        try:
            graph = captured(step)
            rows.append(row(f"{label} step CUDA graph", bench(graph.replay), floor_ms, t_muon))
        except Exception as e:  # noqa: BLE001
            rows.append({"name": f"{label} step CUDA graph", "error": repr(e)[:160]})
        try:  # the shape groups' polar steps side by side, as capture_cuda_graph records them by default
            with lanes(4):
                graph = captured(step)
            rows.append(row(f"{label} step CUDA graph, 4 lanes", bench(graph.replay), floor_ms, t_muon))
        except Exception as e:  # noqa: BLE001
            rows.append({"name": f"{label} step CUDA graph, 4 lanes", "error": repr(e)[:160]})
    return rows


def tflops_rows(ceiling: float) -> List[Dict[str, object]]:
    rows = []
    # the first three shapes place the auto-dispatch crossovers; the last two are the headline sizes
    for b, m, n in [(8, 1024, 2048), (4, 2048, 2048), (4, 2048, 4096), (1, 4096, 4096), (1, 4096, 16384)]:
        x = torch.randn(b, m, n, device="cuda")
        flops = b * ns5_flops(m, n)
        t = bench(lambda: plain_stacked_ns5(x))
        rows.append({"shape": f"{b}×{m}×{n}", "name": "plain stacked cuBLAS NS5", "ms": t, "tflops": flops / (t * 1e-3) / 1e12})
        for name, spec in polar_variants().items():
            try:
                ms = bench(lambda spec=spec: polar_wide(x, spec))
                rows.append({"shape": f"{b}×{m}×{n}", "name": name, "ms": ms, "tflops_dense_equiv": flops / (ms * 1e-3) / 1e12})
            except Exception as e:  # noqa: BLE001
                rows.append({"shape": f"{b}×{m}×{n}", "name": name, "error": repr(e)[:120]})
    return rows


def profile_whole_step(shapes, label: str, kw: dict) -> str:
    """Where the compiled whole step spends GPU time: the top kernels over 5 steps."""
    params, grads = make_params(shapes)
    hp = fpolar.PolarGradHParams(lr=torch.tensor(0.02, device="cuda"), **kw)
    state = fpolar.init_state(params, hp)
    mark_static(params, grads, state, hp)
    step = torch.compile(lambda: fpolar.polargrad_step(params, grads, state, hp), fullgraph=True)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60)
    return f"profile of the compiled {label} step (5 steps):\n{table}"


def profile_captured_step(shapes, label: str, kw: dict, steps: int = 5) -> Tuple[str, List[Dict[str, object]]]:
    """Where the step captured in a CUDA graph (the drop-in's and ``capture_cuda_graph``'s plan: the
    symmetric products on fpolar's kernels) spends device time: every kernel of ``steps`` replays,
    grouped by name, in µs per step, with the share of the step's summed kernel time."""
    params, grads = make_params(shapes)
    hp = fpolar.PolarGradHParams(lr=torch.tensor(0.02, device="cuda"), **kw)
    state = fpolar.init_state(params, hp)

    def step():
        fpolar.polargrad_step(params, grads, state, hp)

    graph = captured(step)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            graph.replay()
        torch.cuda.synchronize()
    per_kernel: Dict[str, List[float]] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time_total > 0:
            per_kernel.setdefault(e.name, []).append(e.device_time_total)
    total = sum(sum(v) for v in per_kernel.values()) / steps
    rows = sorted(
        ({"kernel": k[:90], "us_per_step": sum(v) / steps, "launches_per_step": len(v) / steps} for k, v in per_kernel.items()),
        key=lambda r: -r["us_per_step"],
    )
    lines = [f"kernels of the captured {label} step, {steps} replays: {total:.1f} µs of kernels per step"]
    for r in rows[:24]:
        lines.append(f"  {r['us_per_step']:8.1f} µs  {100 * r['us_per_step'] / total:5.1f}%  ×{r['launches_per_step']:5.1f}  {r['kernel']}")
    return "\n".join(lines), rows


def per_op_rows() -> List[Dict[str, object]]:
    """Each NS line alone, cuBLAS vs Triton, at the shapes the dispatch thresholds are drawn from."""
    from fpolar.polar.dispatch import triton_ops
    from fpolar.polar.newton_schulz import TORCH_OPS

    rows = []
    impls = {"cuBLAS": TORCH_OPS, "Triton": triton_ops()}
    for b, m, n in [(12, 768, 768), (12, 768, 2304), (24, 768, 3072), (8, 1024, 2048), (4, 2048, 2048), (1, 4096, 4096)]:
        x = torch.randn(b, m, n, device="cuda", dtype=torch.bfloat16) / n**0.5
        a = x @ x.mT
        for name, ops in impls.items():
            rows.append({"shape": f"{b}×{m}×{n}", "impl": name,
                         "gram_us": 1e3 * bench(lambda: ops.gram(x), ms=100),
                         "poly_us": 1e3 * bench(lambda: ops.poly(a, -4.775, 2.0315), ms=100),
                         "apply_us": 1e3 * bench(lambda: ops.apply(x, a, 3.4445), ms=100)})
    return rows


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="write all rows to this JSON file")
    ap.add_argument("--step-configs", default=None,
                    help='comma list of substrings of the whole-step configurations to run (default: all), e.g. "Muon"')
    ap.add_argument("--parts", default="groups,step,large,profile,graphprofile,ops",
                    help="comma list of: groups (polar per shape group), step (whole optimizer step), large "
                         "(single large matrices), profile (the compiled step's top kernels), graphprofile (the "
                         "kernels of the step captured in a CUDA graph, per step), ops (each NS line)")
    args = ap.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not torch.cuda.is_available():
        print("polar_step.py needs a CUDA GPU")
        return 1
    import triton

    print(f"command: python {' '.join(sys.argv)}")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
          f"python {platform.python_version()}, {datetime.date.today()}")
    torch.manual_seed(0)
    ceiling = matmul_ceiling()
    total_flops = sum(ns5_flops(*s) * b for s, b in GPT2_SMALL)
    floor_ms = total_flops / (ceiling * 1e12) * 1e3
    print(f"bf16 matmul ceiling {ceiling:.0f} TFLOP/s; GPT-2-small dense NS5 floor {floor_ms:.3f} ms "
          f"({total_flops / 1e12:.3f} TFLOP)")
    polar_rows: list = []
    if "groups" in parts:
        time_polar(polar_rows, GPT2_SMALL, ceiling)
    if "groups" in parts:  # a part's header only where it ran
        print("\npolar step per shape group, CUDA-graph replays (ms; ×floor = / dense NS5 FLOPs at the ceiling; "
              "×plain = / plain stacked NS5)")
    for r in polar_rows:
        if "error" in r:
            print(f"  {r['group']:>14}  {r['name']:<28} error: {r['error']}")
        else:
            print(f"  {r['group']:>14}  {r['name']:<28} {r['ms']:8.3f} ms  ×floor {r['x_floor']:5.2f}  ×plain {r['x_ref']:5.2f}")
    # whole set: sum of groups per variant
    if "groups" in parts:
        print("\nwhole GPT-2-small set, polar only (sum of groups)")
    sums: Dict[str, float] = {}
    for r in polar_rows:
        if "error" not in r:
            sums[r["name"]] = sums.get(r["name"], 0.0) + r["ms"]
    for name, ms in sums.items():
        print(f"  {name:<28} {ms:8.3f} ms  ×floor {ms / floor_ms:5.2f}")
    step_rows = whole_step_rows(GPT2_SMALL, floor_ms, args.step_configs) if "step" in parts else []
    if "step" in parts:
        print("\nwhole optimizer step, GPT-2-small set, fp32 params (×ref = / torch.optim.Muon eager)")
    for r in step_rows:
        if "error" in r:
            print(f"  {r['name']:<34} error: {r['error']}")
        elif "plan" in r:
            print(f"  {r['name']:<34} {', '.join(r['plan'])}")
        else:
            print(f"  {r['name']:<34} {r['ms']:8.3f} ms  ×floor {r['x_floor']:5.2f}  ×Muon {r['x_ref']:5.3f}")
    tf_rows = tflops_rows(ceiling) if "large" in parts else []
    if "large" in parts:
        print("\nsingle large matrices, NS5 (dense-equivalent TFLOP/s: dense NS5 FLOPs / time)")
    for r in tf_rows:
        if "error" in r:
            print(f"  {r['shape']:>14}  {r['name']:<28} error: {r['error']}")
        else:
            tf = r.get("tflops", r.get("tflops_dense_equiv"))
            print(f"  {r['shape']:>14}  {r['name']:<28} {r['ms']:8.3f} ms  {tf:6.0f} TFLOP/s")
    if "profile" in parts:
        print("\n" + profile_whole_step(GPT2_SMALL, "fpolar Muon", dict(scale="shape", nesterov=True, coefficients="muon", ns_steps=5)))
    graph_profile: List[Dict[str, object]] = []
    if "graphprofile" in parts:
        text, graph_profile = profile_captured_step(
            GPT2_SMALL, "fpolar Muon", dict(scale="shape", nesterov=True, coefficients="muon", ns_steps=5)
        )
        print("\n" + text)
    op_rows = per_op_rows() if "ops" in parts else []
    if "ops" in parts:
        print("\nper NS line (µs): X Xᵀ | b·A + c·A² | a·X + B·X")
    for r in op_rows:
        print(f"  {r['shape']:>14}  {r['impl']:<7} {r['gram_us']:8.1f} {r['poly_us']:8.1f} {r['apply_us']:8.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ceiling_tflops": ceiling, "floor_ms": floor_ms, "polar": polar_rows, "step": step_rows,
                       "tflops": tf_rows, "per_op": op_rows, "graph_profile": graph_profile, "torch": torch.__version__, "device": torch.cuda.get_device_name()}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
