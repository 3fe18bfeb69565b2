"""The step's glue on the GPU: torch glue (eager and compiled) vs the fused ops vs the memory time.

    python benchmarks/glue.py [--json PATH]

Per GPT-2-small shape group (12 matrices each, fp32 params, grads and momentum, bf16 polar dtype,
Muon: Nesterov, shape scale, decoupled decay) and summed over the set, the glue around the polar
factor, split in its two halves:
  * pre:  M ← β·M + (1−β)·G, V = G.lerp(M, β), Frobenius normalization, cast, transpose of tall groups
  * post: W ← (1 − lr·λ)·W − lr·s·O
for the torch glue as ``polargrad_step`` runs it (its own functions: ``momentum_ema_``,
``frobenius_normalize``, ``post_orthogonalize``), eagerly and under
torch.compile(fullgraph=True), and for the fused ops (``fpolar::momentum_polar_input``: one launch
per group for the pass over G and M, one for the scale of X; ``fpolar::scaled_update_``: one launch
per group). "memory" is the time to move the bytes each half must move (pre: read G
and M, write M and the bf16 X = 14 B per element; post: read O (bf16) and W, write W = 10 B) at
4.3e12 B/s, the copy bandwidth measured on the H200. Times: median device ms of CUDA-graph replays
(triton.testing.do_bench_cudagraph), as a captured or compiled step runs the glue (eagerly, a few
small launches are bound by the host, which would be timed instead). Then a sweep of the kernels' tile
over the whole set (the launchers alone, one launch per group), the data behind
``elementwise_tile_config``, and the default tile with one launch per tensor (the launchers' fallback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fpolar.kernels  # noqa: E402,F401  (registers torch.ops.fpolar)
from fpolar import PolarGradHParams, init_state  # noqa: E402
from fpolar.polar.frobenius import frobenius_normalize  # noqa: E402
from fpolar.polargrad import Orthogonalized, live_batch, momentum_ema_, post_orthogonalize  # noqa: E402

from common import cuda_graph_ms  # noqa: E402  (benchmarks/, the script's own folder)

GPT2_SMALL: List[Tuple[Tuple[int, int], int]] = [((2304, 768), 12), ((768, 768), 12), ((3072, 768), 12), ((768, 3072), 12)]
BANDWIDTH = 4.3e12  # B/s, measured copy bandwidth of the H200 (docs: DESIGN "Known facts")
PRE_BYTES, POST_BYTES = 14, 10  # per element, see module docstring


def bench(fn) -> float:
    """Median device ms of ``fn`` as CUDA-graph replays (the fused ops are a few launches per group)."""
    return cuda_graph_ms(fn, rep_ms=60)


def group_case(shape: Tuple[int, int], count: int):
    m, n = shape
    params = [torch.randn(m, n, device="cuda") * 0.02 for _ in range(count)]
    grads = [torch.randn(m, n, device="cuda") for _ in range(count)]
    hp = PolarGradHParams(
        lr=torch.tensor(1e-4, device="cuda"), momentum=0.95, nesterov=True, scale="shape", weight_decay=0.01,
        coefficients="muon", ns_steps=5, kernels="torch",
    )
    state = init_state(params, hp)
    group, buffer = state.groups[0], state.buffers[0]
    spec = hp.polar_spec
    wide = (count, min(m, n), max(m, n))
    o = torch.randn(wide, device="cuda").to(torch.bfloat16)
    size = hp.lr * 0.2
    tall = m > n

    def torch_pre():
        batch = live_batch(group, buffer, params, grads, state)
        x = momentum_ema_(batch, batch.grads, hp)
        return frobenius_normalize(x.mT if tall else x, spec.safety, spec.eps, torch.bfloat16)

    def torch_post():
        batch = live_batch(group, buffer, params, grads, state)
        post_orthogonalize(batch, Orthogonalized(o.mT if tall else o, size), hp)

    ops = torch.ops.fpolar
    step = torch.full((), 2e-5, device="cuda")
    decay = torch.full((), 1 - 1e-6, device="cuda")

    def fused_pre():
        return ops.momentum_polar_input(buffer, grads, 0.95, True, torch.bfloat16, spec.safety, spec.eps, None)

    def fused_post():
        ops.scaled_update_(params, o, step, decay, None)

    return {"torch_pre": torch_pre, "torch_post": torch_post, "fused_pre": fused_pre, "fused_post": fused_post}


TILE_CONFIGS = [(32, 64, 4), (64, 64, 4), (64, 64, 8), (64, 128, 8), (128, 64, 8), (128, 128, 8)]


def tile_sweep() -> List[Dict[str, object]]:
    """The two launchers alone (the pre half without its scale pass) over the whole set, per tile
    (BLOCK_R, BLOCK_C, warps): the data for ``elementwise_tile_config`` on this device."""
    import triton

    from fpolar.kernels import launch_momentum_polar_input, launch_scaled_update

    cases = []
    for (m, n), count in GPT2_SMALL:
        mom = torch.randn(count, m, n, device="cuda")
        grads = [torch.randn(m, n, device="cuda") for _ in range(count)]
        params = [torch.randn(m, n, device="cuda") for _ in range(count)]
        x = torch.empty(count, min(m, n), max(m, n), device="cuda", dtype=torch.bfloat16)
        cases.append((mom, grads, params, x))
    step = torch.full((), 1e-6, device="cuda")
    decay = torch.ones((), device="cuda")
    rows = []
    # one launch per group (the offsets table) for every tile; then the default tile (None) with one
    # launch per tensor, what the launchers fall back to, to show what the single launch saves
    for (br, bc, warps), single in [(t, True) for t in TILE_CONFIGS] + [((None, None, 4), False)]:
        config = None if br is None else triton.Config({"BLOCK_R": br, "BLOCK_C": bc}, num_warps=warps, num_stages=1)
        pre = sum(
            bench(lambda c=c: launch_momentum_polar_input(c[0], c[1], c[3], 0.95, True, None, config, single_launch=single))
            for c in cases
        )
        post = sum(bench(lambda c=c: launch_scaled_update(c[2], c[3], step, decay, None, config, single_launch=single)) for c in cases)
        tile = "default" if br is None else f"{br}x{bc}"
        rows.append({"tile": tile, "warps": warps, "launches": "per group" if single else "per tensor", "pre_ms": pre, "post_ms": post})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    print(f"command: python benchmarks/glue.py | device: {torch.cuda.get_device_name()} | torch {torch.__version__}")
    rows: List[Dict[str, object]] = []
    for shape, count in GPT2_SMALL:
        fns = group_case(shape, count)
        elems = shape[0] * shape[1] * count
        row: Dict[str, object] = {"group": f"{count}x{shape[0]}x{shape[1]}"}
        for half, nbytes in (("pre", PRE_BYTES), ("post", POST_BYTES)):
            row[f"{half}_memory_ms"] = elems * nbytes / BANDWIDTH * 1e3
            row[f"{half}_torch_ms"] = bench(fns[f"torch_{half}"])
            try:
                torch._dynamo.reset()
                compiled = torch.compile(fns[f"torch_{half}"], fullgraph=True)
                row[f"{half}_torch_compiled_ms"] = bench(compiled)
            except Exception as exc:  # kept with its type: the other rows still count
                row[f"{half}_torch_compiled_ms"] = None
                row[f"{half}_compile_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            row[f"{half}_fused_ms"] = bench(fns[f"fused_{half}"])
        rows.append(row)
    keys = [k for k in rows[0] if k.endswith("_ms")]
    total: Dict[str, object] = {"group": "whole set"}
    for k in keys:
        vals = [r[k] for r in rows]
        total[k] = None if any(v is None for v in vals) else sum(vals)  # type: ignore[arg-type]
    rows.append(total)
    header = ["group", "half", "torch eager", "torch compiled", "fused", "memory", "fused/memory", "torch comp./fused"]
    print(" | ".join(header))
    for r in rows:
        for half in ("pre", "post"):
            t, c, f, mem = (r[f"{half}_{k}_ms"] for k in ("torch", "torch_compiled", "fused", "memory"))
            cells = [r["group"], half, f"{t:.4f}", "—" if c is None else f"{c:.4f}", f"{f:.4f}", f"{mem:.4f}",
                     f"{f / mem:.2f}", "—" if c is None else f"{c / f:.2f}"]
            print(" | ".join(str(x) for x in cells))
    for r in rows:
        for half in ("pre", "post"):
            if f"{half}_compile_error" in r:
                print(f"compile failed for {r['group']} {half}: {r[f'{half}_compile_error']}")
    sweep = tile_sweep()
    print("tile sweep, whole set, launchers alone (pre without its scale pass): tile | warps | launches | pre ms | post ms")
    for r in sweep:
        print(f"{r['tile']} | {r['warps']} | {r['launches']} | {r['pre_ms']:.4f} | {r['post_ms']:.4f}")
    if args.json:
        payload = {"rows": rows, "tile_sweep": sweep, "device": torch.cuda.get_device_name()}
        Path(args.json).write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
