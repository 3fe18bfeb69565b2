"""Host time of one launch of each product of the polar step: what an eager step (or a compiled one
without CUDA graphs, where each custom op is one Python call) pays per product, beside cuBLAS's.

On a tiny (2, 128, 256) batch the device finishes each kernel before the host queues the next, so the
wall time of a loop of launches is the host's. Microseconds per call, median of 5 loops of 200.

    python3 benchmarks/launch_overhead.py [--profile-step]

``--profile-step``: also the Python profile (cProfile, top functions by own time) of 10 eager fpolar
Muon steps on the GPT-2-small matrix set: where an eager step's host time goes.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Callable, Dict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fpolar.kernels as K  # noqa: E402
from fpolar.kernels._tma import descriptor  # noqa: E402


def host_us(fn: Callable[[], object], calls: int = 200, loops: int = 5) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(loops):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(times)


def main() -> int:
    x = torch.randn(2, 128, 256, device="cuda", dtype=torch.bfloat16)
    a = (x @ x.mT).contiguous()
    out = torch.empty(2, 128, 128, device="cuda", dtype=torch.bfloat16)
    rows: Dict[str, Callable[[], object]] = {
        "torch.bmm(x, x.mT)": lambda: torch.bmm(x, x.mT),
        "torch.baddbmm(a, a, a)": lambda: torch.baddbmm(a, a, a, beta=-4.7, alpha=2.0),
        "torch.ops.fpolar.sym_gram(x)": lambda: torch.ops.fpolar.sym_gram(x),
        "torch.ops.fpolar.sym_poly(a)": lambda: torch.ops.fpolar.sym_poly(a, -4.7, 2.0),
        "launch_sym_gram, TMA": lambda: K.launch_sym_gram(x, out, tma=True),
        "launch_sym_gram, pointer loads": lambda: K.launch_sym_gram(x, out, tma=False),
        "launch_sym_poly, TMA": lambda: K.launch_sym_poly(a, out, -4.7, 2.0, tma=True),
        "launch_sym_poly, pointer loads": lambda: K.launch_sym_poly(a, out, -4.7, 2.0, tma=False),
        "three descriptors (host objects)": lambda: (descriptor(x, 128, 64), descriptor(a, 128, 128), descriptor(out, 128, 128)),
    }
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; host µs per call, (2, 128, 256) bf16")
    for name, fn in rows.items():
        print(f"  {name:<36} {host_us(fn):8.1f}", flush=True)
    if "--profile-step" in sys.argv:
        profile_eager_step()
    return 0


def profile_eager_step() -> None:
    import cProfile
    import pstats

    import fpolar

    shapes = [((2304, 768), 12), ((768, 768), 12), ((3072, 768), 12), ((768, 3072), 12)]
    params = [torch.randn(r, c, device="cuda") * 0.02 for (r, c), b in shapes for _ in range(b)]
    grads = [torch.randn_like(p) for p in params]
    hp = fpolar.PolarGradHParams(lr=torch.tensor(0.02, device="cuda"), scale="shape", nesterov=True,
                                 coefficients="muon", ns_steps=5)
    state = fpolar.init_state(params, hp)
    for _ in range(3):
        fpolar.polargrad_step(params, grads, state, hp)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(10):
        fpolar.polargrad_step(params, grads, state, hp)
    profiler.disable()
    torch.cuda.synchronize()
    print(f"10 eager steps: {(time.perf_counter() - t0) * 100:.2f} ms per step under the profiler")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    sys.exit(main())
