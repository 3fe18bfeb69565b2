"""Every input a compiled step mutates reaches Inductor as a static input.

Inductor's CUDA graphs (``mode="reduce-overhead"``) skip a graph that mutates an input not in
``static_input_idxs`` ("skipping cudagraphs due to mutated inputs"). Those indices are AOTAutograd's
``fw_metadata.static_input_indices``: module parameters/buffers, and tensors marked with
``torch._dynamo.mark_static_address`` before dynamo first traces them. AOTAutograd drops all of them
when graph inputs alias each other with one mutated (it traces through a synthetic base), e.g. the
per-param momentum views next to their stacked buffer. The check runs on CPU: it reads the metadata
Inductor would get, from an AOTAutograd backend, without compiling kernels.
"""

from __future__ import annotations

from typing import Dict, List

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd

import fpolar
from compile_cases import adamw_hparams, cross_entropy_loss, make_problem, polar_hparams, tiny_batches, tiny_model
from fpolar.compile import make_train_step, mark_static


def static_report(fn, *args) -> Dict[str, List[int]]:
    """Compile ``fn`` (fullgraph), run it once; the forward graph's mutated and static input indices."""
    out: Dict[str, List[int]] = {}

    def fw(gm, example_inputs):
        meta = torch._guards.TracingContext.get().fw_metadata
        static = list(meta.static_input_indices)
        mutated = [i for i, info in enumerate(meta.input_info) if info.mutates_data or info.mutates_metadata]
        out.update(mutated=mutated, static=static, non_static_mutated=[i for i in mutated if i not in static])
        return gm.forward

    torch.compile(fn, backend=aot_autograd(fw_compiler=fw), fullgraph=True)(*args)
    return out


def opt_step(params, grads, state, hp, biases, bgrads, astate, ahp):
    fpolar.polargrad_step(params, grads, state, hp)
    fpolar.adamw_step(biases, bgrads, astate, ahp)


VARIANTS = {
    "default": {},
    "nesterov": dict(nesterov=True),
    "polar_first": dict(order="polar_first"),
    "polar_first_nesterov": dict(order="polar_first", nesterov=True),
    "l2": dict(weight_decay_mode="l2"),
    "qdwh": dict(polar="qdwh"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_polargrad_step_mutates_only_static_inputs(variant):
    params, grads = make_problem()
    hp = polar_hparams(**VARIANTS[variant])
    state = fpolar.init_state(params, hp)
    mark_static(params, grads, state, hp)
    report = static_report(fpolar.polargrad_step, params, grads, state, hp)
    assert report["mutated"], report  # params, momentum and step are mutated
    assert report["non_static_mutated"] == [], report


def test_polargrad_step_with_a_missing_grad_mutates_only_static_inputs():
    params, grads = make_problem()
    grads[1] = None
    hp = polar_hparams()
    state = fpolar.init_state(params, hp)
    mark_static(params, [g for g in grads if g is not None], state, hp)
    report = static_report(fpolar.polargrad_step, params, grads, state, hp)
    assert report["non_static_mutated"] == [], report


def test_optimizer_step_recipe_mutates_only_static_inputs():
    params, grads = make_problem()
    biases, bgrads = make_problem(shapes=((4,), (8,), (4,)), seed=1)
    hp, ahp = polar_hparams(), adamw_hparams()
    state, astate = fpolar.init_state(params, hp), fpolar.init_adamw_state(biases, ahp)
    mark_static(params, grads, state, hp, biases, bgrads, astate, ahp)
    report = static_report(opt_step, params, grads, state, hp, biases, bgrads, astate, ahp)
    assert len(report["mutated"]) >= len(params) + 3 * len(biases), report
    assert report["non_static_mutated"] == [], report


def test_unmarked_state_is_not_static():
    """The check can fail: without mark_static, the optimizer state is an ordinary (copied) input."""
    params, grads = make_problem()
    hp = polar_hparams()
    state = fpolar.init_state(params, hp)
    report = static_report(fpolar.polargrad_step, params, grads, state, hp)
    assert report["non_static_mutated"], report


def test_func_train_step_mutates_only_static_inputs():
    hp, ahp = polar_hparams(), adamw_hparams()
    step = make_train_step(tiny_model(), cross_entropy_loss, hp, ahp, backward="func")
    xs, ys = tiny_batches(1)
    report = static_report(step, xs[0], ys[0])
    assert report["mutated"], report
    assert report["non_static_mutated"] == [], report
