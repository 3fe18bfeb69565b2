"""nonfinite="skip": a call with a NaN/±inf grad changes no bit of params, momentum, moments or step
counts and counts itself in ``state.skipped``; the next clean call is the step a run without the bad
call would take. "propagate" keeps the old behaviour. GradScaler-style grad_scale / found_inf."""

import math

import pytest
import torch

import fpolar
from fpolar.nonfinite import found_nonfinite
from helpers import bitwise_equal

SHAPES = ((6, 4), (4, 6), (6, 4), (3, 5, 5), (2, 3, 2, 2))


def polar_tensors(params, state):
    return list(params) + list(state.buffers) + [state.step]


def adamw_tensors(params, state):
    return list(params) + list(state.exp_avg) + list(state.exp_avg_sq) + list(state.step)


def same_bits(a, b):
    return len(a) == len(b) and all(bitwise_equal(x, y) for x, y in zip(a, b))


def poison(grads, index, value):
    bad = [g.clone() for g in grads]
    bad[index].view(-1)[1] = value
    return bad


def test_found_nonfinite_detects_and_does_not_overflow():
    dev = torch.device("cpu")
    gs = [torch.randn(3, 4), torch.randn(5).half(), None, torch.randn(2, dtype=torch.float64)]
    assert not found_nonfinite(gs, dev).item()
    assert not found_nonfinite([torch.full((4,), 3e38)], dev).item()  # finite, its square is not
    for k, v in ((0, math.nan), (1, math.inf), (3, -math.inf)):
        assert found_nonfinite(poison([g if g is not None else torch.zeros(1) for g in gs], k, v), dev).item()
    assert found_nonfinite([], dev, torch.tensor(1.0)).item()
    assert not found_nonfinite([], dev, torch.tensor([0.0])).item()


POLAR_CASES = [
    dict(),
    dict(order="polar_first"),
    dict(nesterov=True, weight_decay=0.1),
    dict(order="polar_first", nesterov=True, scale="shape", weight_decay=0.1),
    dict(scale="rms_adamw", weight_decay=torch.tensor(0.05), weight_decay_mode="independent"),
    dict(weight_decay=0.01, weight_decay_mode="l2"),
    dict(polar="svd"),
    dict(polar="qdwh"),
    dict(polar="gram_newton_schulz", coefficients="quintic"),
    dict(momentum_dtype=torch.float64),
]


@pytest.mark.parametrize("case", range(len(POLAR_CASES)))
def test_polargrad_skip_is_a_bitwise_noop(case):
    kw, bad = POLAR_CASES[case], (math.nan, math.inf, -math.inf)[case % 3]
    torch.manual_seed(0)
    params = [torch.randn(s) for s in SHAPES]
    twin = [p.clone() for p in params]
    hp = fpolar.PolarGradHParams(lr=0.02, **kw)
    state, twin_state = fpolar.init_state(params, hp), fpolar.init_state(twin, hp)
    g1 = [torch.randn(s) for s in SHAPES]
    for ps, st in ((params, state), (twin, twin_state)):
        fpolar.polargrad_step(ps, g1, st, hp)
    before = [t.clone() for t in polar_tensors(params, state)]
    for k in (0, 3):  # a bad grad in the first group, then in a later group
        fpolar.polargrad_step(params, poison([torch.randn(s) for s in SHAPES], k, bad), state, hp)
        assert same_bits(polar_tensors(params, state), before)
    assert state.skipped.item() == 2 and state.step.item() == 1
    g2 = [torch.randn(s) for s in SHAPES]
    fpolar.polargrad_step(params, g2, state, hp)
    fpolar.polargrad_step(twin, g2, twin_state, hp)
    assert same_bits(polar_tensors(params, state), polar_tensors(twin, twin_state))
    assert twin_state.skipped.item() == 0


def test_polargrad_propagate_keeps_old_behaviour():
    params = [torch.randn(6, 4)]
    hp = fpolar.PolarGradHParams(lr=0.02, nonfinite="propagate")
    state = fpolar.init_state(params, hp)
    fpolar.polargrad_step(params, poison([torch.randn(6, 4)], 0, math.nan), state, hp)
    assert torch.isnan(params[0]).all() and state.step.item() == 1 and state.skipped.item() == 0


