"""``python -m fpolar bench``: fpolar's whole optimizer step against torch.optim.Muon, same run.

A quick, self-contained check users can run anywhere. On CUDA it times the GPT-2-small matrix set
(12 × {2304×768, 768×768, 3072×768, 768×3072}, fp32 params); on CPU a set 8× smaller per side, so it
ends in seconds. The full GPU benchmarks (per shape group, kernels, peers, the FLOP floor) live in the
repository's ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, List, Optional, Tuple

import torch

from ..hparams import PolarGradHParams
from ..polargrad import polargrad_step
from ..state import init_state

GPT2_SMALL: List[Tuple[Tuple[int, int], int]] = [((2304, 768), 12), ((768, 768), 12), ((3072, 768), 12), ((768, 3072), 12)]


def _timer(device: torch.device) -> Callable[[Callable[[], object], int], float]:
    def median_ms(fn: Callable[[], object], reps: int) -> float:
        times = []
        for _ in range(reps):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t0))
        return sorted(times)[len(times) // 2]

    return median_ms


def run_bench(device: Optional[str] = None, reps: int = 20, compile: bool = False) -> dict:
    """Median ms/step of fpolar Muon and PolarGrad steps vs torch.optim.Muon on one matrix set."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shrink = 1 if dev.type == "cuda" else 8
    shapes = [((r // shrink, c // shrink), b) for (r, c), b in GPT2_SMALL]
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).to(dev) * 0.02 for s, b in shapes for _ in range(b)]
    grads = [torch.randn(p.shape, generator=gen).to(dev) for p in params]
    median_ms = _timer(dev)
    print(f"fpolar bench on {dev}: {len(params)} matrices "
          + ", ".join(f"{b}×{s[0]}×{s[1]}" for s, b in shapes) + f"; median of {reps} steps after warm-up")

    results = {}
    tparams = [p.clone().requires_grad_() for p in params]
    for p, g in zip(tparams, grads):
        p.grad = g.clone()
    opt = torch.optim.Muon(tparams, lr=0.02, weight_decay=0.0)
    opt.step()
    print("  timing torch.optim.Muon …", flush=True)
    results["torch.optim.Muon"] = median_ms(opt.step, reps)

    configs = {
        "fpolar Muon": dict(scale="shape", nesterov=True, coefficients="muon", ns_steps=5),
        "fpolar PolarGrad": dict(),
    }
    for name, kw in configs.items():
        hp = PolarGradHParams(lr=torch.tensor(0.02, device=dev), **kw)
        ps = [p.clone() for p in params]
        state = init_state(ps, hp)

        def step(ps=ps, state=state, hp=hp) -> None:
            polargrad_step(ps, grads, state, hp)

        if compile:
            step = torch.compile(step, fullgraph=True)  # type: ignore[assignment]
            name += " (compiled)"
        print(f"  timing {name} …", flush=True)
        for _ in range(3):
            step()
        results[name] = median_ms(step, reps)

    base = results["torch.optim.Muon"]
    print(f"\n{'optimizer':<32} {'ms/step':>9} {'vs torch.optim.Muon':>20}")
    for name, ms in results.items():
        print(f"{name:<32} {ms:9.3f} {base / ms:19.2f}×")
    return results


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fpolar bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--reps", type=int, default=20, help="timed steps per optimizer (default 20)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile fpolar's step (fullgraph)")
    args = parser.parse_args(argv)
    run_bench(args.device, args.reps, args.compile)
    return 0
