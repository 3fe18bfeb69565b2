"""polargrad_step against a literal per-matrix float64 reference written from the math."""

import math

import pytest
import torch

import fpolar
from helpers import exact_polar, run_polargrad_steps

# tall, wide, square, 1×n, n×1, a 3-D batch of matrices, and a 4-D conv weight (flattened to (8, 3·3·3))
MIXED_SHAPES = [(12, 7), (7, 12), (9, 9), (1, 11), (11, 1), (3, 5, 6), (8, 3, 3, 3), (12, 7)]


def as_matrices(t):
    """(count, m, n) matrices of a param, as fpolar documents: 3-D = batch, ≥4-D = (out, rest)."""
    if t.dim() == 2:
        return t[None]
    if t.dim() == 3:
        return t
    return t.reshape(1, t.shape[0], -1)


def shape_rule(rule, m, n):
    return {
        "nuclear": None,
        "shape": math.sqrt(max(1, m / n)),
        "spectral": math.sqrt(max(m, n)),
        "rms_adamw": 0.2 * math.sqrt(max(m, n)),
        "unit_rms": math.sqrt(m / n),
        "none": 1.0,
    }[rule]


def reference_steps(params, grad_seq, *, lr, beta=0.95, nesterov=False, wd=0.0, wd_mode="decoupled",
                    order="momentum_first", scale="nuclear", extra=1.0):
    """Literal PolarGrad(M)/Muon in float64, one matrix at a time, exact SVD polar factor."""
    W = [p.detach().double().clone() for p in params]
    M = [torch.zeros_like(w) for w in W]
    for grads in grad_seq:
        for i, g in enumerate(grads):
            g = g.double()
            if wd_mode == "l2":
                g = g + wd * W[i]
            w_mats, g_mats = as_matrices(W[i]), as_matrices(g)
            m_mats = as_matrices(M[i])
            new_w = []
            for k in range(w_mats.shape[0]):
                Wk, Gk, Mk = w_mats[k].clone(), g_mats[k], m_mats[k]
                rows, cols = Wk.shape
                if order == "momentum_first":
                    Mk.copy_(beta * Mk + (1 - beta) * Gk)
                    X = (1 - beta) * Gk + beta * Mk if nesterov else Mk
                    O = exact_polar(X)
                    s = torch.linalg.svdvals(X).sum() if scale == "nuclear" else shape_rule(scale, rows, cols)
                    direction = O
                else:
                    O = exact_polar(Gk)
                    Mk.copy_(beta * Mk + (1 - beta) * O)
                    s = (O * Gk).sum() if scale == "nuclear" else shape_rule(scale, rows, cols)
                    direction = (1 - beta) * O + beta * Mk if nesterov else Mk
                if wd_mode == "decoupled":
                    Wk = (1 - lr * wd) * Wk
                elif wd_mode == "independent":
                    Wk = (1 - wd) * Wk
                new_w.append(Wk - lr * s * extra * direction)
            W[i] = torch.stack(new_w).reshape(W[i].shape)
    return W


def fresh(shapes, dtype=torch.float64, steps=3):
    params = [torch.randn(s, dtype=dtype) for s in shapes]
    grads = [[torch.randn(s, dtype=dtype) for s in shapes] for _ in range(steps)]
    return params, grads


def test_svd_float64_three_steps_equal_literal_reference():
    params, grads = fresh(MIXED_SHAPES)
    hp = fpolar.PolarGradHParams(lr=1e-2, polar="svd", polar_dtype=torch.float64)
    out, state = run_polargrad_steps(params, grads, hp)
    ref = reference_steps(params, grads, lr=1e-2)
    for o, r in zip(out, ref):
        assert (o - r).abs().max().item() < 1e-10
    assert state.step.item() == 3


