"""Numerics under accepted settings: normalization over the dtype's range, schedules past their list,
cycling, Gram NS in bf16, QDWH on rank-deficient input, AdamW in half precision."""

import math

import pytest
import torch

from fpolar.coefficients import SCHEDULES
from fpolar.polar.frobenius import frobenius_normalize
from fpolar.polar.qdwh import check_l0, qdwh_polar
from fpolar.schedule_tail import STABLE_TAIL, cycle_is_bounded, scalar_map, with_tail


def test_stable_tail_fixes_one():
    a, b, c = STABLE_TAIL
    assert a + b + c == 1.0 and a + 3 * b + 5 * c == 0.0
    for s in (0.3, 0.7, 1.2, 1.5):
        assert abs(scalar_map([STABLE_TAIL] * 12, s) - 1.0) < 1e-12
    assert scalar_map([STABLE_TAIL] * 12, 1.7) == math.inf


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_named_schedule_continued_converges_to_one(name):
    """16 steps = the list, then the tail: singular values 1 to 1e-3 on fresh Gaussian inputs (float64)."""
    ns = SCHEDULES[name]
    sched = with_tail(ns.coefficients if len(ns.coefficients) > 1 else ns.coefficients * ns.default_steps, 16)
    for m, n in ((24, 72), (40, 40), (9, 130)):
        x = torch.randn(m, n, dtype=torch.float64)
        if ns.normalization == "aol":
            a = x @ x.T
            x = x / a.abs().sum(-1).sqrt()[:, None]
        else:
            x = x / (x.norm() * ns.safety)
        for a, b, c in sched:
            g = x @ x.T
            x = a * x + (b * g + c * g @ g) @ x
        sv = torch.linalg.svdvals(x)
        assert (sv - 1).abs().max().item() < 1e-3, (name, m, n, sv.min().item(), sv.max().item())


def test_cycle_bound_refuses_what_diverges():
    pe = SCHEDULES["polar_express"]
    assert cycle_is_bounded(pe.coefficients, 5, 1 / pe.safety)
    assert not cycle_is_bounded(pe.coefficients, 9, 1 / pe.safety)
    # and that divergence is real: the cycled list overflows in float64 on a Gaussian input
    x = torch.randn(32, 96, dtype=torch.float64)
    x = x / (x.norm() * pe.safety)
    for i in range(12):
        a, b, c = pe.coefficients[i % 5]
        g = x @ x.T
        x = a * x + (b * g + c * g @ g) @ x
    assert not torch.isfinite(x).all() or x.abs().max() > 1e6
    for name in ("muon", "quintic"):
        ns = SCHEDULES[name]
        assert cycle_is_bounded(ns.coefficients, 64, 1 / ns.safety)


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e-30, 1e-36])
def test_frobenius_normalization_is_scale_invariant(scale):
    x = torch.randn(3, 10, 17)
    ref = frobenius_normalize(x, 1.02, 1e-7, torch.float32)
    got = frobenius_normalize(x * scale, 1.02, 1e-7, torch.float32)
    assert torch.isfinite(got).all()
    assert (got - ref).abs().max().item() < 1e-6
    # σ_max ≤ 1/safety, and the zero matrix stays zero
    assert torch.linalg.matrix_norm(got.double(), 2).max().item() <= 1 / 1.02 + 1e-6
    assert frobenius_normalize(torch.zeros(2, 3, 4), 1.0, 1e-7, torch.float32).abs().max().item() == 0


def test_qdwh_l0_limits_named():
    check_l0(1e-57, 6)
    for bad in (1e-60, 1e-300):
        with pytest.raises(ValueError, match=f"qdwh_l0={bad!r} is too small"):
            check_l0(bad, 2)
    with pytest.raises(TypeError, match="qdwh_l0 must be a float in \\(0, 1\\] or None, got str 'tiny'"):
        check_l0("tiny", 2)
    x = torch.randn(2, 8, 12)
    assert torch.isfinite(qdwh_polar(x, qdwh_l0=1e-57, qdwh_iters=6)).all()


def test_qdwh_rank_deficient_limits():
    """Documented limit: QDWH lifts singular values at the rounding floor (≈ l0) like signal, so a
    rank-1 input gets invented directions; l0 above the noise keeps them out."""
    u, v = torch.randn(3, 8, 1), torch.randn(3, 1, 12)
    r1 = u @ v
    top = (u / u.norm(dim=-2, keepdim=True)) @ (v / v.norm(dim=-1, keepdim=True))  # the exact polar factor
    o = qdwh_polar(r1, qdwh_iters=2)
    sv = torch.linalg.svdvals(o.double())
    assert sv[:, 1].max().item() > 0.05  # the limit is real (a second direction appears)
    assert (o * top).sum((-2, -1)).min().item() > 0.75  # the true direction still leads
    o = qdwh_polar(r1, qdwh_iters=2, qdwh_l0=1e-3)
    sv = torch.linalg.svdvals(o.double())
    assert sv[:, 1].max().item() < 2e-3 and sv[:, 0].min().item() > 0.99
