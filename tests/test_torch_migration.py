"""A torch.optim.Muon (+ torch.optim.AdamW) run continued by fpolar.optim.Muon, and back.

torch.optim.Muon iterates Newton–Schulz in bf16 (also on CPU), fpolar in fp32 on CPU: to compare the
algorithms rather than the roundings, torch's iteration is patched to run the same arithmetic in fp32.
Then both sides agree to ~1e-5 after several steps (tolerances below)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.optim._muon as torch_muon

import fpolar.optim
from fpolar.optim import Muon

pytestmark = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch ≥ 2.9")

SHAPES = [(16, 12), (12, 12), (12, 20), (16, 12)]
OTHER_SHAPES = [(12,), (20, 6)]  # a bias and an "embedding" for AdamW
TOL = dict(rtol=0, atol=2e-5)


def _ns_fp32(grad, ns_coefficients, ns_steps, eps):
    """torch.optim.Muon's _zeropower_via_newtonschulz, line for line, in fp32 instead of bf16."""
    a, b, c = ns_coefficients
    x = grad.float()
    if grad.size(0) > grad.size(1):
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


@pytest.fixture
def fp32_torch_muon(monkeypatch):
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", _ns_fp32)


def _params(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g) * 0.5) for s in shapes]


def _grads(params, gen):
    return [torch.randn(p.shape, generator=gen) for p in params]


def _set(params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _torch_pair(mats, others, **muon_kw):
    muon = torch.optim.Muon(mats, lr=0.02, weight_decay=0.1, momentum=0.9, **muon_kw)
    adamw = torch.optim.AdamW(others, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01)
    return muon, adamw


@pytest.mark.parametrize("adjust_lr_fn, nesterov", [(None, True), ("match_rms_adamw", False)])
def test_load_torch_muon_checkpoint_then_steps_equal_torch(fp32_torch_muon, adjust_lr_fn, nesterov):
    mats = _params(SHAPES, 0)
    muon = torch.optim.Muon(mats, lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        _set(mats, _grads(mats, gen))
        muon.step()
    ours = [torch.nn.Parameter(p.detach().clone()) for p in mats]
    opt = Muon(ours)  # default settings: the checkpoint's replace them
    opt.load_state_dict(_roundtrip(muon.state_dict()))
    assert opt.param_groups[0]["adjust_lr_fn"] == adjust_lr_fn and opt.param_groups[0]["momentum"] == 0.9
    assert opt.param_groups[0]["lr"] == 0.02 and opt.param_groups[0]["nesterov"] is nesterov
    for p, q in zip(mats, ours):
        assert torch.equal(opt.state[q]["momentum_buffer"], muon.state[p]["momentum_buffer"])
    for _ in range(4):
        g = _grads(mats, gen)
        _set(mats, g)
        _set(ours, g)
        muon.step()
        opt.step()
    for p, q in zip(mats, ours):
        torch.testing.assert_close(q, p, **TOL)


def test_from_torch_pair_steps_equal_torch(fp32_torch_muon):
    mats, others = _params(SHAPES, 0), _params(OTHER_SHAPES, 2)
    muon, adamw = _torch_pair(mats, others)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        _set(mats + others, _grads(mats + others, gen))
        muon.step()
        adamw.step()
    snapshot = copy.deepcopy((muon.state_dict(), adamw.state_dict()))
    opt = Muon.from_torch(muon, adamw)
    assert [g["algorithm"] for g in opt.param_groups] == ["polargrad", "adamw"]
    assert opt.param_groups[1]["weight_decay"] == 0.01 and opt.param_groups[1]["betas"] == (0.9, 0.95)
    # the torch optimizers are not modified, and the params are the same tensors
    assert torch.equal(muon.state_dict()["state"][0]["momentum_buffer"], snapshot[0]["state"][0]["momentum_buffer"])
    assert opt.param_groups[0]["params"][0] is mats[0]
    ref = [p.detach().clone().requires_grad_() for p in mats + others]
    ref_muon, ref_adamw = _torch_pair(ref[: len(mats)], ref[len(mats):])
    ref_muon.load_state_dict(snapshot[0])
    ref_adamw.load_state_dict(snapshot[1])
    for _ in range(4):
        g = _grads(mats + others, gen)
        _set(mats + others, g)
        _set(ref, g)
        opt.step()
        ref_muon.step()
        ref_adamw.step()
    for p, q in zip(mats + others, ref):
        torch.testing.assert_close(p, q, **TOL)


def test_fpolar_checkpoint_into_torch_muon(fp32_torch_muon):
    mats, others = _params(SHAPES, 0), _params(OTHER_SHAPES, 2)
    opt = Muon([{"params": mats}, {"params": others, "algorithm": "adamw", "lr": 3e-3, "weight_decay": 0.01}],
               lr=0.02, momentum=0.9)
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        _set(mats + others, _grads(mats + others, gen))
        opt.step()
    twin = [p.detach().clone().requires_grad_() for p in mats + others]
    muon = torch.optim.Muon(twin[: len(mats)])
    adamw = torch.optim.AdamW(twin[len(mats):])
    muon_sd, adamw_sd = opt.torch_state_dicts(muon, adamw)
    muon.load_state_dict(_roundtrip(muon_sd))
    adamw.load_state_dict(_roundtrip(adamw_sd))
    assert muon.param_groups[0]["momentum"] == 0.9 and adamw.param_groups[0]["lr"] == 3e-3
    for _ in range(4):
        g = _grads(mats + others, gen)
        _set(mats + others, g)
        _set(twin, g)
        opt.step()
        muon.step()
        adamw.step()
    for p, q in zip(mats + others, twin):
        torch.testing.assert_close(q, p, **TOL)


def test_without_the_patch_torch_differs_by_bf16_rounding():
    """What users see unpatched: torch.optim.Muon's bf16 iteration vs fpolar's fp32, a percent-level gap."""
    mats = _params(SHAPES, 0)
    start = [p.detach().clone() for p in mats]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in mats]
    muon, opt = torch.optim.Muon(mats, lr=0.02), Muon(ours, lr=0.02)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        g = _grads(mats, gen)
        _set(mats, g)
        _set(ours, g)
        muon.step()
        opt.step()
    # difference between the runs, relative to how far the params moved
    rel = max(((p - q).norm() / (q - s).norm()).item() for p, q, s in zip(mats, ours, start))
    assert 1e-4 < rel < 5e-2, rel


def test_mismatched_torch_checkpoint_is_refused_and_changes_nothing(fp32_torch_muon):
    mats = _params(SHAPES, 0)
    muon = torch.optim.Muon(mats[:3], lr=0.02)
    _set(mats, _grads(mats, torch.Generator().manual_seed(6)))
    muon.step()
    opt = Muon([torch.nn.Parameter(p.detach().clone()) for p in mats], lr=0.05)
    opt.step()
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=r"has 3 params but this optimizer's group 0 \('polargrad'\) has 4"):
        opt.load_state_dict(muon.state_dict())
    adamw = torch.optim.AdamW(_params(OTHER_SHAPES, 2), amsgrad=True)
    opt2 = Muon([{"params": mats}, {"params": adamw.param_groups[0]["params"], "algorithm": "adamw"}])
    with pytest.raises(ValueError, match="amsgrad=True"):
        opt2.load_torch_state_dicts(None, adamw.state_dict())
    after = opt.state_dict()
    assert after["param_groups"][0]["lr"] == 0.05
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k]["momentum_buffer"], v["momentum_buffer"])