@pytest.mark.parametrize("order", ["momentum_first", "polar_first"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_orders_and_nesterov(order, nesterov):
    params, grads = fresh(MIXED_SHAPES)
    hp = fpolar.PolarGradHParams(lr=3e-3, order=order, nesterov=nesterov, polar="svd", polar_dtype=torch.float64)
    out, _ = run_polargrad_steps(params, grads, hp)
    ref = reference_steps(params, grads, lr=3e-3, order=order, nesterov=nesterov)
    for o, r in zip(out, ref):
        assert (o - r).abs().max().item() < 1e-10


@pytest.mark.parametrize("mode", ["decoupled", "independent", "l2"])
@pytest.mark.parametrize("tensor_scalars", [False, True])
def test_weight_decay_modes(mode, tensor_scalars):
    params, grads = fresh(MIXED_SHAPES)
    lr, wd = 1e-2, 0.05
    hp = fpolar.PolarGradHParams(
        lr=torch.tensor(lr, dtype=torch.float64) if tensor_scalars else lr,
        weight_decay=torch.tensor(wd, dtype=torch.float64) if tensor_scalars else wd,
        weight_decay_mode=mode,
        polar="svd",
        polar_dtype=torch.float64,
    )
    grads_before = [[g.clone() for g in gs] for gs in grads]
    out, _ = run_polargrad_steps(params, grads, hp)
    ref = reference_steps(params, grads, lr=lr, wd=wd, wd_mode=mode)
    for o, r in zip(out, ref):
        assert (o - r).abs().max().item() < 1e-10
    for gs, gb in zip(grads, grads_before):  # l2 must not write into the user's grads
        assert all(torch.equal(a, b) for a, b in zip(gs, gb))


@pytest.mark.parametrize("scale", ["nuclear", "shape", "spectral", "rms_adamw", "unit_rms", "none"])
@pytest.mark.parametrize("order", ["momentum_first", "polar_first"])
def test_scale_rules(scale, order):
    params, grads = fresh(MIXED_SHAPES)
    lr = 1e-3 if scale == "nuclear" else 0.02
    hp = fpolar.PolarGradHParams(lr=lr, scale=scale, extra_scale=0.7, order=order, polar="svd", polar_dtype=torch.float64)
    out, _ = run_polargrad_steps(params, grads, hp)
    ref = reference_steps(params, grads, lr=lr, scale=scale, extra=0.7, order=order)
    for o, r in zip(out, ref):
        assert (o - r).abs().max().item() < 1e-10


def test_newton_schulz_fp32_step_close_to_exact():
    """Default backend (polar_express NS): the step direction is near the exact one, the scale near ‖M‖_*."""
    params, grads = fresh([(64, 32), (32, 96)], dtype=torch.float32, steps=1)
    hp = fpolar.PolarGradHParams(lr=1e-3)
    out, _ = run_polargrad_steps(params, grads, hp)
    ref = reference_steps(params, grads, lr=1e-3)
    for p, o, r in zip(params, out, ref):
        step, ref_step = (o.double() - p.double()), (r - p.double())
        assert ((step - ref_step).norm() / ref_step.norm()).item() < 0.15


def test_zero_gradient_gives_zero_finite_update():
    for polar in ["newton_schulz", "gram_newton_schulz", "qdwh", "svd"]:
        for scale in ["nuclear", "shape"]:
            params = [torch.randn(6, 4), torch.randn(3, 5, 7)]
            before = [p.clone() for p in params]
            hp = fpolar.PolarGradHParams(lr=0.1, polar=polar, scale=scale)
            state = fpolar.init_state(params, hp)
            fpolar.polargrad_step(params, [torch.zeros_like(p) for p in params], state, hp)
            for p, b in zip(params, before):
                assert torch.isfinite(p).all() and torch.equal(p, b), (polar, scale)


def test_none_grad_skips_param_and_its_momentum():
    params, grads = fresh([(6, 4), (6, 4), (5, 5)], steps=1)
    hp = fpolar.PolarGradHParams(lr=1e-2, polar="svd", polar_dtype=torch.float64)
    p = [t.clone() for t in params]
    state = fpolar.init_state(p, hp)
    g = [grads[0][0], None, grads[0][2]]
    fpolar.polargrad_step(p, g, state, hp)
    assert torch.equal(p[1], params[1]) and (state.momentum[1] == 0).all()
    ref = reference_steps([params[0], params[2]], [[g[0], g[2]]], lr=1e-2)
    assert (p[0] - ref[0]).abs().max() < 1e-10 and (p[2] - ref[1]).abs().max() < 1e-10


def test_momentum_views_share_the_stacked_buffer():
    params = [torch.randn(6, 4), torch.randn(6, 4), torch.randn(2, 6, 4)]
    state = fpolar.init_state(params, fpolar.PolarGradHParams(lr=0.1))
    assert len(state.buffers) == 1 and state.buffers[0].shape == (4, 6, 4)
    for mom in state.momentum:
        assert mom.untyped_storage().data_ptr() == state.buffers[0].untyped_storage().data_ptr()


def test_bf16_params_with_fp32_momentum():
    params = [torch.randn(16, 8, dtype=torch.bfloat16)]
    hp = fpolar.PolarGradHParams(lr=1e-2, momentum_dtype=torch.float32)
    state = fpolar.init_state(params, hp)
    assert state.momentum[0].dtype == torch.float32
    fpolar.polargrad_step(params, [torch.randn(16, 8, dtype=torch.bfloat16)], state, hp)
    assert params[0].dtype == torch.bfloat16 and torch.isfinite(params[0]).all()


@pytest.mark.parametrize("order", ["momentum_first", "polar_first"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_bf16_params_every_order(order, nesterov):
    """bf16 params/grads with bf16 momentum: each order and Nesterov runs and tracks the fp32 run."""
    shapes = [(16, 8), (8, 24)]
    # small weights, so bf16 rounding of W (not of the step) stays well below the step size
    params32 = [(0.01 * torch.randn(s)).bfloat16().float() for s in shapes]
    grads32 = [torch.randn(s).bfloat16().float() for s in shapes]
    hp = fpolar.PolarGradHParams(lr=1e-2, order=order, nesterov=nesterov)
    p16 = [p.bfloat16() for p in params32]
    state = fpolar.init_state(p16, hp)
    fpolar.polargrad_step(p16, [g.bfloat16() for g in grads32], state, hp)
    p32 = [p.clone() for p in params32]
    fpolar.polargrad_step(p32, grads32, fpolar.init_state(p32, hp), hp)
    for a, b, p0 in zip(p16, p32, params32):
        assert a.dtype == torch.bfloat16
        assert ((a.float() - b).norm() / (b - p0).norm()).item() < 0.1


@pytest.mark.parametrize("order", ["momentum_first", "polar_first"])
def test_phases_split_at_the_seam_equal_the_step(order):
    """The three phases run by hand, with ``orthogonalize`` on two halves of each group's batch
    (as a distributed exchange would split it) and the halves joined again, equal polargrad_step."""
    from fpolar.polargrad import (
        Orthogonalized,
        live_batch,
        orthogonalize,
        post_orthogonalize,
        pre_orthogonalize,
    )

    shapes = [(12, 7), (12, 7), (3, 12, 7), (7, 12), (9, 9), (9, 9)]
    params, grad_seq = fresh(shapes, steps=2)
    hp = fpolar.PolarGradHParams(
        lr=0.05, order=order, nesterov=True, weight_decay=0.1, polar_dtype=torch.float64
    )
    expected, _ = run_polargrad_steps(params, grad_seq, hp)
    out = [p.clone() for p in params]
    state = fpolar.init_state(out, hp)
    for grads in grad_seq:
        state.step.add_(1)
        for group, buffer, impl in zip(state.groups, state.buffers, state.polar_impls):
            batch = live_batch(group, buffer, out, grads, state)
            x = pre_orthogonalize(batch, hp)
            half = x.shape[0] // 2
            pieces = [x[:half], x[half:]] if half else [x]
            parts = [orthogonalize(piece, impl, hp) for piece in pieces]
            o = torch.cat([p.o for p in parts])
            size = torch.cat([p.step_size for p in parts])  # nuclear: (B, 1, 1) per part
            post_orthogonalize(batch, Orthogonalized(o, size), hp)
    for a, b in zip(out, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_prechecked_steps_equal_the_checked_ones():
    """``*_prechecked`` (what fpolar.optim runs after checking every group) are the same steps, bit for
    bit, as ``polargrad_step`` / ``adamw_step`` / ``fused_adamw_step`` on the same inputs."""
    from fpolar.adamw import adamw_step_prechecked
    from fpolar.adamw_fused import fused_adamw_available, fused_adamw_step, fused_adamw_step_prechecked
    from fpolar.polargrad import polargrad_step_prechecked

    g = torch.Generator().manual_seed(11)
    shapes = [(6, 9), (9, 6), (2, 5, 4), (6, 9)]
    hp = fpolar.PolarGradHParams(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)
    ahp = fpolar.AdamWHParams(lr=1e-2, weight_decay=0.01)
    mats = [torch.randn(s, generator=g) for s in shapes]
    vecs = [torch.randn(7, generator=g), torch.randn(3, 4, generator=g)]
    twins = [[t.clone() for t in mats] for _ in range(2)]
    vtwins = [[t.clone() for t in vecs] for _ in range(4)]
    states = [fpolar.init_state(ps, hp) for ps in twins]
    astates = [fpolar.init_adamw_state(ps, ahp) for ps in vtwins]
    fused = fused_adamw_available(torch.device("cpu"), torch.float32)
    for _ in range(3):
        grads = [torch.randn(s, generator=g) for s in shapes]
        grads[3] = None  # a param without a grad this step
        vgrads = [torch.randn(t.shape, generator=g) for t in vecs]
        fpolar.polargrad_step(twins[0], grads, states[0], hp)
        polargrad_step_prechecked(twins[1], grads, states[1], hp)
        fpolar.adamw_step(vtwins[0], vgrads, astates[0], ahp)
        adamw_step_prechecked(vtwins[1], vgrads, astates[1], ahp)
        if fused:
            fused_adamw_step(vtwins[2], vgrads, astates[2], ahp)
            fused_adamw_step_prechecked(vtwins[3], vgrads, astates[3], ahp)
    for a, b in zip(twins[0], twins[1]):
        assert torch.equal(a, b)
    for a, b in zip(states[0].buffers, states[1].buffers):
        assert torch.equal(a, b)
    assert torch.equal(states[0].step, states[1].step)
    for a, b in zip(vtwins[0], vtwins[1]):
        assert torch.equal(a, b)
    for a, b in zip(vtwins[2], vtwins[3]):
        assert torch.equal(a, b)
    assert not torch.equal(vtwins[1][0], vecs[0]) and not torch.equal(twins[1][0], mats[0])  # they stepped
