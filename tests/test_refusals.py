"""Each bad input the hardening refuses: a clear error naming the value, raised before any tensor changes
(params, momentum, moments and step counts compared bitwise before and after the refused call)."""

import math

import pytest
import torch

import fpolar

from helpers import bitwise_equal


def polar_setup(shapes=((6, 4), (5, 5))):
    params = [torch.randn(s) for s in shapes]
    hp = fpolar.PolarGradHParams(lr=0.1)
    state = fpolar.init_state(params, hp)
    fpolar.polargrad_step(params, [torch.randn(s) for s in shapes], state, hp)  # non-zero momentum
    return params, state, hp


def adamw_setup(shapes=((3,), (4, 2))):
    params = [torch.randn(s) for s in shapes]
    hp = fpolar.AdamWHParams()
    state = fpolar.init_adamw_state(params, hp)
    fpolar.adamw_step(params, [torch.randn(s) for s in shapes], state, hp)
    return params, state, hp


def bits(tensors):
    return [t.detach().clone() for t in tensors]


def same_bits(a, b):
    return len(a) == len(b) and all(bitwise_equal(x, y) for x, y in zip(a, b))


def polar_tensors(params, state):
    return list(params) + list(state.buffers) + [state.step]


def adamw_tensors(params, state):
    return list(params) + list(state.exp_avg) + list(state.exp_avg_sq) + list(state.step)


@pytest.mark.parametrize("field", ["lr", "weight_decay", "extra_scale"])
def test_infinite_polar_scalars_refused(field):
    with pytest.raises(ValueError, match=f"{field} must be finite, got inf"):
        fpolar.PolarGradHParams(**{"lr": 0.1, field: math.inf})


@pytest.mark.parametrize("field", ["lr", "weight_decay", "eps"])
def test_infinite_adamw_scalars_refused(field):
    with pytest.raises(ValueError, match=f"{field} must be finite, got inf"):
        fpolar.AdamWHParams(**{field: math.inf})


def test_infinite_lr_tensor_refused():
    with pytest.raises(ValueError, match="lr must be finite, got inf"):
        fpolar.PolarGradHParams(lr=torch.tensor(math.inf))


def test_meta_lr_tensor_named():
    with pytest.raises(ValueError, match="lr is a tensor on the meta device"):
        fpolar.PolarGradHParams(lr=torch.tensor(0.1, device="meta"))
    with pytest.raises(ValueError, match="lr is a tensor on the meta device"):
        fpolar.AdamWHParams(lr=torch.tensor(0.1, device="meta"))


def test_duplicated_param_refused_naming_both_indices():
    params, state, hp = polar_setup(((6, 4), (5, 5), (6, 4)))
    before = bits(polar_tensors(params, state))
    dup = [params[0], params[1], params[0]]
    with pytest.raises(ValueError, match=r"params\[0\] and params\[2\] \(shape \(6, 4\)\) are the same tensor"):
        fpolar.polargrad_step(dup, [torch.randn(6, 4), torch.randn(5, 5), torch.randn(6, 4)], state, hp)
    assert same_bits(polar_tensors(params, state), before)


def test_aliased_param_refused():
    params, state, hp = adamw_setup(((3,), (3,)))
    before = bits(adamw_tensors(params, state))
    alias = [params[0], params[0].detach()]  # another tensor object over the same memory
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] \(shape \(3,\)\) are views of the same memory"):
        fpolar.adamw_step(alias, [torch.randn(3), torch.randn(3)], state, hp)
    assert same_bits(adamw_tensors(params, state), before)


def test_expanded_param_refused():
    base = torch.randn(1, 5)
    p = base.expand(4, 5)
    hp = fpolar.AdamWHParams()
    state = fpolar.init_adamw_state([p], hp)
    before = bits([base] + adamw_tensors([p], state))
    with pytest.raises(ValueError, match=r"params\[0\] of shape \(4, 5\) has stride 0 in dim 0"):
        fpolar.adamw_step([p], [torch.randn(4, 5)], state, hp)
    assert same_bits([base] + adamw_tensors([p], state), before)


def test_inference_param_refused_outside_inference_mode():
    with torch.inference_mode():
        p = torch.randn(6, 4)
    hp = fpolar.PolarGradHParams(lr=0.1)
    state = fpolar.init_state([p], hp)
    before = bits(polar_tensors([p], state))
    with pytest.raises(ValueError, match=r"params\[0\] was created under torch.inference_mode"):
        fpolar.polargrad_step([p], [torch.randn(6, 4)], state, hp)
    assert same_bits(polar_tensors([p], state), before)


