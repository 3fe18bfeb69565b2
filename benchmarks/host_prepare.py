"""Host time of ``fpolar.optim``'s per-step preparation (validation, hparams, lr refill) on GPT-2-small.

With an eager model the device waits on the host, so the host's milliseconds per ``step()`` are the
user's. ``step()`` = ``_prepare`` (every group's inputs checked before any steps, lr tensors refilled)
+ the math (a CUDA-graph replay by default on CUDA). This times ``_prepare`` alone, on the CPU, for
the GPT-2-small parameter set (149 params: 48 Muon matrices, the rest AdamW):

- "checked once": the default; inputs that read as the last ones that passed are not checked again
  (``fpolar.optim.checked_inputs``);
- "checked every step": the same with the fingerprint disabled (every group's checks run every step),
  the baseline of the same run;
- the functional steps' own checks over every group (``check_step_inputs`` of ``polargrad_step`` and
  ``adamw_step``): what the drop-in's eager math (``compiled=False``, and the warm-up and capture
  steps of its CUDA graph) ran a second time before it called the steps' ``*_prechecked`` forms;
- the CUDA-graph program's own per-step host work after ``_prepare`` (``StepProgram``: the stepping
  groups, the layout key, the grad-address check, the small grads' foreach copy), with a stand-in
  for the graph whose replay does nothing: what the drop-in adds to a replay on top of ``_prepare``.

    python benchmarks/host_prepare.py [--steps 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fpolar.optim as fo  # noqa: E402
import fpolar.optim.base as base  # noqa: E402
from gpt import GPT, GPTConfig  # noqa: E402


def prepare_ms(opt, params, steps: int) -> float:
    """Median host ms of ``opt._prepare()`` over ``steps`` calls, the grads reassigned before each (the
    same tensors: their metadata, not their identity or values, is what the checks read)."""
    grads = [p.grad for p in params]
    times = []
    for _ in range(steps):
        for p, g in zip(params, grads):
            p.grad = g
        t0 = time.perf_counter()
        opt._prepare()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def functional_checks_ms(opt, steps: int) -> float:
    """Median host ms of ``check_step_inputs`` of every group's functional step (polargrad or adamw)."""
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        for rt in opt._runtime:
            grads = [p.grad for p in rt.params]
            if rt.algorithm == "polargrad":
                base.check_polargrad_inputs(rt.params, grads, rt.state, rt.hparams)
            else:
                base.check_adamw_inputs(rt.params, grads, rt.state, rt.hparams)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


class _NoReplay:
    """Stands in for ``torch.cuda.CUDAGraph``: captures and replays nothing (host time only)."""

    def replay(self) -> None:
        pass


def program_ms(opt, params, steps: int) -> float:
    """Median host ms of the CUDA-graph program's call after ``_prepare`` on replay steps (the same grad
    tensors each step, so the address check passes), the graph stood in by ``_NoReplay``."""
    import fpolar.optim.compiled_step as compiled_step

    saved = (torch.cuda.CUDAGraph, torch.cuda.graph_pool_handle, torch.cuda.is_current_stream_capturing,
             compiled_step.capture_keeping_cache)
    torch.cuda.CUDAGraph, torch.cuda.graph_pool_handle = _NoReplay, lambda: None
    torch.cuda.is_current_stream_capturing = lambda: False
    compiled_step.capture_keeping_cache = lambda graph, record, device, pool=None: None
    try:
        program = compiled_step.StepProgram("cuda_graph")
        times = []
        with torch.no_grad():
            for k in range(steps + 2):  # a warm-up step (eager math) and a capture first
                opt._prepare()
                t0 = time.perf_counter()
                program(opt)
                if k >= 2:
                    times.append((time.perf_counter() - t0) * 1e3)
        assert program.captures == 1 and program.replays == steps + 1, (program.captures, program.replays)
        return statistics.median(times)
    finally:
        (torch.cuda.CUDAGraph, torch.cuda.graph_pool_handle, torch.cuda.is_current_stream_capturing,
         compiled_step.capture_keeping_cache) = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = GPT(GPTConfig())
    params = list(model.parameters())
    groups = fo.param_groups(model, adamw={"lr": 1e-3, "betas": (0.9, 0.95), "weight_decay": 0.0})
    opt = fo.Muon(groups, lr=0.02, weight_decay=0.0, momentum=0.95, nesterov=True, ns_steps=5, compiled=False)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()  # builds the state
    once = prepare_ms(opt, params, args.steps)
    real = base.step_inputs_fingerprint
    base.step_inputs_fingerprint = lambda *a, **k: None  # every group checked every step
    try:
        every = prepare_ms(opt, params, args.steps)
    finally:
        base.step_inputs_fingerprint = real
    functional = functional_checks_ms(opt, args.steps)
    program = program_ms(opt, params, args.steps)
    print(f"GPT-2-small, {len(params)} params, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"_prepare, checked once:       {once:.3f} ms per step")
    print(f"_prepare, checked every step: {every:.3f} ms per step ({every / once:.1f}x)")
    print(f"the functional steps' checks, every group: {functional:.3f} ms per step")
    print(f"the CUDA-graph program after _prepare, replay stood in: {program:.3f} ms per step")


if __name__ == "__main__":
    main()
