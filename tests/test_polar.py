"""Polar backends against the exact float64 SVD polar factor."""

import math

import pytest
import torch

import fpolar
from fpolar.polar import PolarSpec, polar_wide
from helpers import exact_polar, orthogonality_error, rel_err, with_condition

SHAPES = [(32, 96), (64, 64), (80, 48), (1, 17), (17, 1)]

# ‖OOᵀ − I‖₂ each schedule reaches with its default steps in float64, for inputs with singular values
# log-spaced in [1/κ, 1] (the result depends only on the singular values, so these are tight: the
# measured values are 0.535/0.954, 0.065/0.953, 0.302/0.824, 0.114/0.983). At κ = 1e6 no 5-step
# polynomial can lift σ ≈ 1e-7 to 1: the error is 1 − O(σ_min), so the test checks < 1.
ORTHOGONALITY_BOUNDS = {
    "muon": {10: 0.54, 1e3: 0.96, 1e6: 1.0},
    "quintic": {10: 0.07, 1e3: 0.96, 1e6: 1.0},
    "polar_express": {10: 0.31, 1e3: 0.83, 1e6: 1.0},
    "aol": {10: 0.12, 1e3: 0.99, 1e6: 1.0},
}


@pytest.mark.parametrize("schedule", sorted(ORTHOGONALITY_BOUNDS))
@pytest.mark.parametrize("kappa", [10, 1e3, 1e6])
def test_schedule_orthogonality_bound(schedule, kappa):
    for m, n in [(32, 96), (64, 64), (96, 40)]:
        x = with_condition(m, n, kappa)
        o = fpolar.polar(x, coefficients=schedule, polar_dtype=torch.float64)
        err = orthogonality_error(o)
        assert math.isfinite(err)
        bound = ORTHOGONALITY_BOUNDS[schedule][kappa]
        if bound == 1.0:
            assert err < 1.0, (schedule, kappa, (m, n), err)
        else:
            assert err <= bound, (schedule, kappa, (m, n), err)


@pytest.mark.parametrize("schedule", ["quintic", "polar_express"])
def test_more_steps_converge_further(schedule):
    """Repeating the last triple keeps improving well-conditioned inputs (κ = 1e3, 12 steps)."""
    x = with_condition(64, 128, 1e3)
    err5 = orthogonality_error(fpolar.polar(x, coefficients=schedule, polar_dtype=torch.float64))
    err12 = orthogonality_error(fpolar.polar(x, coefficients=schedule, ns_steps=12, polar_dtype=torch.float64))
    assert err12 < 0.11 and err12 < err5 / 5


def test_cycle_vs_repeat_last():
    from fpolar.coefficients import expand_schedule

    abc = [(1.0, 0.0, 0.0), (2.0, 0.0, 0.0)]
    assert expand_schedule(abc, 4, "repeat_last") == ((1.0, 0.0, 0.0), (2.0, 0.0, 0.0), (2.0, 0.0, 0.0), (2.0, 0.0, 0.0))
    assert expand_schedule(abc, 4, "cycle") == ((1.0, 0.0, 0.0), (2.0, 0.0, 0.0), (1.0, 0.0, 0.0), (2.0, 0.0, 0.0))
    x = torch.randn(4, 30, 50, dtype=torch.float64)
    kw = dict(coefficients="quintic", ns_steps=8, polar_dtype=torch.float64)
    a = fpolar.polar(x, schedule_overflow="cycle", **kw)
    b = fpolar.polar(x, schedule_overflow="repeat_last", **kw)
    assert not torch.allclose(a, b)


