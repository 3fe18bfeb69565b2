"""Compile a whole train step: the same model trained eagerly, under torch.compile, and (on CUDA) as a
captured CUDA graph and under mode="reduce-overhead"; prints loss, ms/step and the largest parameter
difference from the eager run.

    python examples/compile_train_step.py                 # CPU: eager vs torch.compile (Inductor)
    python examples/compile_train_step.py --device cuda   # + CUDA graph capture, + reduce-overhead

The first compiled step includes compilation (tens of seconds on a small CPU); ms/step is measured
after it.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fpolar
from fpolar.compile import capture_cuda_graph, make_train_step


def loss_fn(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x), y)


def make_data(steps: int, batch: int, device: str) -> Tuple[Tensor, Tensor]:
    """Gaussian inputs labelled by a fixed random linear teacher: learnable, no download."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(steps, batch, 128, generator=gen)
    y = (x @ torch.randn(128, 10, generator=gen)).argmax(-1)
    return x.to(device), y.to(device)


def make_hparams(device: str, kernels: str = "auto") -> Tuple[fpolar.PolarGradHParams, fpolar.AdamWHParams]:
    # 0-d tensors on the device: a schedule changes them with fill_, and neither a compiled step nor a
    # CUDA graph needs to know (no recompile, no re-capture).
    polar = fpolar.PolarGradHParams(
        lr=torch.tensor(0.03, device=device), weight_decay=torch.tensor(0.01, device=device), kernels=kernels
    )
    adamw = fpolar.AdamWHParams(lr=torch.tensor(3e-3, device=device), weight_decay=torch.tensor(0.01, device=device))
    return polar, adamw


def train(name: str, model: nn.Module, make_runner: Callable, xs: Tensor, ys: Tensor, sync: Callable[[], None]) -> Dict:
    """Run ``make_runner(step) -> callable(x, y)`` over the batches with a cosine lr schedule."""
    # reduce-overhead replays the compiled step as a CUDA graph, which its trace cannot see: ask for the
    # symmetric products on fpolar's lower-tile kernels, as "auto" does by itself in graphs fpolar captures
    polar_hp, adamw_hp = make_hparams(str(xs.device), kernels="symmetric" if name == "reduce-overhead" else "auto")
    step = make_train_step(model, loss_fn, polar_hp, adamw_hp, backward="autograd" if name in ("eager", "cuda graph") else "func")
    run = make_runner(step)
    losses: List[Tensor] = []
    t0 = None
    steps = xs.shape[0]
    for i in range(steps):
        f = 0.5 * (1 + math.cos(math.pi * i / steps))
        polar_hp.lr.fill_(0.03 * f)
        adamw_hp.lr.fill_(3e-3 * f)
        if name == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        # clone: a CUDA graph's output is overwritten by the next replay; no .item() (a host sync) per step
        losses.append(run(xs[i], ys[i]).clone())
        if i == 0:  # compile / capture happened in or before this call
            sync()
            t0 = time.perf_counter()
    sync()
    ms = (time.perf_counter() - t0) * 1e3 / max(1, steps - 1)
    return dict(name=name, losses=[float(v) for v in losses], ms=ms, params=[p.detach().clone() for p in model.parameters()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=None, help="MLP width (default 1024 on CUDA, 128 on CPU)")
    args = parser.parse_args()
    dev = args.device
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    xs, ys = make_data(args.steps, args.batch, dev)
    torch.manual_seed(0)
    h = args.hidden or (1024 if dev.startswith("cuda") else 128)
    base = nn.Sequential(nn.Linear(128, h), nn.GELU(), nn.Linear(h, h), nn.LayerNorm(h), nn.GELU(), nn.Linear(h, 10)).to(dev)

    runs = [
        ("eager", lambda step: step),
        ("torch.compile", lambda step: torch.compile(step, fullgraph=True)),
    ]
    if dev.startswith("cuda"):
        runs += [
            ("cuda graph", lambda step: capture_cuda_graph(step, xs[0], ys[0])),
            ("reduce-overhead", lambda step: torch.compile(step, mode="reduce-overhead", fullgraph=True)),
        ]
    results = [train(name, copy.deepcopy(base), make, xs, ys, sync) for name, make in runs]
    ref = results[0]
    print(f"{'run':<16} {'loss[0]':>8} {'loss[-1]':>9} {'ms/step':>8} {'max |Δparam| vs eager':>22}")
    for r in results:
        diff = max(float((a - b).abs().max()) for a, b in zip(r["params"], ref["params"]))
        print(f"{r['name']:<16} {r['losses'][0]:>8.4f} {r['losses'][-1]:>9.4f} {r['ms']:>8.2f} {diff:>22.2e}")


if __name__ == "__main__":
    main()
