"""Records what ``polar="svd"`` does under ``mode="reduce-overhead"`` on CUDA; not a test.

cuSOLVER's SVD checks convergence with a device-host sync, so the README lists SVD as not belonging in
a CUDA graph; this script writes what a given torch actually does (CUDA-graph skips and their reasons,
graphs recorded, or the error raised during capture) to ``$FPOLAR_RESULTS_DIR/compile_reduce_overhead_svd.json``:

    FPOLAR_RESULTS_DIR=results/compile python compile_tests/measure_reduce_overhead_svd.py
"""

from __future__ import annotations

import os
import sys

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fpolar  # noqa: E402
from compile_results import record  # noqa: E402
from fpolar.compile import mark_static  # noqa: E402
from test_cuda_graphs import DEV, CudagraphLog, hparams, recorded_cudagraphs  # noqa: E402


def main() -> None:
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return
    torch.manual_seed(0)
    params = [torch.randn(64, 128, device=DEV), torch.randn(128, 64, device=DEV)]
    grads = [torch.randn_like(p) for p in params]
    hp, _ = hparams(polar="svd")
    state = fpolar.init_state(params, hp)
    mark_static(params, grads, state, hp)
    counters.clear()
    torch._dynamo.reset()
    ro = torch.compile(fpolar.polargrad_step, mode="reduce-overhead", fullgraph=True)
    error = None
    with CudagraphLog() as log:
        try:
            for _ in range(5):
                torch.compiler.cudagraph_mark_step_begin()
                ro(params, grads, state, hp)
            torch.cuda.synchronize()
        except Exception as e:
            error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    data = dict(cudagraph_skips=int(counters["inductor"]["cudagraph_skips"]), skip_messages=log.skips,
                unique_graphs=int(counters["stats"]["unique_graphs"]), recorded_cudagraphs=recorded_cudagraphs(),
                error=error)
    record("reduce_overhead_svd", data)
    print(data)


if __name__ == "__main__":
    main()