def test_polargrad_none_grads_and_skip():
    params = [torch.randn(s) for s in SHAPES]
    hp = fpolar.PolarGradHParams(lr=0.02)
    state = fpolar.init_state(params, hp)
    fpolar.polargrad_step(params, [torch.randn(s) for s in SHAPES], state, hp)
    before = [t.clone() for t in polar_tensors(params, state)]
    grads = [None, torch.randn(4, 6), None, torch.full((3, 5, 5), math.nan), None]
    fpolar.polargrad_step(params, grads, state, hp)
    assert same_bits(polar_tensors(params, state), before) and state.skipped.item() == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_adamw_skip_is_a_bitwise_noop(dtype, bad):
    shapes = ((7,), (4, 5), (3, 2, 2), ())
    params = [torch.randn(s, dtype=dtype) for s in shapes]
    twin = [p.clone() for p in params]
    hp = fpolar.AdamWHParams(lr=1e-2, weight_decay=0.1)
    state, twin_state = fpolar.init_adamw_state(params, hp), fpolar.init_adamw_state(twin, hp)
    # a skipped FIRST step (step counts 0) must not divide by a zero bias correction either
    before = [t.clone() for t in adamw_tensors(params, state)]
    fpolar.adamw_step(params, poison([torch.randn(s, dtype=dtype) for s in shapes], 1, bad), state, hp)
    assert same_bits(adamw_tensors(params, state), before)
    g1 = [torch.randn(s, dtype=dtype) for s in shapes]
    fpolar.adamw_step(params, g1, state, hp)
    fpolar.adamw_step(twin, g1, twin_state, hp)
    before = [t.clone() for t in adamw_tensors(params, state)]
    fpolar.adamw_step(params, poison([torch.randn(s, dtype=dtype) for s in shapes], 2, bad), state, hp)
    assert same_bits(adamw_tensors(params, state), before)
    assert state.skipped.item() == 2 and all(s.item() == 1 for s in state.step)
    g2 = [torch.randn(s, dtype=dtype) for s in shapes]
    fpolar.adamw_step(params, g2, state, hp)
    fpolar.adamw_step(twin, g2, twin_state, hp)
    assert same_bits(adamw_tensors(params, state), adamw_tensors(twin, twin_state))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_adamw_half_precision_zero_grads_stay_finite(dtype):
    """eps = 1e-8 is 0 in float16: zero grads gave 0/0. The math runs in float32."""
    params = [torch.randn(5, dtype=dtype), torch.randn(3, 3, dtype=dtype)]
    ref = [p.float() for p in params]
    hp = fpolar.AdamWHParams(lr=1e-2, weight_decay=0.0)
    state, ref_state = fpolar.init_adamw_state(params, hp), fpolar.init_adamw_state(ref, hp)
    for _ in range(3):
        grads = [torch.zeros_like(p) for p in params]
        fpolar.adamw_step(params, grads, state, hp)
        fpolar.adamw_step(ref, [g.float() for g in grads], ref_state, hp)
    assert all(torch.isfinite(p).all() for p in params)
    assert all(torch.equal(p.float(), r) for p, r in zip(params, ref))  # zero grads: no change at all
    grads = [torch.randn(5, dtype=dtype) * 1e-3, torch.randn(3, 3, dtype=dtype)]
    fpolar.adamw_step(params, grads, state, hp)
    fpolar.adamw_step(ref, [g.float() for g in grads], ref_state, hp)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert all((p.float() - r).abs().max().item() <= tol * r.abs().max().item() for p, r in zip(params, ref))


def test_grad_scale_and_found_inf():
    params = [torch.randn(6, 4), torch.randn(4, 6)]
    twin = [p.clone() for p in params]
    hp = fpolar.PolarGradHParams(lr=0.02, polar_dtype=torch.float64)
    state, twin_state = fpolar.init_state(params, hp), fpolar.init_state(twin, hp)
    grads = [torch.randn(6, 4), torch.randn(4, 6)]
    scale = torch.tensor(1024.0)
    fpolar.polargrad_step(params, [g * scale for g in grads], state, hp, grad_scale=scale, found_inf=torch.tensor(0.0))
    fpolar.polargrad_step(twin, grads, twin_state, hp)
    assert all((a - b).abs().max().item() < 1e-6 for a, b in zip(params, twin))
    before = [t.clone() for t in polar_tensors(params, state)]
    fpolar.polargrad_step(params, grads, state, hp, found_inf=torch.tensor(1.0))
    assert same_bits(polar_tensors(params, state), before) and state.skipped.item() == 1
    # found_inf is honoured under "propagate" too: it is the caller's decision, not a check
    hp_p = fpolar.PolarGradHParams(lr=0.02, nonfinite="propagate")
    fpolar.polargrad_step(params, grads, state, hp_p, found_inf=torch.tensor(1.0))
    assert same_bits(polar_tensors(params, state), before) and state.skipped.item() == 2
    a = [torch.randn(3)]
    ast = fpolar.init_adamw_state(a, fpolar.AdamWHParams())
    snap = [t.clone() for t in adamw_tensors(a, ast)]
    fpolar.adamw_step(a, [torch.randn(3)], ast, fpolar.AdamWHParams(), found_inf=torch.tensor([1.0]))
    assert same_bits(adamw_tensors(a, ast), snap) and ast.skipped.item() == 1
    with pytest.raises(TypeError, match="grad_scale must be a floating tensor, got torch.int64"):
        fpolar.polargrad_step(params, grads, state, hp, grad_scale=torch.tensor(2))


@pytest.mark.parametrize("compiled", [False, True])
def test_gated_lerp_keeps_every_bit_where_found(compiled):
    """The gated momentum write: where found, x keeps its bits (−0, subnormals, huge values) whatever y
    holds (NaN, ±inf); where not, it is exactly the ungated lerp. Eager (foreach + selects) and
    compiled (one select per tensor, aot_eager)."""
    from fpolar.nonfinite import gated_lerp_

    def run(xs, ys, found):
        gated_lerp_(xs, ys, 0.05, found)

    fn = torch.compile(run, backend="aot_eager", fullgraph=True) if compiled else run
    torch.manual_seed(0)
    xs = [torch.randn(5, 3), torch.randn(7)]
    xs[0][0, 0], xs[0][0, 1], xs[1][0], xs[1][1] = -0.0, 1e-40, -0.0, 3e38
    ys = [torch.randn(5, 3), torch.randn(7)]
    ys[0][1, 1], ys[1][2] = math.nan, -math.inf
    before = [x.clone() for x in xs]
    fn(xs, ys, torch.tensor(True))
    assert same_bits(xs, before)
    clean = [torch.randn(5, 3), torch.randn(7)]
    want = [x.lerp(y, 0.05) for x, y in zip(xs, clean)]
    fn(xs, clean, torch.tensor(False))
    assert same_bits(xs, want)


def test_agree_without_sharded_tensors_is_the_local_flag():
    """Plain tensors (one process, DDP-style replicas): no process group to agree over, no collective."""
    from fpolar.nonfinite_ranks import agree, shard_groups

    assert shard_groups([torch.zeros(2), None]) == []
    for value in (True, False):
        flag = torch.tensor(value)
        assert agree(flag, []) is flag
