"""X Xᵀ from its lower tiles, ``fpolar::sym_gram``'s kernel through TMA (tensor descriptors) and
through pointer loads, against cuBLAS's full product, on the GPT-2-small Gram shapes, with a sweep of
tile configs for the TMA kernel.

The lower-tile kernel does 58% of a 768-wide product's tiles; whether it wins depends on its speed
per tile. Hopper's tensor-memory accelerator loads a tile with one instruction and no address
arithmetic or masks (``fpolar/kernels/_tma.py``). µs per call from CUDA-graph replays, median.

    python3 benchmarks/tma_gram_probe.py [--json out.json]
    python3 benchmarks/tma_gram_probe.py --poly [--json out.json]   # sym_poly's configs instead
    python3 benchmarks/tma_gram_probe.py --cross [--json out.json]  # sym_cross's configs instead

``--poly`` sweeps ``fpolar::sym_poly``'s TMA kernel (a·I + b·A + c·A², A symmetric, the Gram-space
polynomial) over tile, K step, stages and warps on the m × m shapes of the GPT-2 steps, against
cuBLAS's ``baddbmm`` (which copies A into its output first) and the kernel's default config: the
captured GPT-2-small step launches it 20 times at m = 768, where it runs at about half its ceiling.
``--cross`` does the same for ``fpolar::sym_cross``'s TMA kernel (P·Uᵀ from its lower tiles, the
second half of Gram space's congruence P·R·P) against cuBLAS's ``bmm(P, Uᵀ)``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import triton  # noqa: E402

SHAPES = [(12, 768, 3072), (12, 768, 2304), (12, 768, 768), (12, 1024, 4096)]
POLY_SHAPES = [(12, 768), (24, 768), (24, 1024)]
NS_A, NS_B, NS_C = 3.4445, -4.7750, 2.0315


def sweep(label: str, configs, launch, out: torch.Tensor, ref: torch.Tensor, cuda_graph_ms,
          row: Dict[str, float]) -> tuple:
    """Times ``launch(config)`` (writing ``out``) for each (name, config) from CUDA-graph replays into
    ``row`` (µs), after checking its result against ``ref`` (a config that fails to compile, fit or
    agree is printed and skipped). Returns (best µs, its name)."""
    best = (float("inf"), "")
    for name, config in configs:
        try:
            out.fill_(float("nan"))
            launch(config)
            err = (out.float() - ref).abs().max().item() / ref.abs().max().item()
            if not err < 1e-2:
                print(f"  {label} {name}: wrong, rel err {err:.2e}")
                continue
            us = cuda_graph_ms(lambda: launch(config), 200) * 1e3
        except Exception as e:  # noqa: BLE001 - a config that does not compile or fit
            print(f"  {label} {name}: {type(e).__name__}: {str(e)[:120]}")
            continue
        row[name] = us
        best = min(best, (us, name))
    return best


def tile_grid(blocks, block_ks, stages, warps) -> list:
    """(name, config) for every combination of square tile, K step, pipeline stages and warps."""
    return [
        (f"tma {block}/{block_k} s{stage} w{warp}",
         triton.Config({"BLOCK": block, "BLOCK_K": block_k}, num_warps=warp, num_stages=stage))
        for block, block_k, stage, warp in itertools.product(blocks, block_ks, stages, warps)
    ]


def print_summary(label: str, row: Dict[str, float], baseline: str, default: str, best: tuple) -> None:
    """One line per shape (the cuBLAS baseline, the kernel's default config, the sweep's fastest),
    then the fastest rows."""
    print(f"{label}: cuBLAS {row[baseline]:.1f} µs, default {row[default]:.1f} µs, "
          f"best {best[0]:.1f} µs ({best[1]})", flush=True)
    print_fastest(row)


def print_fastest(row: Dict[str, float]) -> None:
    for name, us in sorted(row.items(), key=lambda kv: kv[1])[:6]:
        print(f"    {name:<36} {us:8.1f}")


def poly_sweep(cuda_graph_ms) -> Dict[str, Dict[str, float]]:
    """µs per ``sym_poly`` call (TMA) per config, and cuBLAS's ``baddbmm`` + a·I, on POLY_SHAPES."""
    from fpolar.kernels.sym_poly import launch_sym_poly

    rows: Dict[str, Dict[str, float]] = {}
    for b, m in POLY_SHAPES:
        y = torch.randn(b, m, m + 64, device="cuda") / (m + 64) ** 0.5
        a = (y @ y.mT).to(torch.bfloat16)  # symmetric, spectral norm about 4
        a = (a + a.mT) / 2
        af = a.float()
        ref = NS_B * af + NS_C * (af @ af) + NS_A * torch.eye(m, device="cuda")
        out = torch.empty_like(a)
        row: Dict[str, float] = {}

        def cublas():
            p = torch.baddbmm(a, a, a, beta=NS_B, alpha=NS_C)
            p.diagonal(dim1=-2, dim2=-1).add_(NS_A)

        row["cublas baddbmm + a·I"] = cuda_graph_ms(cublas, 200) * 1e3
        row["sym_poly (TMA, default config)"] = cuda_graph_ms(
            lambda: launch_sym_poly(a, out, NS_B, NS_C, tma=True, shift=NS_A), 200) * 1e3
        best = sweep(f"{b}×{m}", tile_grid((64, 128), (32, 64, 128), (2, 3, 4, 5), (4, 8)),
                     lambda config: launch_sym_poly(a, out, NS_B, NS_C, config, tma=True, shift=NS_A),
                     out, ref, cuda_graph_ms, row)
        rows[f"{b}x{m}"] = row
        print_summary(f"{b}×{m}", row, "cublas baddbmm + a·I", "sym_poly (TMA, default config)", best)
    return rows


