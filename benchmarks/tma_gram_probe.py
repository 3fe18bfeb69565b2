"""X Xᵀ from its lower tiles, ``fpolar::sym_gram``'s kernel through TMA (tensor descriptors) and
through pointer loads, against cuBLAS's full product, on the GPT-2-small Gram shapes, with a sweep of
tile configs for the TMA kernel.

The lower-tile kernel does 58% of a 768-wide product's tiles; whether it wins depends on its speed
per tile. Hopper's tensor-memory accelerator loads a tile with one instruction and no address
arithmetic or masks (``fpolar/kernels/_tma.py``). µs per call from CUDA-graph replays, median.

    python3 benchmarks/tma_gram_probe.py [--json out.json]
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


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from common import cuda_graph_ms, environment, print_header, save_json
    from fpolar.kernels.sym_gram import launch_sym_gram

    env = environment(torch.device("cuda"))
    print_header(env)
    rows: Dict[str, Dict[str, float]] = {}
    for b, m, n in SHAPES:
        x = torch.randn(b, m, n, device="cuda", dtype=torch.bfloat16) / n**0.5
        ref = (x.float() @ x.float().mT)
        out = torch.empty(b, m, m, device="cuda", dtype=torch.bfloat16)
        row: Dict[str, float] = {}
        row["cublas bmm"] = cuda_graph_ms(lambda: torch.bmm(x, x.mT), 200) * 1e3
        row["sym_gram (pointer loads)"] = cuda_graph_ms(lambda: launch_sym_gram(x, out, tma=False), 200) * 1e3
        row["sym_gram (TMA, default config)"] = cuda_graph_ms(lambda: launch_sym_gram(x, out, tma=True), 200) * 1e3
        best = (float("inf"), "")
        for block_k, stages, warps in itertools.product((64, 128), (3, 4, 5), (4, 8)):
            config = triton.Config({"BLOCK": 128, "BLOCK_K": block_k}, num_warps=warps, num_stages=stages)
            name = f"tma 128/{block_k} s{stages} w{warps}"
            try:
                out.fill_(float("nan"))
                launch_sym_gram(x, out, config, tma=True)
                err = (out.float() - ref).abs().max().item() / ref.abs().max().item()
                if not err < 1e-2:
                    print(f"  {b}×{m}×{n} {name}: wrong, rel err {err:.2e}")
                    continue
                us = cuda_graph_ms(lambda: launch_sym_gram(x, out, config, tma=True), 200) * 1e3
            except Exception as e:  # noqa: BLE001 - a config that does not compile or fit
                print(f"  {b}×{m}×{n} {name}: {type(e).__name__}: {str(e)[:120]}")
                continue
            row[name] = us
            best = min(best, (us, name))
        rows[f"{b}x{m}x{n}"] = row
        print(f"{b}×{m}×{n}: cuBLAS {row['cublas bmm']:.1f} µs, sym_gram {row['sym_gram (pointer loads)']:.1f} µs, "
              f"best TMA {best[0]:.1f} µs ({best[1]}); ×cuBLAS {best[0] / row['cublas bmm']:.2f}", flush=True)
        for name, us in sorted(row.items(), key=lambda kv: kv[1])[:6]:
            print(f"    {name:<36} {us:8.1f}")
    save_json(args.json, {"environment": env, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
