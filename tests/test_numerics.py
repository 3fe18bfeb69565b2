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
    pe = SCHEDULES["polar_express"].coefficients[0]
    assert abs(scalar_map([pe], 1.0) - 1.55) < 0.01
    assert scalar_map([STABLE_TAIL] * 12, 1.7) == math.inf


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_named_schedule_continued_converges_to_one(name):
    """16 steps = the list, then the tail: singular values 1 to 1e-3 on fresh Gaussian inputs (float64)."""
    ns = SCHEDULES[name]
    sched = with_tail(ns.coefficients if len(ns.coefficients) > 1 else ns.coefficients * ns.default_steps, 16)
    for m, n in ((24, 72), (36, 40), (9, 130)):
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


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("name", ["polar_express", "quintic", "muon"])
def test_gram_newton_schulz_bf16_stays_finite_at_any_step_count(name):
    """Near-square bf16 inputs, 8 to 32 steps: finite, no singular value above 1.1 (no blow-up), and by
    32 steps every one within 0.1 of 1 (a square Gaussian's smallest σ needs the tail's steps)."""
    import fpolar

    gen = torch.Generator().manual_seed(7)
    for m, n in ((48, 48), (44, 48)):
        x = torch.randn(3, m, n, generator=gen).to(DEVICE)
        for steps in (8, 16, 32):
            o = fpolar.polar(x, "gram_newton_schulz", coefficients=name, ns_steps=steps, polar_dtype=torch.bfloat16)
            assert torch.isfinite(o).all(), (m, n, steps)
            sv = torch.linalg.svdvals(o.float().cpu())
            assert sv.max().item() < 1.1, (m, n, steps, sv.max().item())
            if steps == 32:
                assert (sv - 1).abs().max().item() < 0.1, (m, n, steps, sv.min().item(), sv.max().item())


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_polar_continued_past_the_list_reaches_singular_values_one(name):
    """Through fpolar.polar (float64): 16 steps of a named schedule give σ = 1 to 1e-3."""
    import fpolar

    x = torch.randn(2, 24, 72, dtype=torch.float64)
    o = fpolar.polar(x, coefficients=name, ns_steps=16, polar_dtype=torch.float64)
    sv = torch.linalg.svdvals(o)
    assert (sv - 1).abs().max().item() < 1e-3


def test_cycle_refused_where_it_diverges_and_kept_where_bounded():
    import fpolar

    with pytest.raises(ValueError, match="schedule_overflow='cycle' with coefficients='polar_express' and 9 steps diverges"):
        fpolar.PolarGradHParams(lr=0.1, coefficients="polar_express", ns_steps=9, schedule_overflow="cycle")
    fpolar.PolarGradHParams(lr=0.1, coefficients="polar_express", ns_steps=5, schedule_overflow="cycle")
    x = torch.randn(2, 16, 40, dtype=torch.float64)
    o = fpolar.polar(x, coefficients="quintic", ns_steps=16, schedule_overflow="cycle", polar_dtype=torch.float64)
    assert torch.linalg.svdvals(o).max().item() < 1.5


@pytest.mark.parametrize("scale", [1e20, 1e-30])
@pytest.mark.parametrize("rule", ["nuclear", "shape"])
def test_step_direction_is_scale_invariant(scale, rule):
    """Grads ×1e20 or ×1e-30 (float32) give the update direction grads ×1 give (fresh state). The params
    start at zero so that a nuclear-scaled update of ~1e-33 is not lost in the params' rounding."""
    import fpolar

    torch.manual_seed(0)
    base = [torch.zeros(6, 4), torch.zeros(4, 9)]
    grads = [torch.randn(6, 4), torch.randn(4, 9)]
    hp = fpolar.PolarGradHParams(lr=1e-3, scale=rule, momentum=0.0)
    moves = []
    for c in (1.0, scale):
        params = [p.clone() for p in base]
        state = fpolar.init_state(params, hp)
        fpolar.polargrad_step(params, [g * c for g in grads], state, hp)
        moves.append([(b - p).double() for b, p in zip(base, params)])
    for ref, got in zip(*moves):
        assert torch.isfinite(got).all() and got.norm() > 0
        cos = (ref * got).sum() / (ref.norm() * got.norm())
        assert cos.item() > 1 - 1e-4
