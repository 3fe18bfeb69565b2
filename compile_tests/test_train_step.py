"""``fpolar.compile.make_train_step``: the whole step matches the functional loop, and how it compiles.

Backward "func" traces as one frame with no graph break (torch.func.grad_and_value over
functional_call); backward "autograd" breaks once, at ``loss.backward()`` — the documented limit that
makes it the CUDA-graph recipe instead (tests for the capture are in test_cuda_graphs.py).
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import fpolar
from compile_cases import adamw_hparams, cross_entropy_loss, max_abs_diff, polar_hparams, tiny_batches, tiny_model
from fpolar.compile import TrainStep, capture_cuda_graph, make_train_step, mark_static, matrices_to_polar
from compile_results import record

STEPS = 6


def reference_losses(model, xs, ys):
    """The README's functional loop, written out: .grad from backward, then both fpolar steps."""
    hp, ahp = polar_hparams(), adamw_hparams()
    mats = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    state, astate = fpolar.init_state(mats, hp), fpolar.init_adamw_state(rest, ahp)
    losses = []
    for x, y in zip(xs, ys):
        model.zero_grad(set_to_none=True)
        loss = cross_entropy_loss(model, x, y)
        loss.backward()
        losses.append(loss.detach())
        with torch.no_grad():
            fpolar.polargrad_step(mats, [p.grad for p in mats], state, hp)
            fpolar.adamw_step(rest, [p.grad for p in rest], astate, ahp)
    return torch.stack(losses)


