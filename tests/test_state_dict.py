"""Checkpoints of the functional state: ``PolarGradState`` / ``AdamWState`` survive torch.save and
torch.load(weights_only=True), resume bit-exactly, and a checkpoint that does not fit is refused with
the state unchanged."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import fpolar

SHAPES = [(6, 10), (10, 6), (3, 4, 5), (4, 2, 2, 2), (6, 10)]  # wide, tall, 3-D stack, conv, a repeat
AD_SHAPES = [(7,), (), (3, 5)]


def _params(shapes, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


def _grads(params, gen):
    return [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) for p in params]


def _save_load(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _tensors(state):
    if isinstance(state, fpolar.PolarGradState):
        return [state.step, state.skipped, *state.buffers]
    return [*state.step, state.skipped, *state.exp_avg, *state.exp_avg_sq]


def _assert_steps_continue_equal(step, params, state, resumed_params, resumed, hp, gen):
    """3 more ``step``s of the original and the resumed run on the same fresh grads: params and state
    tensors equal bit for bit."""
    for _ in range(3):
        g = _grads(params, gen)
        step(params, g, state, hp)
        step(resumed_params, g, resumed, hp)
    for a, b in zip(params + _tensors(state), resumed_params + _tensors(resumed)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("options", [{}, {"nesterov": True, "momentum_dtype": torch.float64, "scale": "shape"}])
def test_polargrad_state_resumes_bit_exactly(options):
    hp = fpolar.PolarGradHParams(lr=0.02, weight_decay=0.01, **options)
    params = _params(SHAPES)
    state = fpolar.init_state(params, hp)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        fpolar.polargrad_step(params, _grads(params, gen), state, hp)
    bad = _grads(params, gen)
    bad[0][0, 0] = float("nan")
    fpolar.polargrad_step(params, bad, state, hp)  # skipped, and counted: the count is state too
    saved = _save_load(state.state_dict(hparams=hp))
    assert saved["step"].item() == 3 and saved["hparams"]["nesterov"] == hp.nesterov
    assert saved["skipped"].item() == 1

    resumed_params = [p.clone() for p in params]
    resumed = fpolar.init_state(resumed_params, hp)
    resumed.load_state_dict(saved, hparams=hp)
    # copied into the existing buffers: the momenta are still views of the stacked buffers
    assert resumed.momentum[0].untyped_storage().data_ptr() == resumed.buffers[0].untyped_storage().data_ptr()
    _assert_steps_continue_equal(fpolar.polargrad_step, params, state, resumed_params, resumed, hp, gen)


def test_adamw_state_resumes_bit_exactly():
    hp = fpolar.AdamWHParams(lr=1e-2, weight_decay=0.01)
    params = _params(AD_SHAPES)
    state = fpolar.init_adamw_state(params, hp)
    gen = torch.Generator().manual_seed(2)
    for t in range(3):
        g = _grads(params, gen)
        if t == 1:
            g[0] = None  # a param without a grad keeps its own step count
        fpolar.adamw_step(params, g, state, hp)
    saved = _save_load(state.state_dict(hparams=hp))
    assert [s.item() for s in saved["step"]] == [2, 3, 3]
    resumed_params = [p.clone() for p in params]
    resumed = fpolar.init_adamw_state(resumed_params, hp)
    resumed.load_state_dict(saved, hparams=hp)
    _assert_steps_continue_equal(fpolar.adamw_step, params, state, resumed_params, resumed, hp, gen)


def _stepped_polar_checkpoint(hp):
    params = _params(SHAPES)
    state = fpolar.init_state(params, hp)
    fpolar.polargrad_step(params, _grads(params, torch.Generator().manual_seed(3)), state, hp)
    return _save_load(state.state_dict(hparams=hp))


@pytest.mark.parametrize(
    "target, error",
    [
        (lambda hp: (fpolar.init_state(_params(SHAPES[:4]), hp), hp), r"saved for 5 params but this state has 4"),
        (lambda hp: (fpolar.init_state(_params(SHAPES[:4] + [(10, 6)]), hp), hp),
         r"params\[4\] of shape \(6, 10\) but this state's params\[4\] has shape \(10, 6\)"),
        (lambda hp: (fpolar.init_state(_params(SHAPES, dtype=torch.bfloat16), hp), hp),
         r"momentum\[0\] is torch.float32 but this state's is torch.bfloat16"),
        (lambda hp: (fpolar.init_state(_params(SHAPES), hp), fpolar.PolarGradHParams(lr=0.5, nesterov=True)),
         r"other hparams \(nesterov: saved False, given True\)"),
        (lambda hp: (fpolar.init_adamw_state(_params(SHAPES)), None), r"this is a PolarGradState checkpoint; load it into a PolarGradState"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused_and_changes_nothing(target, error):
    hp = fpolar.PolarGradHParams(lr=0.02)
    saved = _stepped_polar_checkpoint(hp)
    state, load_hp = target(hp)
    gen = torch.Generator().manual_seed(4)
    for t in _tensors(state):  # a state that is not all zeros, so "unchanged" is a real check
        t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype))
    before = copy.deepcopy(_tensors(state))
    with pytest.raises(ValueError, match=error):
        state.load_state_dict(saved, hparams=load_hp)
    assert all(torch.equal(a, b) for a, b in zip(before, _tensors(state)))


def test_scheduled_lr_is_not_pinned_and_no_hparams_means_tensors_only():
    hp = fpolar.PolarGradHParams(lr=0.02)
    saved = _stepped_polar_checkpoint(hp)
    state = fpolar.init_state(_params(SHAPES), fpolar.PolarGradHParams(lr=0.001, weight_decay=0.1))
    state.load_state_dict(saved, hparams=fpolar.PolarGradHParams(lr=0.001, weight_decay=0.1))
    state.load_state_dict(saved)  # no hparams to compare: the tensors' layout is still checked
    assert state.step.item() == 1


def test_adamw_checkpoint_that_does_not_fit_is_refused_and_changes_nothing():
    hp = fpolar.AdamWHParams(lr=1e-2)
    params = _params(AD_SHAPES)
    state = fpolar.init_adamw_state(params, hp)
    fpolar.adamw_step(params, _grads(params, torch.Generator().manual_seed(5)), state, hp)
    saved = _save_load(state.state_dict(hparams=hp))
    cases = [
        (fpolar.init_adamw_state(_params([(7,), (), (5, 3)])), None, r"params\[2\] of shape \(3, 5\) but this state's params\[2\] has shape \(5, 3\)"),
        (fpolar.init_adamw_state(_params(AD_SHAPES, dtype=torch.float64)), None, r"exp_avg\[0\] is torch.float32 but this state's is torch.float64"),
        (fpolar.init_adamw_state(_params(AD_SHAPES)), fpolar.AdamWHParams(lr=1e-2, betas=(0.9, 0.95)), r"betas: saved \[0.9, 0.999\], given \[0.9, 0.95\]"),
        (fpolar.init_state(_params(SHAPES)), None, r"this is an AdamWState checkpoint; load it into an AdamWState, not into this PolarGradState"),
    ]
    for target, load_hp, error in cases:
        before = copy.deepcopy(_tensors(target))
        with pytest.raises(ValueError, match=error):
            target.load_state_dict(saved, hparams=load_hp)
        assert all(torch.equal(a, b) for a, b in zip(before, _tensors(target)))
