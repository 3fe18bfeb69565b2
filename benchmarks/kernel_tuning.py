"""Kernel configurations on this GPU: cuBLAS vs the Triton kernels with the fixed heuristic vs tuned.

    python benchmarks/kernel_tuning.py [--json PATH] [--quick]

One run, in this order:
  1. the tuning itself, from nothing (a fresh tuner, memory only; Triton's own compile cache as the
     machine has it): kernels="auto" decides every GPT-2-small group, which times each candidate
     config of each kernel on the way. Wall seconds, keys timed, and each group's decision with the
     µs of every candidate.
  2. per group and NS product — X Xᵀ, b·A + c·A², a·X + B·X (and, for Gram NS, P·Uᵀ) — cuBLAS,
     Triton with the heuristic config, Triton with the tuned one: µs (median, CUDA events) and
     dense-equivalent TFLOP/s (the lower-tile kernels do half of those FLOPs);
  3. per group and for the whole set, the 5-step polar factor (the "muon" coefficients): NS on
     cuBLAS, NS on Triton (heuristic, tuned), Gram NS on cuBLAS and on Triton (tuned), and "auto".
GPT-2-small groups, as the step iterates them (wide): 12×768×768, 12×768×2304, 24×768×3072 (the
3072×768 and 768×3072 groups, same wide shape). About a minute on an H200.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch

import fpolar
import fpolar.kernels as K
from fpolar.coefficients import SCHEDULES
from fpolar.kernels import tuning
from fpolar.kernels._tma import use_tma
from fpolar.polar import PolarSpec, polar_wide

from common import cuda_graph_ms  # benchmarks/, the script's own folder

MUON = SCHEDULES["muon"].coefficients[0]
GROUPS: List[Tuple[int, int, int]] = [(12, 768, 768), (12, 768, 2304), (24, 768, 3072)]
QUICK_GROUPS: List[Tuple[int, int, int]] = [(4, 256, 256), (4, 256, 1024)]


def bench_us(fn: Callable[[], object], ms: int) -> float:
    """Median device µs of ``fn`` as CUDA-graph replays (``common.cuda_graph_ms``)."""
    return 1e3 * cuda_graph_ms(fn, rep_ms=ms)


def tflops(flops: float, us: float) -> float:
    return flops / (us * 1e-6) / 1e12


def spec(method: str, kernels: str) -> PolarSpec:
    return PolarSpec.build(method, kernels=kernels, coefficients=[MUON], ns_steps=5, polar_dtype=torch.bfloat16)


def tune_from_nothing(groups) -> Dict[str, object]:
    tuner = tuning.set_tuning(True, cache_path=None)
    auto = spec("newton_schulz", "auto")
    start = time.perf_counter()
    decisions = []
    for b, m, n in groups:
        impl = auto.impl_for(m, n, torch.bfloat16, torch.device("cuda"), batch=b)
        decisions.append({"group": [b, m, n], "choice": impl.label, "reason": impl.reason})
    torch.cuda.synchronize()
    return {"tuning_s": time.perf_counter() - start, "keys_timed": tuner.timed, "decisions": decisions}


def product_rows(groups, ms: int) -> List[Dict[str, object]]:
    """Each product alone: cuBLAS, Triton heuristic config, Triton tuned config."""
    rows = []
    tuner = tuning.get_tuner()
    for b, m, n in groups:
        g = torch.Generator(device="cuda").manual_seed(0)
        x = (torch.randn(b, m, n, device="cuda", generator=g) / n**0.5).bfloat16()
        a = x @ x.mT
        p = torch.baddbmm(a, a, a, beta=-4.775, alpha=2.0315)
        u = torch.bmm(p, a)
        cases = {
            # name: (dense FLOPs, cuBLAS, Triton launcher taking a config, kernel, (m, n) of its key)
            "X Xᵀ": (2 * b * m * m * n, lambda: torch.bmm(x, x.mT),
                     lambda c, o=torch.empty_like(a): K.launch_sym_gram(x, o, c), "sym_gram", (m, n)),
            "b·A + c·A²": (2 * b * m**3, lambda: torch.baddbmm(a, a, a, beta=-4.775, alpha=2.0315),
                           lambda c, o=torch.empty_like(a): K.launch_sym_poly(a, o, -4.775, 2.0315, c), "sym_poly", (m, m)),
            "a·X + B·X": (2 * b * m * m * n, lambda: torch.baddbmm(x, p, x, beta=3.4445),
                          lambda c, o=torch.empty_like(x): K.launch_ns_apply(x, p, o, 3.4445, c), "ns_apply", (m, n)),
            # Gram NS's P·R·P = P·Uᵀ with U = P·R: the symmetric second product
            "P·Uᵀ (P·R·P)": (2 * b * m**3, lambda: torch.bmm(p, u.mT),
                             lambda c, o=torch.empty_like(a): K.launch_sym_cross(p, u, o, c), "sym_cross", (m, m)),
        }
        for name, (flops, cublas, triton_launch, kernel, (km, kn)) in cases.items():
            if kernel.startswith("sym_"):  # the lower-tile kernels load through TMA where the device has it
                kernel = tuning.loaded_through(kernel, use_tma((x,), None))
            default = tuning.default_config(kernel, km, kn, torch.bfloat16)
            tuned = tuner.config_for(kernel, b, km, kn, torch.bfloat16, x.device, triton_launch)
            us = {
                "cuBLAS": bench_us(cublas, ms),
                "Triton heuristic": bench_us(lambda: triton_launch(default), ms),
                "Triton tuned": bench_us(lambda: triton_launch(tuned), ms),
            }
            rows.append({
                "group": f"{b}×{m}×{n}", "product": name, "us": us,
                "tflops": {k: tflops(flops, v) for k, v in us.items()},
                "heuristic": tuning.config_to_json(default), "tuned": tuning.config_to_json(tuned),
            })
    return rows


def polar_rows(groups, ms: int) -> List[Dict[str, object]]:
    """The 5-step polar factor per group and summed over the set, per implementation."""
    from fpolar.polar.dispatch import PolarImpl

    tuner = tuning.get_tuner()
    bf = torch.bfloat16
    variants = {
        "NS5 cuBLAS": (spec("newton_schulz", "torch"), PolarImpl("newton_schulz", "torch", bf), True),
        "NS5 Triton heuristic": (spec("newton_schulz", "triton"), PolarImpl("newton_schulz", "triton", bf), False),
        "NS5 Triton tuned": (spec("newton_schulz", "triton"), PolarImpl("newton_schulz", "triton", bf), True),
        "Gram-NS5 cuBLAS": (spec("gram_newton_schulz", "torch"), PolarImpl("gram_newton_schulz", "torch", bf), True),
        "Gram-NS5 Triton tuned": (spec("gram_newton_schulz", "triton"), PolarImpl("gram_newton_schulz", "triton", bf), True),
        "auto (measured)": (spec("newton_schulz", "auto"), None, True),
    }
    rows = []
    totals = {name: 0.0 for name in variants}
    for b, m, n in groups:
        x = torch.randn(b, m, n, device="cuda")
        flops = 5 * (4 * b * m * m * n + 2 * b * m**3)
        us = {}
        for name, (s, impl, tuned) in variants.items():
            tuning._TUNER = tuner if tuned else tuning.KernelTuner(enabled=False, cache_path=None)
            chosen = impl or s.impl_for(m, n, x.dtype, x.device, batch=b)
            us[name] = bench_us(lambda: polar_wide(x, s, chosen), ms)
            totals[name] += us[name]
        tuning._TUNER = tuner
        rows.append({"group": f"{b}×{m}×{n}", "us": us, "tflops": {k: tflops(flops, v) for k, v in us.items()}})
    rows.append({"group": "whole set", "us": totals})
    return rows


def print_table(rows, title: str) -> None:
    print(f"\n{title}")
    for r in rows:
        label = f"{r['group']:>12} {r.get('product', ''):<16}"
        cells = "  ".join(
            f"{k} {v:8.1f} µs" + (f" {r['tflops'][k]:5.0f} TF/s" if "tflops" in r else "") for k, v in r["us"].items()
        )
        print(label, cells)
        if "tuned" in r:
            print(" " * 30, "heuristic", r["heuristic"], "| tuned", r["tuned"])


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    ap.add_argument("--quick", action="store_true", help="small shapes and short timings (a smoke run)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    groups = QUICK_GROUPS if args.quick else GROUPS
    ms = 20 if args.quick else 100
    start = time.perf_counter()
    import triton

    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
          f"python {platform.python_version()} | {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    tuned = tune_from_nothing(groups)
    print(f"\ntuning from nothing: {tuned['tuning_s']:.1f} s, {tuned['keys_timed']} keys timed")
    for d in tuned["decisions"]:
        print(f"  {d['group']}: {d['choice']} ({d['reason']})")
    products = product_rows(groups, ms)
    print_table(products, "each product alone (dense-equivalent TFLOP/s)")
    polars = polar_rows(groups, ms)
    print_table(polars, "5-step polar factor (dense NS5 TFLOP/s equivalent)")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                       "tuning": tuned, "products": products, "polar": polars}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
