"""Byte and op accounting of one optimizer step on the GPT-2-small matrix set, without a GPU.

For each recipe, one step (after a first step that builds the state) runs inside ``OpLedger``
(``benchmarks/op_ledger.py``): every aten op, the bytes it reads and writes, the storages it
allocates, the copies among them, and the peak of the step's own live storages (its workspace,
params / grads / state excluded). The meta device (default) runs no math, so the whole set takes
seconds; its ops and sizes are those of a CPU run (the iteration dtype defaults to bfloat16, as on
CUDA). ``--device cpu`` runs the real math (minutes on two cores).

    PYTHONPATH=$PWD python benchmarks/step_traffic.py                 # summary table
    PYTHONPATH=$PWD python benchmarks/step_traffic.py --ops --json out.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Callable, Dict, List, Tuple

import torch

import fpolar
import fpolar.optim
from op_ledger import OpLedger

# (param shape, count): the hidden matrices of GPT-2-small (as in benchmarks/polar_step.py)
GPT2_SMALL: List[Tuple[Tuple[int, int], int]] = [((2304, 768), 12), ((768, 768), 12), ((3072, 768), 12), ((768, 3072), 12)]
MIB = 2**20


def make_params(shapes, device: str, dtype: torch.dtype) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    params, grads = [], []
    for (r, c), b in shapes:
        for _ in range(b):
            if device == "meta":
                params.append(torch.empty(r, c, device="meta", dtype=dtype))
                grads.append(torch.empty(r, c, device="meta", dtype=dtype))
            else:
                params.append((torch.randn(r, c, generator=gen) * 0.02).to(dtype))
                grads.append(torch.randn(r, c, generator=gen).to(dtype))
    return params, grads


def recipes(polar_dtype: torch.dtype, device: str) -> Dict[str, Callable[[List[torch.Tensor], List[torch.Tensor]], Callable[[], None]]]:
    """name -> builder(params, grads) -> one step (the builder runs the state-building first step)."""

    def functional(**kw):
        def build(params, grads):
            hp = fpolar.PolarGradHParams(lr=0.02, polar_dtype=polar_dtype, **kw)
            state = fpolar.init_state(params, hp)

            def step():
                fpolar.polargrad_step(params, grads, state, hp)

            step()
            return step

        return build

    def dropin(params, grads):
        ps = [p.requires_grad_() for p in params]
        opt = fpolar.optim.Muon(ps, lr=0.02, weight_decay=0.0, compiled=False, polar_dtype=polar_dtype)
        for p, g in zip(ps, grads):
            p.grad = g
        opt.step()
        return opt.step

    def torch_muon(params, grads):
        ps = [p.requires_grad_() for p in params]
        opt = torch.optim.Muon(ps, lr=0.02, weight_decay=0.0)
        for p, g in zip(ps, grads):
            p.grad = g
        opt.step()
        return opt.step

    out = {
        "fpolar Muon (polargrad_step)": functional(scale="shape", nesterov=True, coefficients="muon", ns_steps=5),
        "fpolar PolarGrad (polargrad_step)": functional(),
        "fpolar Muon, nonfinite=propagate": functional(
            scale="shape", nesterov=True, coefficients="muon", ns_steps=5, nonfinite="propagate"
        ),
    }
    if device != "meta":  # the optimizer refuses lr tensors on the meta device (no value to check)
        out["fpolar.optim.Muon.step (eager)"] = dropin
    if hasattr(torch.optim, "Muon"):
        out["torch.optim.Muon.step"] = torch_muon
    return out


def account(build, device: str, dtype: torch.dtype) -> OpLedger:
    params, grads = make_params(GPT2_SMALL, device, dtype)
    step = build(params, grads)
    with torch.no_grad(), OpLedger() as ledger:
        step()
    return ledger


def copy_table(ledger: OpLedger) -> List[str]:
    rows = Counter((r.name, r.shapes[0] if r.shapes else ()) for r in ledger.copies())
    return [f"    {n:>3} × {name} → {shape}" for (name, shape), n in sorted(rows.items(), key=lambda kv: -kv[1])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="meta", choices=["meta", "cpu"])
    ap.add_argument("--polar-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--ops", action="store_true", help="also print each recipe's op counts")
    ap.add_argument("--json", help="write the summaries here")
    args = ap.parse_args()
    polar_dtype = getattr(torch, args.polar_dtype)
    results = {}
    print(f"GPT-2-small matrix set, fp32 params, iteration in {args.polar_dtype}, device {args.device}")
    print(f"{'recipe':<36} {'ops':>5} {'copies':>6} {'copy MiB':>9} {'read MiB':>9} {'written MiB':>11} "
          f"{'alloc MiB':>9} {'peak live MiB':>13}")
    for name, build in recipes(polar_dtype, args.device).items():
        ledger = account(build, args.device, torch.float32)
        s = ledger.summary()
        results[name] = {**s, "copy_ops": [(r.name, r.shapes) for r in ledger.copies()]}
        print(f"{name:<36} {s['ops']:>5} {s['copies']:>6} {s['copy_bytes'] / MIB:>9.1f} {s['read_bytes'] / MIB:>9.1f} "
              f"{s['written_bytes'] / MIB:>11.1f} {s['allocated_bytes'] / MIB:>9.1f} {s['peak_live_bytes'] / MIB:>13.1f}")
        for line in copy_table(ledger):
            print(line)
        if args.ops:
            print("    ops: " + ", ".join(f"{k} {v}" for k, v in sorted(s["op_counts"].items(), key=lambda kv: -kv[1])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