def cross_sweep(cuda_graph_ms) -> Dict[str, Dict[str, float]]:
    """µs per ``sym_cross`` call (TMA) per config, and cuBLAS's full ``bmm``, on POLY_SHAPES (k = m)."""
    from fpolar.kernels.sym_cross import launch_sym_cross

    rows: Dict[str, Dict[str, float]] = {}
    for b, m in POLY_SHAPES:
        y = torch.randn(b, m, m + 64, device="cuda") / (m + 64) ** 0.5
        r = y @ y.mT
        p = (NS_B * r + NS_C * r @ r).to(torch.bfloat16)  # a polynomial in R, as Gram NS's P
        u = (p.float() @ r).to(torch.bfloat16)  # U = P·R, so P·Uᵀ = P·R·P is symmetric
        full = p.float() @ u.float().mT
        ref = full.tril() + full.tril(-1).mT  # the kernel computes the lower tiles and mirrors them
        out = torch.empty_like(p)
        row: Dict[str, float] = {"cublas bmm": cuda_graph_ms(lambda: torch.bmm(p, u.mT), 200) * 1e3}
        row["sym_cross (TMA, default config)"] = cuda_graph_ms(lambda: launch_sym_cross(p, u, out, tma=True), 200) * 1e3
        best = sweep(f"{b}×{m}", tile_grid((128,), (32, 64), (2, 3, 4), (4, 8)),
                     lambda config: launch_sym_cross(p, u, out, config, tma=True), out, ref, cuda_graph_ms, row)
        rows[f"{b}x{m}"] = row
        print_summary(f"{b}×{m}", row, "cublas bmm", "sym_cross (TMA, default config)", best)
    return rows


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--poly", action="store_true", help="sweep sym_poly's configs instead of sym_gram's")
    ap.add_argument("--cross", action="store_true", help="sweep sym_cross's configs instead of sym_gram's")
    args = ap.parse_args(argv)
    from common import cuda_graph_ms, environment, print_header, save_json
    from fpolar.kernels.sym_gram import launch_sym_gram

    env = environment(torch.device("cuda"))
    print_header(env)
    if args.poly:
        save_json(args.json, {"environment": env, "poly_rows": poly_sweep(cuda_graph_ms)})
        return 0
    if args.cross:
        save_json(args.json, {"environment": env, "cross_rows": cross_sweep(cuda_graph_ms)})
        return 0
    rows: Dict[str, Dict[str, float]] = {}
    for b, m, n in SHAPES:
        x = torch.randn(b, m, n, device="cuda", dtype=torch.bfloat16) / n**0.5
        ref = (x.float() @ x.float().mT)
        out = torch.empty(b, m, m, device="cuda", dtype=torch.bfloat16)
        row: Dict[str, float] = {}
        row["cublas bmm"] = cuda_graph_ms(lambda: torch.bmm(x, x.mT), 200) * 1e3
        row["sym_gram (pointer loads)"] = cuda_graph_ms(lambda: launch_sym_gram(x, out, tma=False), 200) * 1e3
        row["sym_gram (TMA, default config)"] = cuda_graph_ms(lambda: launch_sym_gram(x, out, tma=True), 200) * 1e3
        best = sweep(f"{b}×{m}×{n}", tile_grid((128,), (64, 128), (3, 4, 5), (4, 8)), lambda config: launch_sym_gram(x, out, config, tma=True),
                     out, ref, cuda_graph_ms, row)
        rows[f"{b}x{m}x{n}"] = row
        print(f"{b}×{m}×{n}: cuBLAS {row['cublas bmm']:.1f} µs, sym_gram {row['sym_gram (pointer loads)']:.1f} µs, "
              f"best TMA {best[0]:.1f} µs ({best[1]}); ×cuBLAS {best[0] / row['cublas bmm']:.2f}", flush=True)
        print_fastest(row)
    save_json(args.json, {"environment": env, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