def test_torch_cannot_express_nuclear_scale():
    mats = _params(SHAPES, 0)
    opt = Muon(mats, scale="nuclear")
    with pytest.raises(ValueError, match="scale='nuclear', which torch.optim.Muon cannot express"):
        opt.torch_state_dicts(torch.optim.Muon([p.detach().clone().requires_grad_() for p in mats]))


def test_polargrad_names_the_way_for_a_torch_checkpoint():
    mats = _params(SHAPES, 0)
    muon = torch.optim.Muon(mats)
    with pytest.raises(ValueError, match="loads into fpolar.optim.Muon"):
        fpolar.optim.PolarGrad(mats, lr=1e-3).load_state_dict(muon.state_dict())


class _TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(24, 12)
        self.up = torch.nn.Linear(12, 20)
        self.down = torch.nn.Linear(20, 12)
        self.lm_head = torch.nn.Linear(12, 24, bias=False)

    def forward(self, idx):
        x = self.embed(idx)
        return self.lm_head(x + self.down(torch.relu(self.up(x))))


def test_readme_switch_is_the_same_training(fp32_torch_muon):
    """README: ``torch.optim.Muon(hidden, lr=0.02) + torch.optim.AdamW(rest, lr=3e-3)`` is
    ``fpolar.optim.Muon(param_groups(model, adamw={"lr": 3e-3}), lr=0.02)``: the AdamW group gets
    torch.optim.AdamW's weight_decay 0.01, not Muon's 0.1."""
    torch.manual_seed(0)
    a = _TinyLM()
    b = copy.deepcopy(a)
    hidden = [a.up.weight, a.down.weight]
    rest = [p for p in a.parameters() if all(p is not h for h in hidden)]
    before = [torch.optim.Muon(hidden, lr=0.02), torch.optim.AdamW(rest, lr=3e-3)]
    after = [Muon(fpolar.optim.param_groups(b, adamw={"lr": 3e-3}), lr=0.02)]
    assert after[0].param_groups[1]["weight_decay"] == 0.01
    gen = torch.Generator().manual_seed(7)
    for _ in range(5):
        idx = torch.randint(0, 24, (4, 6), generator=gen)
        for model, opts in ((a, before), (b, after)):
            for o in opts:
                o.zero_grad()
            torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
            for o in opts:
                o.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, **TOL)
