"""``python -m fpolar bench``: fpolar's whole optimizer step against torch.optim.Muon, same run.

A quick, self-contained check users can run anywhere. On CUDA it times the GPT-2-small matrix set
(12 × {2304×768, 768×768, 3072×768, 768×3072}, fp32 params); on CPU a set 8× smaller per side.
Like is compared with like: every row names the dtype its Newton–Schulz iteration runs in, and the
ratio is against torch.optim.Muon iterating in the same dtype. torch.optim.Muon always iterates in
bf16; its float32 row runs the same code with the iteration in fp32 (patched for the measurement). On
CUDA both libraries iterate in bf16; on CPU fpolar defaults to fp32 (bf16 matmuls are much slower
there), so the CPU table has both dtypes.

How long: 6 rows × (about 4 + --reps) steps on CPU, 3 rows on CUDA. On CPU the bf16 rows dominate:
--reps 2 took 2 minutes on a busy shared 2-core CPU, and the default --reps 10 takes about three times
as many steps; seconds on a GPU. The full GPU benchmarks (per shape group, kernels, peers, the FLOP floor) live in
the repository's ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any, Callable, Iterator, List, Optional, Tuple

import torch

from ..hparams import PolarGradHParams
from ..polargrad import polargrad_step
from ..state import init_state
from .args import positive_int, usable_device

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


def _ns_fp32(grad: torch.Tensor, ns_coefficients: Tuple[float, float, float], ns_steps: int, eps: float) -> torch.Tensor:
    """torch.optim.Muon's Newton–Schulz (torch/optim/_muon.py) with the iteration in fp32, not bf16."""
    a, b, c = ns_coefficients
    x = grad.float()
    if grad.size(0) > grad.size(1):
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


@contextlib.contextmanager
def _torch_muon_ns_dtype(dtype: torch.dtype) -> Iterator[None]:
    """torch.optim.Muon with its Newton–Schulz iteration in ``dtype`` (bf16: unchanged) inside the block."""
    import torch.optim._muon as torch_muon

    original = torch_muon._zeropower_via_newtonschulz
    if dtype == torch.float32:
        torch_muon._zeropower_via_newtonschulz = _ns_fp32
    try:
        yield
    finally:
        torch_muon._zeropower_via_newtonschulz = original


def run_bench(device: Optional[str] = None, reps: int = 10, compile: bool = False) -> dict:
    """Median ms/step of fpolar Muon and PolarGrad steps vs torch.optim.Muon on one matrix set, per
    Newton–Schulz dtype (see the module docstring). Returns {"label [dtype]": ms}."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shrink = 1 if dev.type == "cuda" else 8
    shapes = [((r // shrink, c // shrink), b) for (r, c), b in GPT2_SMALL]
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).to(dev) * 0.02 for s, b in shapes for _ in range(b)]
    grads = [torch.randn(p.shape, generator=gen).to(dev) for p in params]
    median_ms = _timer(dev)
    print(f"fpolar bench on {dev}: {len(params)} fp32 matrices "
          + ", ".join(f"{b}×{s[0]}×{s[1]}" for s, b in shapes) + f"; median of {reps} steps after warm-up", flush=True)

    # CUDA: both libraries' defaults iterate in bf16. CPU: fpolar's default is fp32; both dtypes are shown.
    dtypes = [torch.bfloat16] if dev.type == "cuda" else [torch.float32, torch.bfloat16]
    rows: List[Tuple[str, str, float]] = []  # (label, NS dtype, ms)
    for dtype in dtypes:
        dname = str(dtype).replace("torch.", "")
        tparams = [p.clone().requires_grad_() for p in params]
        for p, g in zip(tparams, grads):
            p.grad = g.clone()
        with _torch_muon_ns_dtype(dtype):
            opt = torch.optim.Muon(tparams, lr=0.02, weight_decay=0.0)
            opt.step()
            print(f"  timing torch.optim.Muon, NS in {dname} …", flush=True)
            rows.append(("torch.optim.Muon", dname, median_ms(opt.step, reps)))

        configs = {
            "fpolar Muon": dict(scale="shape", nesterov=True, coefficients="muon", ns_steps=5),
            "fpolar PolarGrad": dict(),
        }
        for name, kw in configs.items():
            hp = PolarGradHParams(lr=torch.tensor(0.02, device=dev), polar_dtype=dtype, **kw)
            ps = [p.clone() for p in params]
            state = init_state(ps, hp)

            def step(ps: List[torch.Tensor] = ps, state: Any = state, hp: PolarGradHParams = hp) -> None:
                polargrad_step(ps, grads, state, hp)

            if compile:
                step = torch.compile(step, fullgraph=True)  # type: ignore[assignment]
                name += " (compiled)"
            print(f"  timing {name}, NS in {dname} …", flush=True)
            for _ in range(3):
                step()
            rows.append((name, dname, median_ms(step, reps)))

    base = {d: ms for label, d, ms in rows if label == "torch.optim.Muon"}
    print(f"\n{'optimizer':<30} {'NS dtype':>9} {'ms/step':>9} {'vs torch.optim.Muon, same dtype':>32}")
    for label, d, ms in rows:
        print(f"{label:<30} {d:>9} {ms:9.3f} {base[d] / ms:31.2f}×")
    if dev.type == "cpu":
        print("torch.optim.Muon iterates in bf16 on every device; its float32 row runs the same code with the "
              "iteration in fp32.")
    return {f"{label} [{d}]": ms for label, d, ms in rows}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fpolar bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--reps", type=positive_int, default=10, help="timed steps per row (default 10)")
    parser.add_argument("--compile", action="store_true", help="torch.compile fpolar's step (fullgraph)")
    args = parser.parse_args(argv)
    device = usable_device(args.device, parser.prog)
    run_bench(str(device), args.reps, args.compile)
    return 0
