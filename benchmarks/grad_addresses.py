"""Where a train loop's grads land, step by step, beside the drop-in's CUDA graph: which params' grads
moved at which step, and when the graph was captured again.

The drop-in's graph reads the grads at the addresses it was captured with; when they come back
elsewhere it captures again, and after ``RECAPTURES_BEFORE_COPYING`` such moves it copies each step's
grads in (``fpolar/optim/compiled_step.py``). This runs GPT-2-small's usual loop (forward with bf16
autocast, ``loss.backward()``, ``step()``, ``zero_grad()``) with ``fpolar.optim.Muon(param_groups
(model))`` and prints, per step, the program's captures / recaptures / graphs / grads copied in
each step (the small ones, or all once it stopped following) and the names of the
params whose grad address changed since the step before (first few names, and how many), and
whether all of them are back where an earlier step had them (a cycle the graphs can follow).

    python3 benchmarks/grad_addresses.py [--steps 8] [--compile-model] [--device cuda]
    python3 benchmarks/grad_addresses.py --device cpu --small     # a smoke run (no graph off CUDA)
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fpolar.optim as fo  # noqa: E402
from fpolar.optim.compiled_step import SMALL_GRAD_BYTES  # noqa: E402
from gpt import GPT, GPT2_SMALL, GPTConfig, lm_loss, random_batch  # noqa: E402


def moved(before: Dict[str, int], now: Dict[str, int]) -> List[str]:
    """Names whose address differs between two steps' ``{name: data_ptr}`` (a name new to ``now``
    counts as moved)."""
    return [n for n, ptr in now.items() if before.get(n) != ptr]


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile-model", action="store_true")
    ap.add_argument("--small", action="store_true", help="a 2-layer, d=64 model (smoke runs)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cfg = GPTConfig(layers=2, d_model=64, heads=2, vocab=256, block=64) if args.small else GPT2_SMALL
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    forward = torch.compile(model) if args.compile_model else model
    idx, targets = random_batch(cfg, 2 if args.small else 8, 32 if args.small else 1024, device)
    opt = fo.Muon(fo.param_groups(model), lr=0.02, weight_decay=0.0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    names = [n for n, _ in model.named_parameters()]
    large = {n for n, p in model.named_parameters() if p.numel() * p.element_size() > SMALL_GRAD_BYTES}
    last: Dict[str, int] = {}
    history: List[Dict[str, int]] = []
    print(f"{'step':>4} {'captures':>8} {'recaptures':>10} {'graphs':>6} {'copied':>6}  grads moved since the step before")
    for k in range(args.steps):
        with autocast:
            loss = lm_loss(forward, idx, targets)
        loss.backward()
        now = {n: p.grad.data_ptr() for n, p in zip(names, model.parameters()) if p.grad is not None}
        opt.step()
        opt.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        prog = opt._program
        graph = prog is not None and hasattr(prog, "recaptures")
        counts = (prog.captures, prog.recaptures, prog.graphs, prog.copied_grads) if graph else ("—",) * 4
        gone = moved(last, now) if last else []
        shown = ", ".join(gone[:4]) + (f", … ({len(gone)} in all)" if len(gone) > 4 else "")
        seen = f" (back where step {history.index(now)} had them)" if gone and now in history else ""
        followed = sum(n in large for n in gone)
        seen += f" [{followed} of them over SMALL_GRAD_BYTES, followed]" if gone else ""
        print(f"{k:>4} {counts[0]!s:>8} {counts[1]!s:>10} {counts[2]!s:>6} {counts[3]!s:>6}  {shown or '—'}{seen}", flush=True)
        history.append(now)
        last = now
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
