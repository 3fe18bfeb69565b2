"""PolarGrad's nuclear scale ⟨O_b, X_b⟩_F: torch eager vs torch compiled vs ``fpolar::batched_inner`` vs memory.

    python benchmarks/nuclear.py [--json PATH]                    # CUDA, GPT-2-small matrix set
    python benchmarks/nuclear.py --device cpu --quick             # smoke run: small shapes, host timer

Per GPT-2-small shape group (12 matrices each) and summed over the set, two layouts:
  * fused: the fused glue's operands, O and X both bf16 (B, min, max) contiguous (4 B per element);
  * torch: the torch glue's, X the fp32 momentum in the parameters' orientation, O bf16 in that
    orientation (a tall group's O is the transpose view of the wide polar factor) (6 B per element).
"torch eager" is ``batched_inner_reference`` (what ``nuclear_scale`` ran before the op: upcast, product,
sum), "torch compiled" the same under torch.compile(fullgraph=True) (what it still runs there), "op"
``torch.ops.fpolar.batched_inner``; "memory" the bytes at 4.3e12 B/s (the H200's measured copy
bandwidth). Times: median device ms of CUDA-graph replays (``common.cuda_graph_ms``), as a captured or
compiled step runs them. Each op result is checked against float64 first (max error relative to
Σ|O_ij·X_ij|). Then a sweep of the kernel's tile and chunk length over the whole set (the launcher
alone), the data behind ``inner_tile_config``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fpolar.kernels as K  # noqa: E402  (registers torch.ops.fpolar)

from common import bench_ms, cuda_graph_ms, pick_device  # noqa: E402  (benchmarks/, the script's own folder)

GPT2_SMALL: List[Tuple[Tuple[int, int], int]] = [((2304, 768), 12), ((768, 768), 12), ((3072, 768), 12), ((768, 3072), 12)]
QUICK: List[Tuple[Tuple[int, int], int]] = [((96, 64), 3), ((64, 160), 2)]
BANDWIDTH = 4.3e12  # B/s, measured copy bandwidth of the H200 (docs: DESIGN "Known facts")
LAYOUT_BYTES = {"fused": 4, "torch": 6}  # per element: see the module docstring
# (BLOCK_R, BLOCK_C, TILES_PER_CHUNK, warps)
SWEEP = [(64, 64, 8, 4), (64, 64, 8, 8), (64, 64, 4, 4), (64, 64, 16, 4), (64, 64, 32, 4), (32, 128, 8, 4), (64, 128, 8, 8), (128, 64, 8, 8)]


def operands(shape: Tuple[int, int], count: int, layout: str, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    m, n = shape
    tall = m > n
    wide = (torch.randn((count, min(m, n), max(m, n)), device=device) + 0.25).bfloat16()
    if layout == "fused":
        return wide, torch.randn(wide.shape, device=device).bfloat16()
    return (wide.mT if tall else wide), torch.randn((count, m, n), device=device)


def relative_error(out: torch.Tensor, o: torch.Tensor, x: torch.Tensor) -> float:
    terms = o.double() * x.double()
    return ((out.double() - terms.sum(dim=(-2, -1))).abs() / terms.abs().sum(dim=(-2, -1))).max().item()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes, no compile, no sweep (a smoke run)")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        bench: Callable[[Callable[[], object]], float] = lambda fn: cuda_graph_ms(fn, rep_ms=60)  # noqa: E731
        name = torch.cuda.get_device_name(device)
    else:
        bench = lambda fn: bench_ms(fn, device, warmup_ms=2, rep_ms=10)  # noqa: E731
        name = "cpu"
    print(f"command: python {' '.join(['benchmarks/nuclear.py'] + sys.argv[1:])} | device: {name} | torch {torch.__version__}")
    groups = QUICK if args.quick else GPT2_SMALL
    rows: List[Dict[str, object]] = []
    for layout in ("fused", "torch"):
        for shape, count in groups:
            o, x = operands(shape, count, layout, device)
            row: Dict[str, object] = {"layout": layout, "group": f"{count}x{shape[0]}x{shape[1]}"}
            row["op_rel_err"] = relative_error(K.batched_inner(o, x), o, x)
            row["memory_ms"] = o.numel() * LAYOUT_BYTES[layout] / BANDWIDTH * 1e3
            row["torch_ms"] = bench(lambda: K.batched_inner_reference(o, x))
            row["torch_compiled_ms"] = None
            if not args.quick:
                try:
                    torch._dynamo.reset()
                    compiled = torch.compile(K.batched_inner_reference, fullgraph=True)
                    row["torch_compiled_ms"] = bench(lambda: compiled(o, x))
                except Exception as exc:  # kept with its type: the other columns still count
                    row["compile_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            row["op_ms"] = bench(lambda: torch.ops.fpolar.batched_inner(o, x))
            rows.append(row)
        total: Dict[str, object] = {"layout": layout, "group": "whole set"}
        part = [r for r in rows if r["layout"] == layout]
        for k in ("memory_ms", "torch_ms", "torch_compiled_ms", "op_ms"):
            vals = [r[k] for r in part]
            total[k] = None if any(v is None for v in vals) else sum(vals)  # type: ignore[arg-type]
        total["op_rel_err"] = max(r["op_rel_err"] for r in part)  # type: ignore[type-var]
        rows.append(total)
    print("layout | group | torch eager | torch compiled | op | memory | op/memory | torch eager/op | op err (rel. Σ|terms|)")
    for r in rows:
        c = r["torch_compiled_ms"]
        cells = [r["layout"], r["group"], f"{r['torch_ms']:.4f}", "—" if c is None else f"{c:.4f}", f"{r['op_ms']:.4f}",
                 f"{r['memory_ms']:.4f}", f"{r['op_ms'] / r['memory_ms']:.2f}", f"{r['torch_ms'] / r['op_ms']:.2f}",
                 f"{r['op_rel_err']:.1e}"]
        print(" | ".join(str(v) for v in cells))
    for r in rows:
        if "compile_error" in r:
            print(f"compile failed for {r['layout']} {r['group']}: {r['compile_error']}")
    sweep = [] if args.quick or not on_cuda else tile_sweep(device, bench)
    if sweep:
        print("sweep, whole set, launcher alone: BLOCK_R x BLOCK_C | tiles per chunk | warps | fused ms | torch ms")
        for s in sweep:
            print(f"{s['tile']} | {s['tiles_per_chunk']} | {s['warps']} | {s['fused_ms']:.4f} | {s['torch_ms']:.4f}")
    bad = [r for r in rows if r["op_rel_err"] > 2e-6]  # type: ignore[operator]
    for r in bad:
        print(f"ERROR: op error {r['op_rel_err']:.2e} > 2e-6 for {r['layout']} {r['group']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "sweep": sweep, "device": name}, indent=1))
    return 1 if bad else 0


def tile_sweep(device: torch.device, bench: Callable[[Callable[[], object]], float]) -> List[Dict[str, object]]:
    import triton

    cases = {layout: [operands(s, c, layout, device) for s, c in GPT2_SMALL] for layout in LAYOUT_BYTES}
    outs = [torch.empty(c, device=device) for _, c in GPT2_SMALL]
    rows = []
    for br, bc, tiles, warps in SWEEP:
        config = triton.Config({"BLOCK_R": br, "BLOCK_C": bc, "TILES_PER_CHUNK": tiles}, num_warps=warps, num_stages=1)
        row: Dict[str, object] = {"tile": f"{br}x{bc}", "tiles_per_chunk": tiles, "warps": warps}
        for layout, ops in cases.items():
            row[f"{layout}_ms"] = sum(
                bench(lambda o=o, x=x, out=out: K.launch_batched_inner(o, x, out, config)) for (o, x), out in zip(ops, outs)
            )
        rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
