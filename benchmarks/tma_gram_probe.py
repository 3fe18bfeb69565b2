"""Probe: X Xᵀ from its lower tiles with operands loaded by TMA (tensor descriptors) against the
pointer-load ``fpolar::sym_gram`` kernel and cuBLAS's full product, on the GPT-2-small Gram shapes.

The lower-tile kernel does 58% of a 768-wide product's tiles but was 1.65× slower than cuBLAS on the
H200 (BENCHMARKS.md, 15): its per-tile speed, not its tile count, loses. Hopper's tensor-memory
accelerator loads a tile with one instruction and no address arithmetic or masks; this measures
whether that closes the gap before the kernels change. Device ms of CUDA-graph replays, median.

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
import triton.language as tl  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

from fpolar.kernels._lower_tiles import lower_tile_coords, lower_tile_count, store_mirrored  # noqa: E402

SHAPES = [(12, 768, 3072), (12, 768, 2304), (12, 768, 768), (12, 1024, 4096)]


@triton.jit
def _gram_tma_kernel(x_desc, out_ptr, m, n, stride_ob, stride_om, stride_on, lower_tiles,
                     BLOCK: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
    pid = tl.program_id(0)
    batch = pid // lower_tiles
    ti, tj = lower_tile_coords(pid % lower_tiles)
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k0 in tl.range(0, n, BLOCK_K, num_stages=STAGES):
        xi = x_desc.load([batch, ti * BLOCK, k0]).reshape(BLOCK, BLOCK_K)
        xj = x_desc.load([batch, tj * BLOCK, k0]).reshape(BLOCK, BLOCK_K)
        acc = tl.dot(xi, tl.trans(xj), acc)
    rows_i = ti * BLOCK + tl.arange(0, BLOCK)
    rows_j = tj * BLOCK + tl.arange(0, BLOCK)
    out_base = out_ptr + batch.to(tl.int64) * stride_ob
    store_mirrored(out_base, acc.to(out_ptr.dtype.element_ty), rows_i, rows_j, ti == tj, m, stride_om, stride_on)


@triton.jit
def _gram_tma_store_kernel(x_desc, o_desc, lower_tiles,
                           BLOCK: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr, n):
    pid = tl.program_id(0)
    batch = pid // lower_tiles
    ti, tj = lower_tile_coords(pid % lower_tiles)
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k0 in tl.range(0, n, BLOCK_K, num_stages=STAGES):
        xi = x_desc.load([batch, ti * BLOCK, k0]).reshape(BLOCK, BLOCK_K)
        xj = x_desc.load([batch, tj * BLOCK, k0]).reshape(BLOCK, BLOCK_K)
        acc = tl.dot(xi, tl.trans(xj), acc)
    value = acc.to(o_desc.dtype)
    if ti == tj:
        r = tl.arange(0, BLOCK)
        value = tl.where(r[:, None] >= r[None, :], value, tl.trans(value))
        o_desc.store([batch, ti * BLOCK, tj * BLOCK], value.reshape(1, BLOCK, BLOCK))
    else:
        o_desc.store([batch, ti * BLOCK, tj * BLOCK], value.reshape(1, BLOCK, BLOCK))
        o_desc.store([batch, tj * BLOCK, ti * BLOCK], tl.trans(value).reshape(1, BLOCK, BLOCK))


def gram_tma(x: torch.Tensor, out: torch.Tensor, block: int, block_k: int, stages: int, warps: int,
             tma_store: bool) -> torch.Tensor:
    b, m, n = x.shape
    x_desc = TensorDescriptor(x, list(x.shape), list(x.stride()), [1, block, block_k])
    tiles = lower_tile_count(m, block)
    if tma_store:
        o_desc = TensorDescriptor(out, list(out.shape), list(out.stride()), [1, block, block])
        _gram_tma_store_kernel[(b * tiles,)](x_desc, o_desc, tiles, BLOCK=block, BLOCK_K=block_k, STAGES=stages,
                                             n=n, num_warps=warps)
    else:
        _gram_tma_kernel[(b * tiles,)](x_desc, out, m, n, *out.stride(), tiles, BLOCK=block, BLOCK_K=block_k,
                                       STAGES=stages, num_warps=warps)
    return out


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
        row["sym_gram (pointer loads)"] = cuda_graph_ms(lambda: launch_sym_gram(x, out), 200) * 1e3
        best = (float("inf"), "")
        for block, block_k, stages, warps, store in itertools.product((128,), (64, 128), (3, 4, 5), (4, 8),
                                                                     (False, True)):
            name = f"tma {block}/{block_k} s{stages} w{warps}{' tma-store' if store else ''}"
            try:
                out.fill_(float("nan"))
                gram_tma(x, out, block, block_k, stages, warps, store)
                err = (out.float() - ref).abs().max().item() / ref.abs().max().item()
                if not err < 1e-2:
                    row[name] = float("nan")
                    print(f"  {b}×{m}×{n} {name}: wrong, rel err {err:.2e}")
                    continue
                us = cuda_graph_ms(lambda: gram_tma(x, out, block, block_k, stages, warps, store), 200) * 1e3
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
