"""GPU memory of one optimizer step on the GPT-2-small matrix set, fpolar against torch.optim.Muon.

Per recipe, fp32 params with grads from a backward (loss Σ⟨W, R⟩, so every grad is a fresh tensor),
``zero_grad()`` (set_to_none=True) between steps, 5 steps:
  * step workspace: ``torch.cuda.max_memory_allocated()`` during the last ``step()`` minus the
    allocated memory just before it (what the step itself allocates on top of params, grads, state);
  * iteration peak: the peak over the last zero_grad + backward + step minus params + state + one
    set of grads (so a second set of grads kept alive shows here);
  * reserved growth: ``torch.cuda.memory_reserved()`` after minus before the 5 steps (a CUDA graph's
    private pool is reserved, not allocated);
  * step ms: median wall time of 20 more ``step()`` calls on the same grads, synchronized after each
    (eagerly the host's time is the user's time).

``--chunk-sweep`` measures the eager fpolar Muon step again at several ``fpolar.polargrad.
CHUNK_ELEMENTS`` bounds (how many elements of a shape group go through the eager step at once): the
workspace it bounds against the speed the smaller batches cost.

    python3 benchmarks/step_memory.py [--json out.json] [--chunk-sweep]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, Dict, List

import torch

import fpolar
import fpolar.optim

GPT2_SMALL = [((2304, 768), 12), ((768, 768), 12), ((3072, 768), 12), ((768, 3072), 12)]
MIB = 2**20


def make_params() -> List[torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    return [
        (torch.randn(r, c, device="cuda", generator=gen) * 0.02).requires_grad_()
        for (r, c), b in GPT2_SMALL for _ in range(b)
    ]


def recipes() -> Dict[str, Callable[[List[torch.Tensor]], torch.optim.Optimizer]]:
    muon = dict(lr=0.02, weight_decay=0.0)
    out = {
        "fpolar.optim.Muon (CUDA graph, default)": lambda ps: fpolar.optim.Muon(ps, **muon),
        "fpolar.optim.Muon (eager)": lambda ps: fpolar.optim.Muon(ps, compiled=False, **muon),
        "fpolar PolarGrad (eager)": lambda ps: fpolar.optim.PolarGrad(ps, lr=1e-3, weight_decay=0.0, compiled=False),
    }
    if hasattr(torch.optim, "Muon"):
        out["torch.optim.Muon"] = lambda ps: torch.optim.Muon(ps, **muon)
    return out


def chunked(bound: int) -> Callable[[List[torch.Tensor]], torch.optim.Optimizer]:
    """The eager drop-in whose steps run with ``CHUNK_ELEMENTS = bound`` (set around each step)."""
    import fpolar.polargrad as polargrad_module

    class Chunked(fpolar.optim.Muon):
        def step(self, closure=None):  # type: ignore[override]
            saved = polargrad_module.CHUNK_ELEMENTS
            polargrad_module.CHUNK_ELEMENTS = bound
            try:
                return super().step(closure)
            finally:
                polargrad_module.CHUNK_ELEMENTS = saved

    return lambda ps: Chunked(ps, lr=0.02, weight_decay=0.0, compiled=False)


def measure(build) -> Dict[str, float]:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    params = make_params()
    probes = [torch.randn_like(p) for p in params]
    opt = build(params)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    reserved0 = torch.cuda.memory_reserved()
    state_bytes = 0.0
    result: Dict[str, float] = {}
    for k in range(5):
        if k == 4:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        opt.zero_grad()
        loss = sum((p * r).sum() for p, r in zip(params, probes))
        loss.backward()
        del loss
        torch.cuda.synchronize()
        if k == 4:
            iteration_peak = torch.cuda.max_memory_allocated()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        opt.step()
        torch.cuda.synchronize()
        if k == 4:
            result["step_workspace_mib"] = (torch.cuda.max_memory_allocated() - before) / MIB
            iteration_peak = max(iteration_peak, torch.cuda.max_memory_allocated())
        if k == 0:
            # after one step: params, one grad set, probes and the optimizer state
            state_bytes = torch.cuda.memory_allocated() - 3 * param_bytes
    times = []
    for _ in range(20):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    result["step_ms"] = statistics.median(times)
    result["state_mib"] = state_bytes / MIB
    result["iteration_extra_mib"] = (iteration_peak - 3 * param_bytes - state_bytes) / MIB
    result["reserved_growth_mib"] = (torch.cuda.memory_reserved() - reserved0) / MIB
    del opt, params, probes
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--chunk-sweep", action="store_true", help="the eager Muon step at several CHUNK_ELEMENTS")
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; GPT-2-small matrix set, fp32 params, "
          f"{sum(b for _, b in GPT2_SMALL)} matrices; MiB")
    print(f"{'recipe':<42} {'step workspace':>14} {'iteration extra':>15} {'state':>7} {'reserved growth':>15} "
          f"{'step ms':>8}")
    rows = {}
    builds = recipes()
    if args.chunk_sweep:
        for bound in (1 << 21, 1 << 22, 1 << 23, 1 << 24, 1 << 30):
            builds[f"fpolar.optim.Muon (eager), chunks ≤ 2^{bound.bit_length() - 1}"] = chunked(bound)
    for name, build in builds.items():
        try:
            r = measure(build)
        except Exception as e:  # noqa: BLE001 - report and continue
            rows[name] = {"error": repr(e)[:200]}
            print(f"{name:<42} error {repr(e)[:120]}")
            continue
        rows[name] = r
        print(f"{name:<42} {r['step_workspace_mib']:>14.1f} {r['iteration_extra_mib']:>15.1f} {r['state_mib']:>7.1f} "
              f"{r['reserved_growth_mib']:>15.1f} {r['step_ms']:>8.3f}")
    ref = rows.get("torch.optim.Muon", {}).get("step_workspace_mib")
    if ref:
        for name, r in rows.items():
            if "step_workspace_mib" in r:
                print(f"  {name}: step workspace {r['step_workspace_mib'] / ref:.2f}× torch.optim.Muon's")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
