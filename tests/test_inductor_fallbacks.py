"""fpolar's custom ops become Inductor fallbacks from their fake implementations, before Inductor
lowers a graph that holds one (``fpolar.inductor_fallbacks``), so Inductor's implicit-fallback path,
whose log message prints the op's inputs' whole IR (eagerly up to torch 2.11: minutes for a whole
train step), is never taken for them."""

from __future__ import annotations

import logging

import pytest
import torch

import fpolar.kernels  # noqa: F401  (registers the torch.ops.fpolar ops)
import fpolar.nonfinite  # noqa: F401
from fpolar.inductor_fallbacks import register_before_lowering

lowering = pytest.importorskip("torch._inductor.lowering")

OPS = ["max_abs", "batched_inner", "momentum_polar_input", "ns_apply", "scaled_update_", "sym_cross", "sym_gram", "sym_poly"]


@pytest.fixture
def unregistered():
    """Inductor's lowering table as if no fpolar op had been met in this process (in place: Inductor's
    modules hold the dict itself); the entries it had are put back after."""
    ops = [getattr(torch.ops.fpolar, name).default for name in OPS]
    had = {op: lowering.lowerings.pop(op) for op in ops if op in lowering.lowerings}
    yield ops
    for op in ops:
        lowering.lowerings.pop(op, None)
    lowering.lowerings.update(had)


def test_each_fake_registers_its_op_with_the_implicit_paths_constraint(unregistered):
    """Tracing each op with fake tensors registers it, with the layout constraint Inductor's implicit
    path would give it; a second call changes nothing."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    assert not any(op in lowering.lowerings for op in unregistered)
    with FakeTensorMode():
        x = torch.empty(2, 8, 16)
        torch.ops.fpolar.max_abs([x, x])
        torch.ops.fpolar.sym_gram(x)
    for op in (torch.ops.fpolar.max_abs.default, torch.ops.fpolar.sym_gram.default):
        assert op in lowering.lowerings
        want = lowering.tag_to_layout_constraint(lowering.get_layout_constraint_tag(op, with_default=True))
        assert lowering.maybe_layout_constraints(op) is want
    registered = dict(lowering.lowerings)
    register_before_lowering(torch.ops.fpolar.max_abs.default)
    assert lowering.lowerings == registered


def test_compiling_a_graph_with_an_op_never_takes_the_implicit_path(unregistered, monkeypatch):
    """torch.compile (Inductor, CPU, no compile caches) of a function holding ``fpolar::max_abs``, the
    op unknown to Inductor beforehand and INFO logging on for Inductor's graph lowering (so even a lazily built
    message is built): the implicit-fallback message is never made for an fpolar op, and the compiled
    function equals the eager one."""
    from torch._inductor import exc

    asked = []
    real = exc.OperatorIssue.operator_str

    def counting(target, args, kwargs):
        asked.append(str(target))
        return real(target, args, kwargs)

    monkeypatch.setattr(exc.OperatorIssue, "operator_str", staticmethod(counting))
    graph_log = logging.getLogger("torch._inductor.graph")
    handler = logging.Handler()
    handler.emit = lambda record: record.getMessage()  # type: ignore[method-assign]
    before = graph_log.level
    graph_log.setLevel(logging.INFO)
    graph_log.addHandler(handler)
    try:
        torch._dynamo.reset()

        def fn(a, b):
            return torch.ops.fpolar.max_abs([a.sin(), b * 2]) + 1

        a, b = torch.randn(5, 7), torch.randn(3)
        with torch._inductor.config.patch(force_disable_caches=True):  # lowered here, not read from a cache
            got = torch.compile(fn, backend="inductor", fullgraph=True)(a, b)
    finally:
        graph_log.removeHandler(handler)
        graph_log.setLevel(before)
        torch._dynamo.reset()
    assert not [t for t in asked if "fpolar" in t], asked
    torch.testing.assert_close(got, fn(a, b))
