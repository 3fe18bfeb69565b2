"""Scheduled scalars and the step counter never recompile the step.

Backend ``aot_eager``: AOTAutograd adds guards of its own (it specialized on float lrs before
``fpolar.hparams.foreach_scalar``), so a dynamo-only counter would miss some recompiles. After one
warm-up call, ``torch.compiler.set_stance("fail_on_recompile")`` turns any recompile into an error.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import fpolar
from compile_cases import MIXED_SHAPES, adamw_hparams, adamw_step, make_problem, polar_hparams, polar_step
from compile_results import record

STEPS = 50


def cosine(i: int, base: float) -> float:
    return base * 0.5 * (1 + math.cos(math.pi * i / STEPS))


@pytest.mark.parametrize("mode", ["decoupled", "independent", "l2"])
def test_tensor_lr_and_weight_decay_schedule_never_recompiles(mode):
    params, grads = make_problem(MIXED_SHAPES)
    hp = polar_hparams(weight_decay_mode=mode)
    state = fpolar.init_state(params, hp)
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(polar_step, backend=counter, fullgraph=True)
    step(params, grads, state, hp)
    with torch.compiler.set_stance("fail_on_recompile"):
        for i in range(1, STEPS):
            hp.lr.fill_(cosine(i, 0.02))
            hp.weight_decay.fill_(0.1 * (1 - i / STEPS))
            step(params, grads, state, hp)
    assert counter.frame_count == 1
    assert float(state.step) == STEPS
    record(f"recompiles_tensor_lr_{mode}", dict(steps=STEPS, frames=counter.frame_count, recompiles=counter.frame_count - 1))


def test_adamw_tensor_lr_and_weight_decay_schedule_never_recompiles():
    params, grads = make_problem(((16,), (4, 8), ()))
    hp = adamw_hparams()
    state = fpolar.init_adamw_state(params, hp)
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(adamw_step, backend=counter, fullgraph=True)
    step(params, grads, state, hp)
    with torch.compiler.set_stance("fail_on_recompile"):
        for i in range(1, STEPS):
            hp.lr.fill_(cosine(i, 1e-2))
            hp.weight_decay.fill_(0.05 * (1 - i / STEPS))
            step(params, grads, state, hp)
    assert counter.frame_count == 1
    assert [float(s) for s in state.step] == [STEPS] * 3
    record("recompiles_adamw_tensor_lr", dict(steps=STEPS, frames=counter.frame_count, recompiles=counter.frame_count - 1))


def _float_schedule_frames(step_fn, params, grads, state, hp, field: str, base: float):
    """Frames compiled after each of STEPS calls, ``hp.<field>`` a new Python float every call.

    The hparams are frozen dataclasses; a schedule over floats rebuilds them (``dataclasses.replace``),
    which a user would do too. Rebuilding re-validates, outside the compiled function.
    """
    import dataclasses

    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(step_fn, backend=counter, fullgraph=True)
    history = []
    for i in range(2):
        hp = dataclasses.replace(hp, **{field: cosine(i, base) + 1e-4})
        step(params, grads, state, hp)
        history.append(counter.frame_count)
    # the one recompile has happened: anything after it is a failure
    with torch.compiler.set_stance("fail_on_recompile"):
        for i in range(2, STEPS):
            hp = dataclasses.replace(hp, **{field: cosine(i, base) + 1e-4})
            step(params, grads, state, hp)
            history.append(counter.frame_count)
    return history


# torch 2.11 (the H100 image) keeps guarding on each float value (``___as_tensor(hp.lr).item() == …``):
# every new float recompiles until the recompile limit. Measured there 2026-11-22; the README says
# to schedule 0-d tensors. strict: if a torch 2.11 build stops doing that, this must be revisited.
FLOAT_GOES_DYNAMIC = pytest.mark.xfail(
    tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 13),
    reason="torch < 2.13 recompiles on every new float scalar",
    strict=True,
)


@FLOAT_GOES_DYNAMIC
@pytest.mark.parametrize(
    "name, field, hp",
    [
        ("polar_lr", "lr", dict(lr=0.02, weight_decay=0.1)),  # decoupled decay multiplies lr·λ
        ("polar_weight_decay", "weight_decay", dict(lr=0.02, weight_decay=0.1, weight_decay_mode="independent")),
        ("polar_lr_l2", "lr", dict(lr=0.02, weight_decay=0.1, weight_decay_mode="l2", scale="shape")),
    ],
)
def test_float_scalar_recompiles_once_then_is_dynamic(name, field, hp):
    """A Python float is specialized at the first compile; the first new value recompiles with the
    float marked dynamic (a graph input), and no later value recompiles."""
    params, grads = make_problem(MIXED_SHAPES)
    h = fpolar.PolarGradHParams(**hp)
    state = fpolar.init_state(params, h)
    history = _float_schedule_frames(polar_step, params, grads, state, h, field, hp[field])
    record(f"recompiles_float_{name}", dict(steps=STEPS, frames=history[-1], recompiles=history[-1] - 1, frames_per_call=history[:5]))
    assert history[:2] == [1, 2] and history[-1] == 2


# AdamW's float lr goes dynamic after one recompile on torch 2.11 too (XPASS there, H100 2026-11-22):
# only the polar step's use of the float (lr·s in the update scale) stays specialized on 2.11.
def test_adamw_float_lr_recompiles_once_then_is_dynamic():
    params, grads = make_problem(((16,), (4, 8)))
    h = fpolar.AdamWHParams(lr=1e-2, weight_decay=0.05)
    state = fpolar.init_adamw_state(params, h)
    history = _float_schedule_frames(adamw_step, params, grads, state, h, "lr", 1e-2)
    record("recompiles_float_adamw_lr", dict(steps=STEPS, frames=history[-1], recompiles=history[-1] - 1))
    assert history[:2] == [1, 2] and history[-1] == 2
