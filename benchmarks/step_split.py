"""Where a drop-in optimizer's train step spends its device time: forward + backward, the optimizer's
``step()``, ``zero_grad()``, each timed inside GPT-2-small's loop.

``benchmarks/train.py`` gives the whole step and the overhead over AdamW-only; this splits that step
with CUDA events recorded between its phases, so a recipe whose optimizer is faster alone but whose
train step is not shows which phase grew: the step itself (say, its kernels slowed by what runs
beside them) or forward + backward around it. Recipes: fused AdamW on everything (the floor), the
drop-in ``fpolar.optim.Muon(param_groups(model))`` with its groups in order, and the same with 4
lanes (``fpolar.side_streams.lanes(4)`` during each step). Batch 8 × 1024, bf16 autocast, the model
compiled (``--eager-model``: not), median ms of each phase over ``--steps`` steps after the warm-up.

    python3 benchmarks/step_split.py [--steps 30] [--eager-model] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
from typing import Callable, ContextManager, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fpolar.optim as fo  # noqa: E402
import fpolar.side_streams as side_streams  # noqa: E402
from common import environment, print_header, save_json  # noqa: E402
from gpt import GPT, GPT2_SMALL, lm_loss, random_batch  # noqa: E402

PHASES = ("forward+backward", "step", "zero_grad", "whole")


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0, fused=True)


def drop_in(model: torch.nn.Module) -> torch.optim.Optimizer:
    groups = fo.param_groups(model, adamw={"lr": 1e-3, "betas": (0.9, 0.95), "weight_decay": 0.0})
    return fo.Muon(groups, lr=0.02, weight_decay=0.0, momentum=0.95, nesterov=True, ns_steps=5)


RECIPES: Dict[str, tuple] = {
    "AdamW fused, everything (the floor)": (adamw, contextlib.nullcontext),
    "drop-in, groups in order": (drop_in, lambda: side_streams.lanes(1)),
    "drop-in, 4 lanes": (drop_in, lambda: side_streams.lanes(4)),
}


def measure(build: Callable, setting: Callable[[], ContextManager[None]], compile_model: bool, steps: int,
            warmup: int) -> Dict[str, object]:
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = GPT(GPT2_SMALL).to(device)
    forward = torch.compile(model) if compile_model else model
    idx, targets = random_batch(GPT2_SMALL, 8, 1024, device)
    opt = build(model)
    marks: List[List[torch.cuda.Event]] = []
    for k in range(warmup + steps):
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        events[0].record()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = lm_loss(forward, idx, targets)
        loss.backward()
        events[1].record()
        with setting():
            opt.step()
        events[2].record()
        opt.zero_grad()
        events[3].record()
        if k >= warmup:
            marks.append(events)
    torch.cuda.synchronize()
    phases = {
        "forward+backward": [e[0].elapsed_time(e[1]) for e in marks],
        "step": [e[1].elapsed_time(e[2]) for e in marks],
        "zero_grad": [e[2].elapsed_time(e[3]) for e in marks],
        "whole": [a[0].elapsed_time(b[0]) for a, b in zip(marks, marks[1:])],
    }
    program = getattr(opt, "_program", None)
    row: Dict[str, object] = {p: statistics.median(v) for p, v in phases.items()}
    if program is not None and hasattr(program, "recaptures"):
        row["cuda_graph"] = {"captures": program.captures, "recaptures": program.recaptures,
                             "graphs": program.graphs, "copied_grads": program.copied_grads}
    row["loss"] = float(loss.detach())
    del opt, model, forward
    gc.collect()
    torch.cuda.empty_cache()
    return row


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--eager-model", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    env = environment(torch.device("cuda"))
    print_header(env)
    print(f"GPT-2-small, batch 8 × 1024, bf16 autocast, model {'eager' if args.eager_model else 'compiled'}; "
          f"median device ms of each phase over {args.steps} steps")
    print(f"{'recipe':<38}" + "".join(f"{p:>18}" for p in PHASES) + "  (over the floor: step, whole)")
    rows: Dict[str, Dict[str, object]] = {}
    for name, (build, setting) in RECIPES.items():
        row = measure(build, setting, not args.eager_model, args.steps, args.warmup)
        rows[name] = row
        floor = rows[next(iter(RECIPES))]
        extra = f"  (+{row['step'] - floor['step']:.2f}, +{row['whole'] - floor['whole']:.2f})"
        print(f"{name:<38}" + "".join(f"{row[p]:>18.3f}" for p in PHASES) + extra
              + (f"  {row['cuda_graph']}" if "cuda_graph" in row else ""), flush=True)
    save_json(args.json, {"environment": env, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
