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
