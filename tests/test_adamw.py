"""adamw_step against torch.optim.AdamW."""

import pytest
import torch

import fpolar

SHAPES = [(7,), (4, 5), (3, 2, 2), ()]


@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("tensor_lr", [False, True])
def test_matches_torch_adamw(wd, tensor_lr):
    params = [torch.randn(s) for s in SHAPES]
    ref = [p.clone().requires_grad_() for p in params]
    opt = torch.optim.AdamW(ref, lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd, foreach=False)
    hp = fpolar.AdamWHParams(lr=torch.tensor(3e-3) if tensor_lr else 3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd)
    state = fpolar.init_adamw_state(params, hp)
    for _ in range(10):
        grads = [torch.randn(s) for s in SHAPES]
        for r, g in zip(ref, grads):
            r.grad = g.clone()
        opt.step()
        fpolar.adamw_step(params, grads, state, hp)
    for p, r in zip(params, ref):
        assert (p - r.detach()).abs().max().item() < 1e-6
    assert all(s.item() == 10 for s in state.step)


def test_none_grad_keeps_param_and_state():
    params = [torch.randn(3), torch.randn(4)]
    hp = fpolar.AdamWHParams()
    state = fpolar.init_adamw_state(params, hp)
    before = params[1].clone()
    fpolar.adamw_step(params, [torch.randn(3), None], state, hp)
    assert torch.equal(params[1], before)
    assert state.step[1].item() == 0 and state.step[0].item() == 1


def test_bad_adamw_inputs_change_nothing():
    params = [torch.randn(3), torch.randn(4)]
    hp = fpolar.AdamWHParams()
    state = fpolar.init_adamw_state(params, hp)
    snap = [p.clone() for p in params]
    with pytest.raises(ValueError, match=r"grads\[1\] has shape \(5,\) but params\[1\] has shape \(4,\)"):
        fpolar.adamw_step(params, [torch.randn(3), torch.randn(5)], state, hp)
    with pytest.raises(ValueError, match="AdamW state was built for 2 params but got 1"):
        fpolar.adamw_step(params[:1], [torch.randn(3)], state, hp)
    assert all(torch.equal(a, b) for a, b in zip(params, snap))
    assert all(s.item() == 0 for s in state.step)
