"""Distributed fpolar at scale, on paper: per-step optimizer traffic and Newton–Schulz work per rank.

Computed, not measured. For each model's hidden matrices (embeddings and the output head go to AdamW)
and each world size W, with FSDP2 Shard(0) params and fpolar's plan (``fpolar.distributed``):

    exchange bytes/rank  both all_to_all of every shape group (bf16 payload, rows padded to ⌈m/W⌉,
                         count padded to a multiple of W; ``ExchangeGroup.bytes_sent``)
    FSDP RS bytes/rank   FSDP's own gradient reduce-scatter of the same matrices, (W−1)/W · P (bf16 grads)
    NS GFLOP/rank        5 Newton–Schulz iterations on the busiest rank's owned matrices (owners by
                         ``assign_owners``, LPT by max·min²): per iteration 4a²b + 2a³ for an a×b matrix, a ≤ b
    ideal                the same work spread perfectly (total / W)
    times                bytes / link rate and FLOPs / matmul rate, at the rates given on the command line
                         (assumptions, printed with the table)

Usage: PYTHONPATH=. python benchmarks/scale_table.py [--link-gbs 50] [--tflops 400]
"""

from __future__ import annotations

import argparse
from typing import Dict, List, Tuple

import torch

from fpolar.distributed.owners import assign_owners, newton_schulz_cost
from fpolar.distributed.plan import ExchangeGroup

Shape = Tuple[int, int]


def transformer(layers: int, d: int, kv: int, ffn: int, gated: bool, fused_qkv_split: bool = True) -> Dict[Shape, int]:
    """Hidden matrices (out, in) of a decoder: q, k, v (split parts of a fused QKV), o, MLP."""
    per_layer: Dict[Shape, int] = {}

    def add(shape: Shape, k: int = 1) -> None:
        per_layer[shape] = per_layer.get(shape, 0) + k

    add((d, d))  # q
    add((kv, d), 2)  # k, v
    add((d, d))  # o
    add((ffn, d), 2 if gated else 1)  # gate, up (or fc)
    add((d, ffn))  # down
    return {s: k * layers for s, k in per_layer.items()}


MODELS: Dict[str, Dict[Shape, int]] = {
    "GPT-2-small (12×768)": transformer(12, 768, 768, 3072, gated=False),
    "1B (16×2048, GQA 512, FFN 8192)": transformer(16, 2048, 512, 8192, gated=True),
    "8B (32×4096, GQA 1024, FFN 14336)": transformer(32, 4096, 1024, 14336, gated=True),
    "70B (80×8192, GQA 1024, FFN 28672)": transformer(80, 8192, 1024, 28672, gated=True),
}
WORLDS = (8, 64, 1024)
NS_STEPS = 5
BF16 = 2


def ns_flops(m: int, n: int) -> int:
    a, b = min(m, n), max(m, n)
    return NS_STEPS * (4 * a * a * b + 2 * a**3)


def row(model: str, shapes: Dict[Shape, int], world: int, link: float, tflops: float) -> Dict[str, object]:
    items = list(shapes.items())
    owners = assign_owners([k for _, k in items], [newton_schulz_cost(*s) for s, _ in items], world)
    sent = 0
    flops = [0] * world
    total_flops = 0
    params_bytes = 0
    for ((m, n), count), slots in zip(items, owners):
        block = -(-m // world)
        g = ExchangeGroup(
            kind="rows", m=m, n=n, dtype=torch.bfloat16, device=torch.device("cuda"), matrices=(), params=(),
            world_size=world, rank=0, owned=tuple(tuple(o) for o in slots), slots=-(-count // world), block_rows=block,
        )
        sent += g.bytes_sent(BF16, 0)  # Muon's shape scale: no scale payload
        for d, owned in enumerate(slots):
            flops[d] += len(owned) * ns_flops(m, n)
        total_flops += count * ns_flops(m, n)
        params_bytes += count * m * n * BF16
    rs = (world - 1) * params_bytes // world
    busiest = max(flops)
    return {
        "model": model,
        "W": world,
        "matrices": sum(shapes.values()),
        "exchange MB/rank": sent / 1e6,
        "FSDP RS MB/rank": rs / 1e6,
        "exchange / RS": sent / rs,
        "NS GFLOP/rank": busiest / 1e9,
        "ideal GFLOP/rank": total_flops / world / 1e9,
        "exchange ms": sent / (link * 1e9) * 1e3,
        "NS ms": busiest / (tflops * 1e12) * 1e3,
    }


def table(link: float, tflops: float) -> List[Dict[str, object]]:
    return [row(name, shapes, w, link, tflops) for name, shapes in MODELS.items() for w in WORLDS]


def markdown(rows: List[Dict[str, object]]) -> str:
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            v = r[k]
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--link-gbs", type=float, default=50.0, help="per-rank link bandwidth, GB/s (assumed)")
    ap.add_argument("--tflops", type=float, default=400.0, help="effective bf16 matmul rate, TFLOP/s (assumed)")
    args = ap.parse_args()
    print(f"computed, not measured; link {args.link_gbs:g} GB/s per rank, matmul {args.tflops:g} TFLOP/s, "
          f"bf16 payload, {NS_STEPS} NS steps, Muon shape scale")
    print(markdown(table(args.link_gbs, args.tflops)))


if __name__ == "__main__":
    main()