def test_custom_schedule_equals_literal_iteration():
    abc = [(3.0, -3.2, 1.2), (1.875, -1.25, 0.375)]
    x = torch.randn(3, 20, 45, dtype=torch.float64)
    o = fpolar.polar(x, coefficients=abc, ns_steps=3, polar_dtype=torch.float64)
    for i in range(3):
        y = x[i] / (x[i].norm() + 1e-7)
        for a, b, c in [abc[0], abc[1], abc[1]]:
            A = y @ y.T
            y = a * y + (b * A + c * A @ A) @ y
        assert torch.allclose(o[i], y, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_svd_exact(shape):
    x = torch.randn(3, *shape, dtype=torch.float64)
    assert rel_err(fpolar.polar(x, "svd"), exact_polar(x)) < 1e-12


@pytest.mark.parametrize("kappa", [10, 1e3, 1e6])
def test_qdwh_matches_svd_in_float64(kappa):
    for m, n in [(40, 90), (64, 64), (90, 40)]:
        x = with_condition(m, n, kappa, batch=2)
        o = fpolar.polar(x, "qdwh", qdwh_iters=6, polar_dtype=torch.float64)
        assert (o - exact_polar(x)).abs().max().item() <= 1e-6


def test_qdwh_paper_setting_is_inexact_but_bounded():
    """2 Halley steps from l₀ = fp32 eps + 1 NS polish: σ(O) lands in about [0.73, 1] (the paper's setting)."""
    x = with_condition(64, 128, 1e3).float()
    sv = torch.linalg.svdvals(fpolar.polar(x, "qdwh").double())
    assert 0.6 < sv.min().item() and sv.max().item() <= 1.0 + 1e-5


def test_gram_newton_schulz_equals_newton_schulz():
    x = torch.randn(5, 24, 200, dtype=torch.float64)
    for restart in (1, 2, 5):
        a = fpolar.polar(x, "gram_newton_schulz", gram_restart=restart, polar_dtype=torch.float64)
        b = fpolar.polar(x, "newton_schulz", polar_dtype=torch.float64)
        assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("method", ["newton_schulz", "gram_newton_schulz", "qdwh", "svd"])
def test_batched_equals_per_matrix_loop(method):
    x = torch.randn(6, 30, 70, dtype=torch.float64)
    kw = {"polar_dtype": torch.float64}
    batched = fpolar.polar(x, method, **kw)
    looped = torch.stack([fpolar.polar(x[i], method, **kw) for i in range(6)])
    assert (batched - looped).abs().max().item() < 1e-12


@pytest.mark.parametrize("method", ["newton_schulz", "gram_newton_schulz", "qdwh", "svd"])
def test_tall_is_transpose_of_wide(method):
    x = torch.randn(2, 70, 30, dtype=torch.float64)
    a = fpolar.polar(x, method, polar_dtype=torch.float64)
    b = fpolar.polar(x.mT, method, polar_dtype=torch.float64).mT
    assert (a - b).abs().max().item() < 1e-12


@pytest.mark.parametrize("method", ["newton_schulz", "gram_newton_schulz", "qdwh", "svd"])
def test_zero_matrix_maps_to_zero(method):
    o = fpolar.polar(torch.zeros(2, 8, 12), method)
    assert torch.isfinite(o).all() and (o == 0).all()


def test_default_dtype_and_output_dtype():
    x = torch.randn(4, 8, 16, dtype=torch.bfloat16)
    assert PolarSpec.build().compute_dtype(x) == torch.float32  # CPU: at least fp32
    assert fpolar.polar(x).dtype == torch.bfloat16
    assert fpolar.polar(x, polar_dtype=torch.bfloat16).shape == x.shape


def test_bf16_newton_schulz_close_to_fp64():
    x = torch.randn(4, 64, 128)
    o16 = fpolar.polar(x, polar_dtype=torch.bfloat16, kernels="torch").double()
    o64 = fpolar.polar(x.double(), polar_dtype=torch.float64)
    assert rel_err(o16, o64) < 2e-2


def test_polar_wide_does_not_modify_input():
    x = torch.randn(3, 10, 20)
    before = x.clone()
    polar_wide(x, PolarSpec.build("newton_schulz"))
    assert torch.equal(x, before)


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        (torch.randn(5), ValueError, "1-D"),
        (torch.tensor(1.0), ValueError, "0-D"),
        (torch.randint(0, 3, (4, 4)), TypeError, "int64"),
        (torch.randn(4, 4, dtype=torch.complex64), TypeError, "complex"),
        (torch.randn(4, 4).to_sparse(), TypeError, "sparse"),
    ],
)
def test_polar_rejects_bad_tensors(bad, exc, match):
    with pytest.raises(exc, match=match):
        fpolar.polar(bad)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "eig"}, "unknown polar method 'eig'"),
        ({"coefficients": "fast"}, "unknown coefficients 'fast'"),
        ({"coefficients": [(1.0, 2.0)]}, r"coefficients\[0\]"),
        ({"ns_steps": -1}, "ns_steps must be ≥ 0, got -1"),
        ({"kernels": "cuda"}, "unknown kernels choice 'cuda'"),
        ({"schedule_overflow": "wrap"}, "unknown schedule overflow 'wrap'"),
    ],
)
def test_polar_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fpolar.polar(torch.randn(4, 6), **kwargs)


def test_one_name_per_option_from_hparams_to_the_spec():
    """``polar()``, ``PolarSpec.build`` and ``PolarGradHParams`` share the option names of ``POLAR_OPTIONS``."""
    import dataclasses
    import inspect

    from fpolar.polar import POLAR_OPTIONS

    build = inspect.signature(PolarSpec.build).parameters
    assert tuple(k for k, p in build.items() if p.kind is p.KEYWORD_ONLY) == POLAR_OPTIONS
    hp_fields = {f.name for f in dataclasses.fields(fpolar.PolarGradHParams)}
    assert set(POLAR_OPTIONS) <= hp_fields
    spec_fields = {f.name for f in dataclasses.fields(PolarSpec)}
    assert {"polar_dtype", "kernels", "gram_restart", "qdwh_iters", "qdwh_l0", "polish_steps", "eps"} <= spec_fields
    options = dict(ns_steps=7, polar_dtype=torch.float64, gram_restart=2)
    hp = fpolar.PolarGradHParams(lr=0.1, polar="gram_newton_schulz", **options)
    assert hp.polar_spec == PolarSpec.build("gram_newton_schulz", **options)


def test_polar_rejects_an_unknown_option_by_name():
    with pytest.raises(TypeError, match=r"unknown options \['dtype'\]"):
        fpolar.polar(torch.randn(4, 6), dtype=torch.float64)
