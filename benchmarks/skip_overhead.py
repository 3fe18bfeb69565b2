"""What nonfinite="skip" costs an eager step: polargrad_step and adamw_step, "skip" vs "propagate".

    python benchmarks/skip_overhead.py                 # CPU, one thread
    python benchmarks/skip_overhead.py --device cuda   # GPU (synchronizes around each timed call)

18 matrices in three shape groups (64×192, 192×64, 64×64; ×8 with --scale 8) and 24 vectors; median
of 30 steps after 3 warm-up steps, modes interleaved twice.
"""

import argparse
import time

import torch

import fpolar


def bench(mode: str, device: str, scale: int, reps: int = 30):
    shapes = [(64 * scale, 192 * scale)] * 6 + [(192 * scale, 64 * scale)] * 6 + [(64 * scale, 64 * scale)] * 6
    ashapes = [(64 * scale,)] * 24
    ps = [torch.randn(s, device=device) for s in shapes]
    gs = [torch.randn(s, device=device) for s in shapes]
    aps = [torch.randn(s, device=device) for s in ashapes]
    ags = [torch.randn(s, device=device) for s in ashapes]
    hp = fpolar.PolarGradHParams(lr=0.02, nonfinite=mode)
    ahp = fpolar.AdamWHParams(nonfinite=mode)
    st, ast = fpolar.init_state(ps, hp), fpolar.init_adamw_state(aps, ahp)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        fpolar.polargrad_step(ps, gs, st, hp)
        fpolar.adamw_step(aps, ags, ast, ahp)
    tp, ta = [], []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fpolar.polargrad_step(ps, gs, st, hp)
        sync()
        t1 = time.perf_counter()
        fpolar.adamw_step(aps, ags, ast, ahp)
        sync()
        t2 = time.perf_counter()
        tp.append(t1 - t0)
        ta.append(t2 - t1)
    return sorted(tp)[reps // 2] * 1e3, sorted(ta)[reps // 2] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--scale", type=int, default=1)
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    for mode in ("propagate", "skip", "propagate", "skip"):
        p, a = bench(mode, args.device, args.scale)
        print(f"{mode:10s} polargrad_step {p:8.3f} ms   adamw_step {a:7.3f} ms")


if __name__ == "__main__":
    main()
