"""``fpolar.optim`` checks a group's step inputs only when they read differently from the last ones
that passed (``fpolar.optim.checked_inputs``): every change the checks refuse is still refused after
steps that passed, before any tensor changes, and unchanged inputs skip the checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fpolar.optim as fo
import fpolar.optim.base as base
from fpolar.optim.checked_inputs import step_inputs_fingerprint


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.Linear(16, 4))


def _fresh_grads(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def _stepped_twice():
    model = _model()
    opt = fo.Muon(fo.param_groups(model), lr=0.02, compiled=False)
    for seed in (1, 2):
        _fresh_grads(model, seed)
        opt.step()
    _fresh_grads(model, 3)
    return model, opt


def _snapshot(model: nn.Module, opt) -> list:
    tensors = [p.detach().clone() for p in model.parameters()]
    for rt in opt._runtime:
        st = rt.state
        if hasattr(st, "buffers"):
            tensors += [b.clone() for b in st.buffers] + [st.step.clone()]
        else:
            tensors += [t.clone() for t in st.exp_avg + st.exp_avg_sq + st.step]
    return tensors


# Each change: what it does to the model or optimizer after two good steps, and the error it must bring.
def _expand_weight(model, opt):
    model[2].weight.data = torch.zeros(1, 16).expand(16, 16)


def _reshape_weight(model, opt):
    model[2].weight.data = torch.randn(17, 16)


def _inference_weight(model, opt):
    with torch.inference_mode():
        model[2].weight.data = torch.randn(16, 16)


def _alias_weights(model, opt):
    model[4].weight.data = model[2].weight.data  # two 16×16 params over one memory: stepped twice


def _swap_momentum(model, opt):
    st = next(rt.state for rt in opt._runtime if rt.algorithm == "polargrad")
    st.momentum[0] = torch.zeros_like(st.momentum[0])


def _swap_adamw_moment(model, opt):
    st = next(rt.state for rt in opt._runtime if rt.algorithm == "adamw")
    st.exp_avg[0] = torch.zeros(3)


def _retype_adamw_step(model, opt):
    st = next(rt.state for rt in opt._runtime if rt.algorithm == "adamw")
    st.step[0] = torch.zeros((), dtype=torch.float64)


CHANGES = {
    "expanded param": (_expand_weight, ValueError, "stride 0"),
    "param of another shape": (_reshape_weight, ValueError, "shape"),
    "inference-mode param": (_inference_weight, ValueError, "inference_mode"),
    "two params over one memory": (_alias_weights, ValueError, "same memory"),
    "momentum entry swapped": (_swap_momentum, ValueError, "momentum"),
    "AdamW moment swapped": (_swap_adamw_moment, ValueError, "exp_avg"),
    "AdamW step retyped": (_retype_adamw_step, ValueError, "step"),
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_a_refused_change_after_good_steps_is_refused_before_any_write(name):
    change, error, words = CHANGES[name]
    model, opt = _stepped_twice()
    change(model, opt)
    before = _snapshot(model, opt)
    # refused by the optimizer's own pass over every group, before any group steps (the eager math
    # would check again inside the functional step; a captured step would not)
    with pytest.raises(error, match=words):
        opt._prepare()
    with pytest.raises(error, match=words):
        opt.step()
    after = _snapshot(model, opt)
    assert len(before) == len(after)
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_unchanged_inputs_skip_the_checks_and_a_changed_static_hparam_checks_again(monkeypatch):
    model, opt = _stepped_twice()
    calls = []
    real = base.check_polargrad_inputs
    monkeypatch.setattr(base, "check_polargrad_inputs", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    for seed in (4, 5):
        _fresh_grads(model, seed)  # new grad tensors, same metadata
        opt.step()
    assert calls == []
    opt.param_groups[0]["lr"] = 0.01  # a scheduled scalar: not read by the checks
    opt.step()
    assert calls == []
    muon = next(g for g in opt.param_groups if g.get("algorithm", "polargrad") == "polargrad" and "momentum" in g)
    muon["momentum"] = 0.9  # a static hparam: new hparams object, checked again
    opt.step()
    assert len(calls) == 1
    opt.step()
    assert len(calls) == 1


def test_fingerprint_declines_what_it_cannot_see():
    model, opt = _stepped_twice()
    rt = next(rt for rt in opt._runtime if rt.algorithm == "polargrad")
    grads = [p.grad for p in rt.params]
    assert step_inputs_fingerprint(rt.params, grads, rt.state, rt.hparams) is not None
    assert step_inputs_fingerprint(rt.params, grads, None, rt.hparams) is None  # no state yet

    class Sub(torch.Tensor):
        pass

    subclassed = [rt.params[0].detach().as_subclass(Sub)] + list(rt.params[1:])
    assert step_inputs_fingerprint(subclassed, grads, rt.state, rt.hparams) is None
    a = step_inputs_fingerprint(rt.params, grads, rt.state, rt.hparams)
    b = step_inputs_fingerprint(rt.params, [None] + grads[1:], rt.state, rt.hparams)
    assert a.same_as(a) and not a.same_as(b) and not a.same_as(None)
