"""One routing rule (``fpolar.routing.is_matrix``) for every user: fpolar.optim, make_train_step's
default split, param_groups and the demo send the same params to the polar step and to AdamW."""

from __future__ import annotations

from typing import Dict, Set, Tuple

import pytest
import torch
from torch import nn

import fpolar
import fpolar.optim
from fpolar.apps.demo import split as demo_split
from fpolar.compile import make_train_step, matrices_to_polar
from fpolar.routing import is_matrix


class Tricky(nn.Module):
    """One param of each kind whose routing is easy to get wrong."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.empty = nn.Parameter(torch.randn(0, 4, generator=g))  # a layer sized to zero
        self.stack = nn.Parameter(torch.randn(3, 4, 4, generator=g))  # 3 matrices
        self.conv = nn.Conv2d(3, 4, 2, bias=True)  # weight (4, 3, 2, 2), bias (4,)
        self.embed = nn.Embedding(10, 4)
        self.scalar = nn.Parameter(torch.randn((), generator=g))
        self.norm = nn.LayerNorm(4)  # weight, bias: 1-D

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean((2, 3))  # (b, 4)
        y = y + self.embed(idx) + torch.einsum("kmn,bm->bn", self.stack, y)
        y = y + (self.empty.sum(0) if self.empty.numel() else 0.0)
        return self.norm(y * self.scalar).square().mean()


EXPECTED_POLAR = {"stack", "conv.weight", "embed.weight"}
EXPECTED_ADAMW = {"empty", "conv.bias", "scalar", "norm.weight", "norm.bias"}


def _names(model: nn.Module, params) -> Set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


def _batch() -> Tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 5, 5, generator=g), torch.randint(0, 10, (2,), generator=g)


def routes() -> Dict[str, Tuple[Set[str], Set[str]]]:
    model = Tricky()
    out = {}

    opt = fpolar.optim.Muon(list(model.parameters()), lr=0.02)
    polar = [p for g in opt.param_groups if g["algorithm"] == "polargrad" for p in g["params"]]
    adamw = [p for g in opt.param_groups if g["algorithm"] == "adamw" for p in g["params"]]
    out["fpolar.optim.Muon"] = (_names(model, polar), _names(model, adamw))

    groups = fpolar.optim.param_groups(model, adamw_for=())
    by_alg = {g["algorithm"]: g["params"] for g in groups}
    out["param_groups(adamw_for=())"] = (_names(model, by_alg["polargrad"]), _names(model, by_alg["adamw"]))

    step = make_train_step(
        model, lambda m, x, i: m(x, i), fpolar.PolarGradHParams(lr=0.01), fpolar.AdamWHParams(lr=1e-3)
    )
    out["make_train_step"] = (set(step.polar_names), set(step.adamw_names))

    mats, rest = demo_split(model)
    out["demo"] = (_names(model, mats), _names(model, rest))

    named = list(model.named_parameters())
    out["is_matrix"] = ({n for n, p in named if is_matrix(p)}, {n for n, p in named if not is_matrix(p)})
    out["matrices_to_polar"] = (
        {n for n, p in named if matrices_to_polar(n, p)},
        {n for n, p in named if not matrices_to_polar(n, p)},
    )
    return out


def test_every_user_routes_the_tricky_params_alike():
    for user, (polar, adamw) in routes().items():
        assert (polar, adamw) == (EXPECTED_POLAR, EXPECTED_ADAMW), user


@pytest.mark.parametrize("shape, expected", [((0, 4), False), ((4, 0), False), ((2, 0, 3), False),
                                             ((3, 4), True), ((1, 1), True), ((2, 3, 4), True),
                                             ((4, 3, 2, 2), True), ((4,), False), ((), False), ((0,), False)])
def test_is_matrix(shape, expected):
    assert is_matrix(torch.empty(shape)) is expected


def test_a_model_with_an_empty_layer_trains_on_both_paths():
    """The empty param goes to AdamW, where a step is a no-op; the other params move."""
    x, idx = _batch()

    model = Tricky()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = make_train_step(model, lambda m, x, i: m(x, i), fpolar.PolarGradHParams(lr=0.01), fpolar.AdamWHParams(lr=1e-3))
    step(x, idx)
    for n, p in model.named_parameters():
        assert (p.shape == before[n].shape) and (p.numel() == 0 or not torch.equal(p, before[n])), n

    model = Tricky()
    opt = fpolar.optim.Muon(list(model.parameters()), lr=0.02)
    model(x, idx).backward()
    opt.step()
    for n, p in model.named_parameters():
        assert p.numel() == 0 or not torch.equal(p, before[n]), n