@pytest.mark.parametrize(
    "kw, err, match",
    [
        (dict(polar="svd", polar_dtype=torch.bfloat16), ValueError, "svd runs in float32 or float64, got polar_dtype=torch.bfloat16"),
        (dict(polar="svd", polar_dtype=torch.float8_e4m3fn), ValueError, "svd runs in float32 or float64"),
        (dict(polar="qdwh", qdwh_l0=1e-300), ValueError, "qdwh_l0=1e-300 is too small"),
        (dict(polar="qdwh", qdwh_l0="small"), TypeError, "qdwh_l0 must be a float in \\(0, 1\\] or None, got str 'small'"),
        (dict(eps=0.0), ValueError, "eps must be a finite float > 0, got 0.0"),
        (dict(eps=math.inf), ValueError, "eps must be a finite float > 0, got inf"),
        (dict(coefficients=[(3.0, "b", 1.0)]), TypeError, r"coefficients\[0\] = \(3.0, 'b', 1.0\) holds str 'b', not a real number"),
        (dict(nonfinite="ignore"), ValueError, "unknown nonfinite 'ignore'"),
    ],
)
def test_settings_that_could_only_fail_mid_step_are_refused_at_construction(kw, err, match):
    with pytest.raises(err, match=match):
        fpolar.PolarGradHParams(lr=0.1, **kw)


def test_adamw_eps_must_be_positive():
    with pytest.raises(ValueError, match="eps must be > 0.0, got 0.0"):
        fpolar.AdamWHParams(eps=0.0)


def test_leaf_params_that_require_grad_step_without_no_grad():
    """The steps run their math under no_grad, like torch.optim: no error, and the same result."""
    ps = [torch.randn(6, 4, requires_grad=True)]
    ref = [ps[0].detach().clone()]
    g = [torch.randn(6, 4)]
    hp = fpolar.PolarGradHParams(lr=0.1)
    fpolar.polargrad_step(ps, g, fpolar.init_state(ps, hp), hp)
    fpolar.polargrad_step(ref, g, fpolar.init_state(ref, hp), hp)
    assert torch.equal(ps[0].detach(), ref[0]) and ps[0].requires_grad and ps[0].grad_fn is None
    a = [torch.randn(5, requires_grad=True)]
    aref = [a[0].detach().clone()]
    ga = [torch.randn(5)]
    ahp = fpolar.AdamWHParams()
    fpolar.adamw_step(a, ga, fpolar.init_adamw_state(a, ahp), ahp)
    fpolar.adamw_step(aref, ga, fpolar.init_adamw_state(aref, ahp), ahp)
    assert torch.equal(a[0].detach(), aref[0])


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda st: st.momentum.__setitem__(1, torch.zeros(4, 5)), r"state.momentum\[1\] must be a view of state.buffers"),
        (lambda st: st.momentum.__setitem__(0, torch.zeros(6, 4, dtype=torch.float64)), r"state.momentum\[0\] must be a view"),
        (lambda st: st.momentum.__setitem__(0, torch.zeros(6, 4)), r"state.momentum\[0\] must be a view"),
        (lambda st: st.buffers.__setitem__(0, torch.zeros(2, 6, 4)), r"state.buffers\[0\] must be a floating tensor of shape"),
        (lambda st: setattr(st, "step", torch.zeros((), dtype=torch.int32)), "state.step must be a 0-d torch.float32 tensor"),
    ],
)
def test_edited_polar_state_is_refused_before_any_change(edit, match):
    params, state, hp = polar_setup()
    before = bits(polar_tensors(params, state))
    edit(state)
    with pytest.raises(ValueError, match=match):
        fpolar.polargrad_step(params, [torch.randn(6, 4), torch.randn(5, 5)], state, hp)
    assert same_bits(list(params), before[: len(params)])


def test_edited_adamw_state_is_refused_before_any_change():
    params, state, hp = adamw_setup()
    before = bits(adamw_tensors(params, state))
    state.exp_avg_sq[1] = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"AdamW state.exp_avg_sq\[1\] must have params\[1\]'s shape \(4, 2\)"):
        fpolar.adamw_step(params, [torch.randn(3), torch.randn(4, 2)], state, hp)
    assert same_bits(list(params), before[: len(params)])
