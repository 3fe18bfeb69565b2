"""The drop-in's math as one program per layout (``fpolar.optim.compiled_step``) equals the eager step.

CPU runs the "compile" backend (torch.compile of the functional calls); the CUDA-graph backend is
tested in tests/gpu. One scenario per optimizer class, in phases, so each compiles once: several
steps, an LR scheduler moving lr (no recompile), a param losing its grad (a new layout: one
recompile), then a state_dict round trip into a fresh optimizer that continues identically.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import fpolar.optim as fo
from fpolar.optim.compiled_step import StepProgram, resolve_backend

TOL = dict(rtol=1e-5, atol=1e-6)  # Inductor reassociates fp32 sums (as compile_tests' INDUCTOR_TOL)


def make_params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(6, 4), (6, 4), (4, 10), (6,), (4,)]
    return [torch.randn(s, generator=gen).requires_grad_() for s in shapes]


def set_grads(params, seed, skip=()):
    gen = torch.Generator().manual_seed(1000 + seed)
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen)
        p.grad = None if i in skip else g


def build(cls, params):
    kw = dict(lr=0.02, weight_decay=0.05) if cls is fo.Muon else dict(lr=1e-3, weight_decay=0.05)
    return cls(params, adamw_lr=3e-3, **kw)


def step(opt, program=None):
    if program is None:
        opt.step()
        return
    with torch.no_grad():
        opt._prepare()
        program(opt)


@pytest.mark.parametrize("cls", [fo.Muon], ids=["Muon"])  # the program is class-agnostic: one compile
def test_compiled_program_equals_eager_through_schedules_layouts_and_checkpoints(cls):
    torch._dynamo.reset()
    p_e, p_c = make_params(), make_params()
    opt_e, opt_c = build(cls, p_e), build(cls, p_c)
    counter = CompileCounterWithBackend("inductor")
    prog = StepProgram("compile", compiler=counter)

    def frames() -> int:
        return counter.frame_count

    sched_e = torch.optim.lr_scheduler.StepLR(opt_e, step_size=1, gamma=0.5)
    sched_c = torch.optim.lr_scheduler.StepLR(opt_c, step_size=1, gamma=0.5)

    def both(k, skip=()):
        set_grads(p_e, k, skip)
        set_grads(p_c, k, skip)
        step(opt_e)
        step(opt_c, prog)

    both(0)
    after_first = frames()
    assert after_first == 1
    for k in range(1, 4):  # the scheduler halves lr every step: same layout, no recompile
        sched_e.step()
        sched_c.step()
        both(k)
    assert frames() == after_first
    torch.testing.assert_close(p_c, p_e, **TOL)
    assert opt_c.param_groups[0]["lr"] == opt_e.param_groups[0]["lr"] == pytest.approx(0.02 * 0.125 if cls is fo.Muon else 1e-3 * 0.125)

    frozen = p_c[1].detach().clone()
    both(4, skip=(1,))  # a param without grad: a new layout
    assert frames() == after_first + 1
    assert torch.equal(p_c[1], frozen)
    torch.testing.assert_close(p_c, p_e, **TOL)
    assert max(float((a - b).detach().abs().max()) for a, b in zip(p_c, make_params())) > 1e-3  # they moved

    # state_dict: same layout as the eager optimizer's, and a fresh optimizer resumes identically
    sd_e, sd_c = opt_e.state_dict(), copy.deepcopy(opt_c.state_dict())
    assert sd_c["param_groups"] == sd_e["param_groups"]
    assert sd_c["state"].keys() == sd_e["state"].keys()
    for i in sd_e["state"]:
        torch.testing.assert_close(sd_c["state"][i], sd_e["state"][i], **TOL)
    p_r = [p.detach().clone().requires_grad_() for p in p_c]
    opt_r = build(cls, p_r)
    opt_r.load_state_dict(sd_c)
    prog_r = StepProgram("compile")
    set_grads(p_r, 5)
    set_grads(p_c, 5)
    step(opt_r, prog_r)
    step(opt_c, prog)
    torch.testing.assert_close(p_r, p_c, rtol=0, atol=0)


def test_drop_in_argument():
    """compiled=... reaches the program; a bad value or an impossible backend raises at construction."""
    opt = fo.Muon(make_params(), lr=0.02)
    assert opt._step_program() is None  # CPU default: eager
    assert fo.Muon(make_params(), lr=0.02, compiled=True)._step_program().backend == "compile"
    assert fo.PolarGrad(make_params(), lr=1e-3, compiled="compile")._step_program().backend == "compile"
    with pytest.raises(ValueError, match="'graph'"):
        fo.Muon(make_params(), lr=0.02, compiled="graph")
    with pytest.raises(ValueError, match="needs every param on CUDA"):
        fo.PolarGrad(make_params(), lr=1e-3, compiled="cuda_graph")
    clone = copy.deepcopy(fo.Muon(make_params(), lr=0.02, compiled="compile"))
    assert clone._compiled_arg == "compile" and clone._program is None


def test_drop_in_compiled_step_runs_the_program():
    """opt.step() with compiled="compile" goes through its StepProgram (here with dynamo's eager
    backend, counted: the Inductor numbers are the test above) and matches the eager drop-in."""
    torch._dynamo.reset()
    p_e, p_c = make_params(), make_params()
    opt_e, opt_c = build(fo.Muon, p_e), fo.Muon(p_c, lr=0.02, weight_decay=0.05, adamw_lr=3e-3, compiled="compile")
    counter = CompileCounterWithBackend("eager")
    opt_c._program = StepProgram("compile", compiler=counter)  # kept: same backend as compiled= asks
    for k in range(3):
        set_grads(p_e, k)
        set_grads(p_c, k)
        opt_e.step()
        opt_c.step()
    assert counter.frame_count == 1
    torch.testing.assert_close(p_c, p_e, rtol=1e-6, atol=1e-7)


def test_resolve_backend():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend(None, [cpu]) is None
    assert resolve_backend(None, [cuda, cuda]) == "cuda_graph"
    assert resolve_backend(None, [cuda, cpu]) is None
    assert resolve_backend(True, [cpu]) == "compile"
    assert resolve_backend(True, [cuda]) == "cuda_graph"
    assert resolve_backend(False, [cuda]) is None
    assert resolve_backend("compile", [cuda]) == "compile"
    with pytest.raises(ValueError, match="one is on cpu"):
        resolve_backend("cuda_graph", [cuda, cpu])
    with pytest.raises(ValueError, match="'jit'"):
        resolve_backend("jit", [cpu])
    with pytest.raises(ValueError, match="unknown backend"):
        StepProgram("eager")


def test_grad_address_says_whether_a_graph_may_read_a_grad_where_it_was_captured():
    """A captured graph reads grads at fixed addresses: only a tensor over the same bytes, laid out
    the same way, may stand in (the drop-in re-captures otherwise)."""
    from fpolar.optim.compiled_step import grad_address

    g = torch.randn(6, 4)
    assert grad_address(None) is None
    assert grad_address(g) == grad_address(g.view(6, 4)) == grad_address(g.detach())  # same bytes, same layout
    assert grad_address(g.clone()) != grad_address(g)  # other memory
    assert grad_address(g.t()) != grad_address(g)  # same start, transposed
    assert grad_address(g.view(4, 6)) != grad_address(g)  # same bytes, other shape
    assert grad_address(g.view(torch.int32)) != grad_address(g)  # same bytes, other dtype
    assert grad_address(g[1:]) != grad_address(g)
