"""Bad input raises a clear error naming the bad value, before any tensor is touched."""

import pytest
import torch

import fpolar


def setup(shapes=((6, 4), (5, 5))):
    params = [torch.randn(s) for s in shapes]
    grads = [torch.randn(s) for s in shapes]
    hp = fpolar.PolarGradHParams(lr=0.1)
    state = fpolar.init_state(params, hp)
    # give the state non-zero momentum so "untouched" is a real check
    fpolar.polargrad_step(params, grads, state, hp)
    return params, grads, state, hp


def snapshot(params, state):
    return [p.clone() for p in params], [b.clone() for b in state.buffers], state.step.clone()


def assert_untouched(params, state, snap):
    ps, bs, step = snap
    assert all(torch.equal(a, b) for a, b in zip(params, ps))
    assert all(torch.equal(a, b) for a, b in zip(state.buffers, bs))
    assert torch.equal(state.step, step)


CASES = [
    ("fewer grads", lambda p, g: (p, g[:1]), ValueError, "got 2 params but 1 grads"),
    ("grad shape", lambda p, g: (p, [g[0], torch.randn(5, 6)]), ValueError, r"grads\[1\] has shape \(5, 6\) but params\[1\] has shape \(5, 5\)"),
    ("grad dtype", lambda p, g: (p, [g[0], g[1].double()]), ValueError, r"grads\[1\] has dtype torch.float64"),
    ("int grad", lambda p, g: (p, [g[0], g[1].long()]), TypeError, r"grads\[1\] has dtype torch.int64"),
    ("complex grad", lambda p, g: (p, [g[0], g[1].to(torch.complex64)]), TypeError, r"grads\[1\] has complex dtype"),
    ("sparse grad", lambda p, g: (p, [g[0].to_sparse(), g[1]]), TypeError, r"grads\[0\] is a torch.sparse_coo tensor"),
    ("grads not a list", lambda p, g: (p, g[0]), TypeError, "grads must be a list or tuple"),
]


@pytest.mark.parametrize("name, mutate, exc, match", CASES, ids=[c[0] for c in CASES])
def test_bad_step_inputs_raise_and_change_nothing(name, mutate, exc, match):
    params, grads, state, hp = setup()
    snap = snapshot(params, state)
    bad_p, bad_g = mutate(params, grads)
    with pytest.raises(exc, match=match):
        fpolar.polargrad_step(bad_p, bad_g, state, hp)
    assert_untouched(params, state, snap)


def test_one_dim_param_rejected_before_anything_changes():
    params, grads, state, hp = setup()
    snap = snapshot(params, state)
    bias = torch.randn(4)
    with pytest.raises(ValueError, match=r"params\[2\] has shape \(4,\) \(1-D\)"):
        fpolar.polargrad_step(params + [bias], grads + [torch.randn(4)], state, hp)
    assert_untouched(params, state, snap)
    with pytest.raises(ValueError, match="0-D"):
        fpolar.init_state([torch.tensor(1.0)])


def test_state_for_other_params_rejected():
    params, grads, state, hp = setup()
    snap = snapshot(params, state)
    other = [torch.randn(6, 4), torch.randn(5, 6)]
    with pytest.raises(ValueError, match=r"state was built for params\[1\] of shape \(5, 5\)"):
        fpolar.polargrad_step(other, [torch.randn(6, 4), torch.randn(5, 6)], state, hp)
    with pytest.raises(ValueError, match="state was built for 2 params but got 1"):
        fpolar.polargrad_step(params[:1], grads[:1], state, hp)
    assert_untouched(params, state, snap)


def test_integer_param_rejected():
    with pytest.raises(TypeError, match=r"params\[0\] has dtype torch.int32"):
        fpolar.init_state([torch.ones(3, 3, dtype=torch.int32)])


def test_wrong_state_or_hparams_type():
    params, grads, state, hp = setup()
    with pytest.raises(TypeError, match="hparams must be PolarGradHParams"):
        fpolar.polargrad_step(params, grads, state, fpolar.AdamWHParams())
    with pytest.raises(TypeError, match="state must be a PolarGradState"):
        fpolar.polargrad_step(params, grads, fpolar.init_adamw_state(params), hp)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"lr": -0.1}, ValueError, "lr must be ≥ 0.0, got -0.1"),
        ({"lr": float("nan")}, ValueError, "lr is NaN"),
        ({"lr": torch.tensor([0.1, 0.2])}, ValueError, r"lr must be a float or a 0-d tensor, got a tensor of shape \(2,\)"),
        ({"lr": torch.tensor(1)}, TypeError, "lr tensor must have a real floating dtype"),
        ({"lr": "0.1"}, TypeError, "lr must be a float or a 0-d tensor, got str"),
        ({"lr": 0.1, "momentum": 1.0}, ValueError, "momentum must be < 1.0, got 1.0"),
        ({"lr": 0.1, "momentum": -0.5}, ValueError, "momentum must be ≥ 0.0, got -0.5"),
        ({"lr": 0.1, "weight_decay": -1.0}, ValueError, "weight_decay must be ≥ 0.0, got -1.0"),
        ({"lr": 0.1, "weight_decay_mode": "adamw"}, ValueError, "unknown weight_decay_mode 'adamw'"),
        ({"lr": 0.1, "order": "first"}, ValueError, "unknown order 'first'"),
        ({"lr": 0.1, "scale": "nuke"}, ValueError, "unknown scale 'nuke'"),
        ({"lr": 0.1, "polar": "eig"}, ValueError, "unknown polar method 'eig'"),
        ({"lr": 0.1, "coefficients": "fastest"}, ValueError, "unknown coefficients 'fastest'"),
        ({"lr": 0.1, "ns_steps": -2}, ValueError, "ns_steps must be ≥ 0, got -2"),
        ({"lr": 0.1, "ns_steps": 2.5}, TypeError, "ns_steps must be an int or None, got 2.5"),
        ({"lr": 0.1, "nesterov": 1}, TypeError, "nesterov must be a bool, got 1"),
        ({"lr": 0.1, "polar": "qdwh", "polar_dtype": torch.bfloat16}, ValueError, "qdwh runs in float32 or float64"),
        ({"lr": 0.1, "polar_dtype": torch.int8}, TypeError, "polar dtype must be a floating torch.dtype"),
    ],
)
def test_invalid_hparams(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fpolar.PolarGradHParams(**kwargs)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"lr": -1.0}, ValueError, "lr must be ≥ 0.0, got -1.0"),
        ({"betas": (0.9, 1.0)}, ValueError, r"betas\[1\] must be < 1.0, got 1.0"),
        ({"betas": (0.9,)}, ValueError, "betas must be a pair"),
        ({"eps": -1e-8}, ValueError, "eps must be ≥ 0.0"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay must be ≥ 0.0"),
    ],
)
def test_invalid_adamw_hparams(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fpolar.AdamWHParams(**kwargs)


def test_hparams_are_frozen():
    hp = fpolar.PolarGradHParams(lr=0.1)
    with pytest.raises(Exception):
        hp.lr = 0.2  # type: ignore[misc]