@pytest.mark.parametrize("backward", ["autograd", "func"])
def test_train_step_matches_the_functional_loop(backward):
    xs, ys = tiny_batches(STEPS)
    ref_model = tiny_model()
    ref = reference_losses(ref_model, xs, ys)
    model = tiny_model()
    step = make_train_step(model, cross_entropy_loss, polar_hparams(), adamw_hparams(), backward=backward)
    losses = torch.stack([step(x, y) for x, y in zip(xs, ys)])
    # Same ops in the same order (torch.func's backward is autograd's): equal up to fp32 rounding.
    torch.testing.assert_close(losses, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(list(model.parameters()), list(ref_model.parameters()), rtol=1e-6, atol=1e-6)
    assert not losses.requires_grad


def test_split_groups_and_frozen_params():
    model = tiny_model()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    step = make_train_step(
        model, cross_entropy_loss, polar_hparams(), adamw_hparams(), split=lambda n, p: matrices_to_polar(n, p) and n != "5.weight"
    )
    assert step.polar_names == ("2.weight",)
    assert step.adamw_names == ("0.bias", "2.bias", "3.weight", "3.bias", "5.weight", "5.bias")
    xs, ys = tiny_batches(2)
    step(xs[0], ys[0])
    assert torch.equal(model[0].weight, frozen)
    assert model[0].weight.grad is None


def test_autograd_grads_keep_their_addresses():
    """The eager step (and so a torch.compile'd one, whose reduce-overhead graphs read static
    addresses) keeps .grad where it was: it zeroes it in place, and re-attaches it if user code set it
    to None."""
    model = tiny_model()
    step = make_train_step(model, cross_entropy_loss, polar_hparams(), adamw_hparams())
    ptrs = [g.data_ptr() for g in step.grads]
    xs, ys = tiny_batches(3)
    step(xs[0], ys[0])
    model.zero_grad(set_to_none=True)
    step(xs[1], ys[1])
    assert [p.grad.data_ptr() for p in step.polar_params + step.adamw_params] == ptrs


def test_a_captured_step_takes_backwards_grads_and_zeroes_the_unreached():
    """What a captured step does after backward (``_grads_after_backward``; the capture itself needs a
    GPU): each param's grad is backward's own tensor, and a param backward did not reach gets its
    buffer, zeroed (the eager step's zero grad); they become ``step.grads``."""
    model = tiny_model()
    step = make_train_step(model, cross_entropy_loss, polar_hparams(), adamw_hparams())
    params = step.polar_params + step.adamw_params
    buffers = list(step.grads)
    for b in buffers:
        b.fill_(7.0)
    fresh = [torch.randn_like(p) for p in params]
    for p, g in zip(params, fresh):
        p.grad = g
    params[1].grad = None  # not reached by backward
    grads = step._grads_after_backward(params)
    assert grads[1] is buffers[1] and not grads[1].any()
    assert all(g is f for i, (g, f) in enumerate(zip(grads, fresh)) if i != 1)
    assert all(p.grad is g for p, g in zip(params, grads))


def test_mutated_tensors_are_marked_static_address():
    step = make_train_step(tiny_model(), cross_entropy_loss, polar_hparams(), adamw_hparams())
    marked = [*step.mutable_tensors(), *step.polar_state.momentum, step.polar_hparams.lr, step.adamw_hparams.lr]
    assert all(getattr(t, "_dynamo_static_input_type", None) is not None for t in marked)


def test_mark_static_covers_states_and_hparams():
    """The optimizer-only recipe marks the user's own state objects."""
    params = [torch.randn(4, 8), torch.randn(8, 4)]
    biases = [torch.randn(4)]
    hp, ahp = polar_hparams(), adamw_hparams()
    state, astate = fpolar.init_state(params, hp), fpolar.init_adamw_state(biases, ahp)
    mark_static(params, biases, state, astate, hp, ahp)
    tensors = [*params, *biases, state.step, *state.buffers, *state.momentum, *astate.step, *astate.exp_avg,
               *astate.exp_avg_sq, hp.lr, hp.weight_decay, ahp.lr, ahp.weight_decay]
    assert all(getattr(t, "_dynamo_static_input_type", None) is not None for t in tensors)
    with pytest.raises(TypeError, match="mark_static"):
        mark_static({"not": "supported"})


def test_func_step_is_one_frame_without_breaks():
    xs, ys = tiny_batches(3)
    step = make_train_step(tiny_model(), cross_entropy_loss, polar_hparams(), adamw_hparams(), backward="func")
    explained = torch._dynamo.explain(step)(xs[0], ys[0])
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    compiled(xs[1], ys[1])
    compiled(xs[2], ys[2])
    record("frames_train_step_func", dict(explain_graphs=explained.graph_count, explain_breaks=explained.graph_break_count, frames=counter.frame_count))
    assert (explained.graph_count, explained.graph_break_count, counter.frame_count) == (1, 0, 1)


def test_autograd_step_breaks_once_at_backward():
    """Not a goal, a documented limit (torch 2.11–2.13): dynamo does not trace Tensor.backward() unless
    torch._dynamo.config.trace_autograd_ops is set, so the autograd step compiles as two frames."""
    xs, ys = tiny_batches(1)
    step = make_train_step(tiny_model(), cross_entropy_loss, polar_hparams(), adamw_hparams())
    explained = torch._dynamo.explain(step)(xs[0], ys[0])
    reasons = [str(b.reason) for b in explained.break_reasons]
    record("frames_train_step_autograd", dict(explain_graphs=explained.graph_count, explain_breaks=explained.graph_break_count))
    assert explained.graph_break_count == 1 and "backward" in reasons[0], reasons


def test_bad_arguments_raise():
    model = tiny_model()
    with pytest.raises(ValueError, match="unknown backward"):
        make_train_step(model, cross_entropy_loss, polar_hparams(), adamw_hparams(), backward="jit")
    with pytest.raises(TypeError, match="polar_hparams"):
        make_train_step(model, cross_entropy_loss, adamw_hparams(), adamw_hparams())
    step = make_train_step(model, cross_entropy_loss, polar_hparams(), adamw_hparams())
    assert isinstance(step, TrainStep)
    with pytest.raises(ValueError, match="CUDA device"):
        capture_cuda_graph(step, *[t[0] for t in tiny_batches(1)])
    for bad in (0, -1, 2.0, True):  # named in the message, raised before anything runs
        with pytest.raises(ValueError, match=f"lanes must be an integer ≥ 1.*got {bad!r}"):
            capture_cuda_graph(step, *[t[0] for t in tiny_batches(1)], lanes=bad)
