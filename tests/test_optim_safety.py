"""fpolar.optim: a step() with a non-finite grad anywhere changes nothing and is counted; every group is
checked before any steps; bad scalars and checkpoints are refused with nothing changed."""

import copy
import math

import pytest
import torch
from torch import nn

import fpolar.optim
from helpers import bitwise_equal


def model_and_opt(**kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    opt = fpolar.optim.PolarGrad(model.parameters(), lr=0.02, **kw)
    return model, opt


def fill_grads(model, bad_at=None, value=math.nan):
    for i, p in enumerate(model.parameters()):
        p.grad = torch.randn_like(p)
        if i == bad_at:
            p.grad.view(-1)[0] = value


def everything(model, opt):
    out = [p.detach().clone() for p in model.parameters()]
    for st in opt.state.values():
        out += [v.detach().clone() for v in st.values() if isinstance(v, torch.Tensor)]
    return out


def same(a, b):
    return len(a) == len(b) and all(bitwise_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("bad_at, value", [(0, math.nan), (3, math.inf), (1, -math.inf)])
def test_nonfinite_grad_skips_the_whole_step(bad_at, value):
    model, opt = model_and_opt()
    twin = copy.deepcopy(model)
    twin_opt = fpolar.optim.PolarGrad(twin.parameters(), lr=0.02)
    fill_grads(model)
    for p, q in zip(model.parameters(), twin.parameters()):
        q.grad = p.grad.clone()
    opt.step()
    twin_opt.step()
    before = everything(model, opt)
    fill_grads(model, bad_at, value)  # the bad grad is in one group; every group must keep its bits
    opt.step()
    assert same(everything(model, opt), before)
    assert opt.skipped_steps.item() == 1
    fill_grads(model)
    for p, q in zip(model.parameters(), twin.parameters()):
        q.grad = p.grad.clone()
    opt.step()
    twin_opt.step()
    assert same(everything(model, opt), everything(twin, twin_opt))
    assert twin_opt.skipped_steps.item() == 0


def test_propagate_mode_lets_nan_through():
    model, opt = model_and_opt()
    opt.nonfinite = "propagate"
    fill_grads(model, 0)
    opt.step()
    assert torch.isnan(next(model.parameters())).any()


def test_grad_scaler_keeps_working():
    model, opt = model_and_opt()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randn(8, 6)
    loss = model(x).square().mean()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    before = everything(model, opt)
    opt.zero_grad()
    scaler.scale(model(x).square().mean()).backward()
    next(model.parameters()).grad.view(-1)[0] = math.inf
    scaler.step(opt)  # the scaler sees the inf and does not call opt.step()
    scaler.update()
    assert same(everything(model, opt), before) and scaler.get_scale() == 2.0**9


def test_a_failing_group_leaves_earlier_groups_untouched():
    torch.manual_seed(0)
    a, b = nn.Linear(6, 5), nn.Linear(5, 3)
    opt = fpolar.optim.PolarGrad(
        [{"params": list(a.parameters())}, {"params": [b.weight], "kernels": "triton"}], lr=0.02
    )
    fill_grads(a)
    b.weight.grad = torch.randn_like(b.weight)
    before = [p.detach().clone() for p in [*a.parameters(), b.weight]]
    with pytest.raises(ValueError, match=r"param_groups\[2\]: kernels='triton' needs CUDA tensors"):
        opt.step()
    assert same([p.detach().clone() for p in [*a.parameters(), b.weight]], before) and not opt.state


def test_nan_lr_tensor_set_after_construction_is_refused():
    model, opt = model_and_opt()
    fill_grads(model)
    opt.step()
    before = everything(model, opt)
    opt.param_groups[0]["lr"] = torch.tensor(math.nan)
    fill_grads(model)
    with pytest.raises(ValueError, match=r"param_groups\[0\]: lr tensor holds nan"):
        opt.step()
    assert same(everything(model, opt), before)
    opt.param_groups[0]["lr"] = math.inf
    with pytest.raises(ValueError, match=r"param_groups\[0\]: lr must be finite, got inf"):
        opt.step()
    assert same(everything(model, opt), before)


@pytest.mark.parametrize("key", ["exp_avg", "step", "momentum_buffer"])
def test_checkpoint_with_a_meta_tensor_is_refused_before_any_copy(key):
    model, opt = model_and_opt()
    fill_grads(model)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    fill_grads(model)
    opt.step()
    before = everything(model, opt)
    index = max(i for i, st in saved["state"].items() if key in st)  # the last group holding the key
    saved["state"][index][key] = torch.empty_like(saved["state"][index][key], device="meta")
    with pytest.raises(ValueError, match=f"'{key}' is a tensor on the meta device"):
        opt.load_state_dict(saved)
    assert same(everything(model, opt), before)


def test_train_step_skips_both_calls_together_and_names_params():
    from fpolar.compile import make_train_step

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    step = make_train_step(
        model, lambda m, x: m(x).square().mean(), fpolar.PolarGradHParams(lr=0.01), fpolar.AdamWHParams()
    )
    step(torch.randn(5, 4))
    before = [p.detach().clone() for p in model.parameters()] + [b.clone() for b in step.polar_state.buffers]
    x = torch.randn(5, 4)
    x[0, 0] = math.nan  # every grad that sees the first sample is NaN
    step(x)
    after = [p.detach().clone() for p in model.parameters()] + [b.clone() for b in step.polar_state.buffers]
    assert same(after, before)
    assert step.polar_state.skipped.item() == 1 and step.adamw_state.skipped.item() == 1
    with pytest.raises(ValueError, match=r"grads\[0\] has shape \(2, 2\) but '0.weight' \(params\[0\]\) has shape \(3, 4\)"):
        step._apply([torch.randn(2, 2), torch.randn(2, 3)], [torch.randn(3), torch.randn(2)])


def test_compiled_program_skips_without_recompiling():
    """The optimizer's compiled step (``StepProgram("compile")``, dynamo's aot_eager here): a NaN step and
    clean steps run one graph, and the NaN step changes nothing."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from fpolar.optim.compiled_step import StepProgram

    torch._dynamo.reset()
    model, opt = model_and_opt(compiled="compile")
    counter = CompileCounterWithBackend("aot_eager")
    opt._program = StepProgram("compile", compiler=counter)
    for k, bad in enumerate((None, 0, None, 3, None)):
        fill_grads(model, bad)
        before = everything(model, opt)
        opt.step()
        assert same(everything(model, opt), before) == (bad is not None) or k == 0
    assert opt.skipped_steps.item() == 2 and counter.frame_count == 1
