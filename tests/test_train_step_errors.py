"""make_train_step's user errors say what to do and name params by module path ("0.weight")."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fpolar
from fpolar.compile import make_train_step

HP, AHP = fpolar.PolarGradHParams(lr=0.01), fpolar.AdamWHParams(lr=1e-3)


def _loss(m, x):
    return m(x).square().mean()


def test_batchnorm_under_func_points_to_autograd_and_changes_nothing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    step = make_train_step(model, _loss, HP, AHP, backward="func")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"modules with buffers in train mode: '1' \(BatchNorm1d\).*backward='autograd'"):
        step(torch.randn(8, 4))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert step.polar_state.step.item() == 0
    # the advice works: the autograd step trains the same model
    step = make_train_step(model, _loss, HP, AHP, backward="autograd")
    step(torch.randn(8, 4))
    assert not torch.equal(model[0].weight, before["0.weight"])


def test_a_bad_param_is_named_by_its_module_path():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[1].weight.data = model[1].weight.data.to(torch.float64).to(torch.complex128)
    with pytest.raises(TypeError, match=r"parameter '1.weight' has complex dtype"):
        make_train_step(model, _loss, HP, AHP)


def test_a_split_sending_a_vector_to_polargrad_names_it():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"split sent parameter '0.bias' of shape \(4,\) to PolarGrad"):
        make_train_step(model, _loss, HP, AHP, split=lambda name, p: True)
