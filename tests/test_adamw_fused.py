"""``fused_adamw_step`` (torch's fused kernel) against ``adamw_step`` and a float64 AdamW written out."""

import pytest
import torch

import fpolar
from fpolar.adamw_fused import fused_adamw_available, fused_adamw_step

SHAPES = [(5, 3), (7,), (2, 3, 4), ()]


def problem(seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(dtype) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen).to(dtype) for s in SHAPES] for _ in range(4)]
    return params, grads


def reference64(params, grad_steps, lr, wd, betas, eps):
    """AdamW written out in float64, straight from the formulas."""
    b1, b2 = betas
    p = [x.double().clone() for x in params]
    m = [torch.zeros_like(x) for x in p]
    v = [torch.zeros_like(x) for x in p]
    for t, grads in enumerate(grad_steps, start=1):
        for i, g in enumerate(grads):
            g = g.double()
            p[i] = p[i] * (1 - lr * wd)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            mhat, vhat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
            p[i] = p[i] - lr * mhat / (vhat.sqrt() + eps)
    return p


cpu_fused = pytest.mark.skipif(not fused_adamw_available(torch.device("cpu"), torch.float32),
                               reason="this torch has no CPU fused AdamW kernel")


@cpu_fused
@pytest.mark.parametrize("wd_kind", ["float", "tensor", "zero"])
def test_fused_equals_foreach_and_float64(wd_kind):
    params, grad_steps = problem(0)
    wd = {"float": 0.1, "tensor": torch.tensor(0.1), "zero": 0.0}[wd_kind]
    hp = fpolar.AdamWHParams(lr=torch.tensor(3e-2), betas=(0.9, 0.99), eps=1e-8, weight_decay=wd)
    p_fused, p_ref = [x.clone() for x in params], [x.clone() for x in params]
    s_fused, s_ref = fpolar.init_adamw_state(p_fused, hp), fpolar.init_adamw_state(p_ref, hp)
    for grads in grad_steps:
        fused_adamw_step(p_fused, grads, s_fused, hp)
        fpolar.adamw_step(p_ref, grads, s_ref, hp)
    # identical math, different rounding order inside the kernel: fp32 ulps
    torch.testing.assert_close(p_fused, p_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s_fused.exp_avg_sq, s_ref.exp_avg_sq, rtol=1e-6, atol=1e-7)
    assert [float(s) for s in s_fused.step] == [4.0] * len(SHAPES)
    w = float(wd) if wd_kind != "zero" else 0.0
    ref = reference64(params, grad_steps, 3e-2, w, (0.9, 0.99), 1e-8)
    torch.testing.assert_close([x.double() for x in p_fused], ref, rtol=1e-5, atol=1e-6)
    assert max(float((a - b).abs().max()) for a, b in zip(p_fused, params)) > 1e-2  # it moved


@cpu_fused
def test_none_grads_skip_their_param_and_state():
    params, grad_steps = problem(1)
    hp = fpolar.AdamWHParams(lr=1e-2, weight_decay=0.05)
    state = fpolar.init_adamw_state(params, hp)
    before = params[1].clone()
    grads = list(grad_steps[0])
    grads[1] = None
    fused_adamw_step(params, grads, state, hp)
    assert torch.equal(params[1], before) and float(state.step[1]) == 0.0 and float(state.step[0]) == 1.0


def test_bad_input_raises_before_any_change():
    params, grad_steps = problem(2)
    hp = fpolar.AdamWHParams(lr=1e-2)
    state = fpolar.init_adamw_state(params, hp)
    snapshot = [p.clone() for p in params]
    bad = list(grad_steps[0])
    bad[-1] = torch.randn(3)
    with pytest.raises(ValueError, match=r"grads\[3\]"):
        fused_adamw_step(params, bad, state, hp)
    assert all(torch.equal(a, b) for a, b in zip(params, snapshot))
    with pytest.raises(TypeError, match="AdamWHParams"):
        fused_adamw_step(params, grad_steps[0], state, fpolar.PolarGradHParams(lr=0.1))
