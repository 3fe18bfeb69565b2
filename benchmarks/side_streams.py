"""The drop-in's captured step with its independent pieces side by side (``fpolar.side_streams``) or
in order, on GPT-2-small's parameters: device ms per ``step()`` and what the capture reserves.

Per lane count (1 = in order, the step as before), a fresh GPT-2-small (fp32 params, fixed random
grads, so the graph replays) and ``fpolar.optim.Muon(param_groups(model))``: three steps (warm-up,
capture, replay), then the median ms of ``step()`` (CUDA events, ``benchmarks/common.bench_ms``;
the step is device-bound: its host part is the checks' memo and one replay), and the growth of
``torch.cuda.memory_reserved()`` over the capture, after the eager warm-up step (the graph's pool). Also the polar groups alone
(hidden matrices only) and the AdamW groups alone, in order, for the sum the overlap is held against.

    python3 benchmarks/side_streams.py [--lanes 1 2 3 4 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fpolar.optim  # noqa: E402
import fpolar.side_streams as side_streams  # noqa: E402
from common import bench_ms, environment, print_header, save_json  # noqa: E402
from gpt import GPT, GPT2_SMALL, is_hidden_matrix  # noqa: E402

MIB = 2**20


def optimizer(model: torch.nn.Module, which: str) -> torch.optim.Optimizer:
    hidden = [p for n, p in model.named_parameters() if is_hidden_matrix(n, p)]
    rest = [p for n, p in model.named_parameters() if not is_hidden_matrix(n, p)]
    groups: List[Dict[str, object]] = []
    if which in ("both", "polar"):
        groups.append({"params": hidden, "algorithm": "polargrad"})
    if which in ("both", "adamw"):
        groups.append({"params": rest, "algorithm": "adamw", "lr": 3e-4, "weight_decay": 0.1})
    return fpolar.optim.Muon(groups, lr=0.02, weight_decay=0.01)


def measure(lanes: int, which: str, device: torch.device) -> Dict[str, object]:
    side_streams.MAX_LANES = lanes
    torch.manual_seed(0)
    model = GPT(GPT2_SMALL).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt = optimizer(model, which)
    opt.step()  # the eager warm-up: state made, workspace cached in the ordinary pool
    torch.cuda.synchronize()
    before = torch.cuda.memory_reserved(device)
    opt.step()  # the capture: its workspace comes from the graph's own pool
    opt.step()
    torch.cuda.synchronize()
    pool = (torch.cuda.memory_reserved(device) - before) / MIB
    ms = bench_ms(opt.step, device, warmup_ms=50, rep_ms=400)
    captures = opt._program.captures if opt._program is not None else None
    del opt, model
    gc.collect()
    torch.cuda.empty_cache()
    return {"lanes": lanes, "groups": which, "ms": ms, "graph_pool_mib": pool, "captures": captures}


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lanes", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device("cuda")
    env = environment(device)
    print_header(env)
    rows = [measure(1, "polar", device), measure(1, "adamw", device)]
    rows += [measure(k, "both", device) for k in args.lanes]
    rows += [measure(k, "polar", device) for k in args.lanes if k > 1]
    print(f"{'groups':<8} {'lanes':>5} {'ms/step':>9} {'graph pool MiB':>15} {'captures':>9}")
    for r in rows:
        print(f"{r['groups']:<8} {r['lanes']:>5} {r['ms']:>9.3f} {r['graph_pool_mib']:>15.1f} {str(r['captures']):>9}")
    save_json(args.json, {"env": env, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
