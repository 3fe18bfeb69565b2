"""Every polar backend and step variant traces as ONE frame with ZERO graph breaks.

Counted two ways: ``torch._dynamo.explain`` (graphs and break reasons of one trace) and a
``CompileCounter`` backend *without* fullgraph (frames actually compiled over two calls, graph breaks
from dynamo's counters), so a regression reads as "2 frames, 1 break: <reason>" rather than a
fullgraph error. The backend is a counter, not Inductor: what is tested is tracing.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import fpolar
from compile_cases import (
    MIXED_SHAPES,
    POLAR_BACKENDS,
    STEP_VARIANTS,
    adamw_hparams,
    adamw_step,
    make_problem,
    polar_hparams,
    polar_step,
)
from compile_results import record


def count_compile(fn, make_args):
    """(compiled frames, graph breaks, break reasons) for two calls of ``fn`` compiled with a counting
    backend and *without* fullgraph, so a break would show as a second frame instead of an error."""
    from torch._dynamo.utils import counters

    counters.clear()
    counter = CompileCounter()
    compiled = torch.compile(fn, backend=counter)
    args = make_args()
    compiled(*args)
    compiled(*args)  # same objects, new values: must reuse the frame
    reasons = [str(r).splitlines()[0] for r in counters["graph_break"]]
    return counter.frame_count, sum(counters["graph_break"].values()), reasons


def explain_counts(fn, make_args):
    """(graphs, graph breaks, break reasons) from ``torch._dynamo.explain``."""
    explained = torch._dynamo.explain(fn)(*make_args())
    return explained.graph_count, explained.graph_break_count, [str(b.reason).splitlines()[0] for b in explained.break_reasons]


def polar_args(shapes=MIXED_SHAPES, dtype=torch.float32, **hp):
    def make():
        params, grads = make_problem(shapes, dtype)
        h = polar_hparams(**hp)
        return params, grads, fpolar.init_state(params, h), h

    return make


@pytest.mark.parametrize("backend", list(POLAR_BACKENDS))
def test_each_polar_backend_is_one_frame_without_breaks(backend):
    make = polar_args(**POLAR_BACKENDS[backend])
    graphs, explained_breaks, explained_reasons = explain_counts(polar_step, make)
    torch._dynamo.reset()
    frames, breaks, reasons = count_compile(polar_step, make)
    record(f"frames_{backend}", dict(explain_graphs=graphs, explain_breaks=explained_breaks, frames=frames, graph_breaks=breaks))
    assert (graphs, explained_breaks) == (1, 0), explained_reasons
    assert (frames, breaks) == (1, 0), reasons


# Two shape groups (wide and tall) are enough to cover both orientations; tracing time grows per group.
@pytest.mark.parametrize("variant", list(STEP_VARIANTS))
def test_each_order_nesterov_and_decay_mode_is_one_frame(variant):
    frames, breaks, reasons = count_compile(polar_step, polar_args(((4, 8), (8, 4), (4, 8)), **STEP_VARIANTS[variant]))
    record(f"frames_{variant}", dict(frames=frames, graph_breaks=breaks))
    assert (frames, breaks) == (1, 0), reasons


@pytest.mark.parametrize(
    "name, shapes, dtype, hp",
    [
        # bf16 params with fp32 momentum: the cast paths in the step
        ("bf16_fp32_momentum", MIXED_SHAPES, torch.bfloat16, dict(momentum_dtype=torch.float32)),
        # a Muon shape rule: the step size is a scalar, not a (B, 1, 1) tensor
        ("muon_shape_rule", MIXED_SHAPES, torch.float32, dict(scale="rms_adamw", nesterov=True)),
        # many params of one shape: one batched polar call for all of them
        ("eight_of_one_shape", ((8, 16),) * 8, torch.float32, {}),
        # float64: the iteration and the scale reduction in fp64
        ("float64", MIXED_SHAPES, torch.float64, {}),
    ],
)
def test_mixed_shape_sets_are_one_frame(name, shapes, dtype, hp):
    frames, breaks, reasons = count_compile(polar_step, polar_args(shapes, dtype, **hp))
    record(f"frames_{name}", dict(frames=frames, graph_breaks=breaks))
    assert (frames, breaks) == (1, 0), reasons


def test_params_without_grad_this_step_are_one_frame():
    """A None grad changes the traced program (that param is skipped), not the frame count."""

    def make():
        params, grads = make_problem()
        grads[1] = grads[4] = None
        h = polar_hparams()
        return params, grads, fpolar.init_state(params, h), h

    frames, breaks, reasons = count_compile(polar_step, make)
    assert (frames, breaks) == (1, 0), reasons


def test_adamw_step_is_one_frame():
    def make():
        params, grads = make_problem(((16,), (4, 8), (), (2, 3, 4)))
        h = adamw_hparams()
        return params, grads, fpolar.init_adamw_state(params, h), h

    graphs, explained_breaks, explained_reasons = explain_counts(adamw_step, make)
    torch._dynamo.reset()
    frames, breaks, reasons = count_compile(adamw_step, make)
    record("frames_adamw", dict(explain_graphs=graphs, explain_breaks=explained_breaks, frames=frames, graph_breaks=breaks))
    assert (graphs, explained_breaks) == (1, 0), explained_reasons
    assert (frames, breaks) == (1, 0), reasons


def test_bad_input_raises_fpolar_message_under_compile():
    """Validation runs at trace time. Failing it: without fullgraph, dynamo falls back to eager and the
    ValueError itself propagates; with fullgraph=True dynamo must refuse the raise, and its error
    carries fpolar's message."""
    params, grads = make_problem(((4, 8),))
    h = polar_hparams()
    state = fpolar.init_state(params, h)
    bad = [torch.randn(4, 7)]
    with pytest.raises(ValueError, match=r"grads\[0\] has shape \(4, 7\)"):
        torch.compile(polar_step, backend="eager")(params, bad, state, h)
    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"grads\[0\] has shape \(4, 7\)"):
        torch.compile(polar_step, backend="eager", fullgraph=True)(params, bad, state, h)



@pytest.mark.parametrize("partial", [False, True], ids=["all_grads", "one_grad_missing"])
def test_tall_group_with_a_16_bit_polar_dtype_traces_in_one_graph(partial):
    """A tall group iterates on its wide transpose, a non-contiguous view: the cast into the 16-bit
    polar dtype and the Nesterov blend of the per-param layout must not write through ``out=`` into
    non-contiguous tensors (dynamo refuses them). The compiled step equals the eager step."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(7)
    shapes = [(8, 4), (8, 4), (8, 4)]
    params = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    if partial:
        grads[1] = None
    hp = fpolar.PolarGradHParams(lr=0.05, nesterov=True, scale="shape", coefficients="muon", polar_dtype=torch.bfloat16)
    eager_params = [p.clone() for p in params]
    eager_state, state = fpolar.init_state(eager_params, hp), fpolar.init_state(params, hp)
    step = torch.compile(fpolar.polargrad_step, backend="eager", fullgraph=True)
    before = [p.clone() for p in params]
    for _ in range(2):
        fpolar.polargrad_step(eager_params, grads, eager_state, hp)
        step(params, grads, state, hp)
    for p, q in zip(params, eager_params):
        # fp32 rounding of the update: the compiled step blends a whole group stacked, eager per param
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert not torch.equal(params[0], before[0])  # a stepped param moved
