"""Gram Newton–Schulz writes a restarted block's Q·X into the memory of an iterate nobody holds any
more (``consume_input``, or an X₀ it made itself by normalizing): the same bits as fresh buffers, one
(B, m, n) iterate less at the peak less one m×m matrix (counted by ``OpLedger``), the caller's ``x`` untouched unless it
gave it up, and nothing reused under a single block (no restart) or a non-contiguous iterate."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from fpolar.coefficients import schedule_for
from fpolar.polar.frobenius import frobenius_normalize
from fpolar.polar.gram_newton_schulz import gram_newton_schulz
from fpolar.polar.svd import svd_polar

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from op_ledger import OpLedger  # noqa: E402

SCHEDULE = schedule_for("muon", None, "repeat_last")  # 5 steps: blocks of 3 + 2 at the default restart


def _normalized(seed, dtype, shape=(3, 48, 160)):
    gen = torch.Generator().manual_seed(seed)
    return frobenius_normalize(torch.randn(*shape, generator=gen, dtype=torch.float64), 1.0, 1e-7, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("restart", [1, 2, 3])
def test_consumed_input_gives_the_same_bits_and_holds_the_result(dtype, restart):
    x = _normalized(restart, dtype)
    kept = x.clone()
    fresh = gram_newton_schulz(x, SCHEDULE, polar_dtype=dtype, normalized=True, gram_restart=restart)
    assert torch.equal(x, kept)  # not given up: untouched
    given = x.clone()
    reused = gram_newton_schulz(given, SCHEDULE, polar_dtype=dtype, normalized=True, gram_restart=restart,
                                consume_input=True)
    assert torch.equal(reused, fresh)
    blocks = -(-len(SCHEDULE) // restart)
    # blocks 2, 4, … write into X₀'s memory, 3, 5, … into the previous spare
    assert (reused.data_ptr() == given.data_ptr()) == (blocks % 2 == 0)
    if dtype == torch.float64:  # and it is still the polar factor
        exact = svd_polar(kept)
        assert float((reused - exact).norm() / exact.norm()) < 0.35  # Muon's NS5 leaves σ in ~[0.7, 1.2]


def test_internal_normalization_is_reused_with_the_same_bits():
    """normalized=False: the X₀ it normalizes is its own, so it is reused without being asked."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(4, 32, 128, generator=gen)
    kept = x.clone()
    own = gram_newton_schulz(x, SCHEDULE, polar_dtype=torch.bfloat16)
    twin = gram_newton_schulz(frobenius_normalize(x, 1.0, 1e-7, torch.bfloat16), SCHEDULE,
                              polar_dtype=torch.bfloat16, normalized=True)  # X₀ the caller's: not reused
    assert torch.equal(own, twin) and torch.equal(x, kept)


def test_one_iterate_less_at_the_peak():
    b, m, n = 4, 64, 512
    iterate = b * m * n * 2  # bf16

    def peak(consume):
        x = torch.empty(b, m, n, dtype=torch.bfloat16, device="meta")
        with torch.no_grad(), OpLedger() as ledger:
            gram_newton_schulz(x, SCHEDULE, polar_dtype=torch.bfloat16, normalized=True, consume_input=consume)
        return ledger.peak_live_bytes

    # the peak without reuse: the second block's Q·X₁ beside X₁ (X₀ held by the caller); with it, the
    # peak moves to that block's m×m products, one Gram-sized matrix above one iterate less
    gram = b * m * m * 2
    assert peak(False) - peak(True) == iterate - gram


def test_nothing_reused_without_a_restart_or_for_a_transposed_iterate():
    x = _normalized(3, torch.float32)
    one_block = gram_newton_schulz(x, SCHEDULE, polar_dtype=torch.float32, normalized=True,
                                   gram_restart=len(SCHEDULE), consume_input=True)
    assert one_block.data_ptr() != x.data_ptr()
    tall = _normalized(4, torch.float32, shape=(3, 160, 48)).mT  # wide view of a tall stack
    out = gram_newton_schulz(tall, SCHEDULE, polar_dtype=torch.float32, normalized=True, consume_input=True)
    assert out.data_ptr() != tall.data_ptr()
    expected = gram_newton_schulz(tall.clone(), SCHEDULE, polar_dtype=torch.float32, normalized=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
