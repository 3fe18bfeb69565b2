"""Does one batch of same-side work beat separate batches on this GPU? cuBLAS, bf16, CUDA-graph replays.

Prints µs per call of: m×m batched products at 768 for batch 12/24/36/48 (bmm, and baddbmm, whose
β operand costs a device copy), the two m×n products of Gram NS at 768×3072 and 768×2304, and the
5-step polar factor of the GPT-2-small matrix set with the 3072×768 (tall) and 768×3072 (wide)
groups run apart or as one batch of 24. Run from the repository root on a CUDA machine:

    python3 benchmarks/same_side_batching.py
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import cuda_graph_ms  # noqa: E402
from fpolar.coefficients import schedule_for  # noqa: E402
from fpolar.polar.gram_newton_schulz import gram_newton_schulz  # noqa: E402
from fpolar.polar.newton_schulz import newton_schulz  # noqa: E402


def replay_us(fn: Callable[[], object]) -> float:
    """Median µs of one ``fn()`` from CUDA-graph replays (``common.cuda_graph_ms``)."""
    return cuda_graph_ms(fn, rep_ms=100) * 1e3


def main() -> None:
    dev, bf16 = "cuda", torch.bfloat16
    torch.manual_seed(0)
    for batch in (12, 24, 36, 48):
        a = torch.randn(batch, 768, 768, device=dev, dtype=bf16)
        plain = replay_us(lambda: torch.bmm(a, a))
        with_beta = replay_us(lambda: torch.baddbmm(a, a, a, beta=0.5, alpha=2.0))
        print(f"bmm {batch}x768^3: {plain:.1f} us   baddbmm {with_beta:.1f} us")
    for batch, n in ((12, 3072), (24, 3072), (12, 2304)):
        x = torch.randn(batch, 768, n, device=dev, dtype=bf16)
        q = torch.randn(batch, 768, 768, device=dev, dtype=bf16)
        print(f"gram {batch}x768x{n}: {replay_us(lambda: torch.bmm(x, x.mT)):.1f} us  "
              f"apply QX {replay_us(lambda: torch.bmm(q, x)):.1f} us")

    # The GPT-2-small set as the step iterates it (already normalized, wide side): the 768² group on
    # dense NS, the others in Gram space; the tall 3072×768 group arrives as a transposed view.
    schedule = schedule_for("muon", 5, "repeat_last")
    wide = {n: torch.randn(12, 768, n, device=dev, dtype=bf16) / 100 for n in (2304, 3072)}
    tall = torch.randn(12, 3072, 768, device=dev, dtype=bf16).mT / 100
    square = torch.randn(12, 768, 768, device=dev, dtype=bf16) / 100
    both_3072 = torch.cat([wide[3072], tall.contiguous()])

    def square_ns() -> object:
        return newton_schulz(square, schedule, normalized=True)

    def gram(x: torch.Tensor) -> Callable[[], object]:
        return lambda: gram_newton_schulz(x, schedule, normalized=True)

    def apart() -> None:
        square_ns()
        gram(wide[2304])()
        gram(wide[3072])()
        gram(tall)()

    def merged() -> None:
        square_ns()
        gram(wide[2304])()
        gram(both_3072)()

    print(f"set separate groups: {replay_us(apart):.1f} us; 3072 tall+wide as one batch: {replay_us(merged):.1f} us")
    for name, fn in (("sq", square_ns), ("2304", gram(wide[2304])), ("3072w", gram(wide[3072])),
                     ("3072t", gram(tall)), ("3072x24", gram(both_3072))):
        print(f"  {name}: {replay_us(fn):.1f} us")


if __name__ == "__main__":
    main()
