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


def test_zero_grad_keeps_captured_grads_as_the_params_grad():
    """With a captured program holding grads (the graph is faked here: CPU has no CUDA graphs),
    ``zero_grad()`` (set_to_none=True) zeroes the held tensors in place and keeps them as ``.grad``,
    so backward accumulates into the addresses the graph reads (one grad set alive). A param that
    backward skips gets ``.grad = None`` at ``step`` and does not step: the params equal those of an
    optimizer whose grads are set to None, over steps where a layer is used or not."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(6, 6), torch.nn.Linear(6, 6), torch.nn.Linear(6, 3)]
    ref_layers = copy.deepcopy(layers)
    opts = [fo.Muon([p for m in ms for p in m.parameters()], lr=0.02, weight_decay=0.05, compiled=False)
            for ms in (layers, ref_layers)]
    opt, ref = opts
    x = torch.randn(5, 6)

    def loss_of(ms, skip_middle):
        h = torch.tanh(ms[0](x))
        if not skip_middle:
            h = torch.tanh(ms[1](h))
        return ms[2](h).square().sum()

    for o, ms in zip(opts, (layers, ref_layers)):
        loss_of(ms, False).backward()
        o.step()
    program = StepProgram("cuda_graph")
    program._graph = object()  # stands for a captured graph reading the current grads
    program._graph_grads = [[p.grad for p in opt.param_groups[0]["params"]]]
    held = [p.grad for p in opt.param_groups[0]["params"]]
    opt._program = program
    for k, skip_middle in enumerate([False, True, False]):
        matrices = opt.param_groups[0]["params"]
        before = [p.grad for p in matrices]
        opt.zero_grad()
        ref.zero_grad()
        kept = [g is not None and g is h for g, h in zip(before, held)]
        assert sum(kept) == (len(matrices) if k < 2 else len(matrices) - 1)
        for p, g, keep in zip(matrices, held, kept):
            assert (p.grad is g and not g.any()) if keep else p.grad is None  # kept and zeroed, or None
        assert all(p.grad is None for p in opt.param_groups[1]["params"])  # AdamW's: not held here
        loss_of(layers, skip_middle).backward()
        loss_of(ref_layers, skip_middle).backward()
        for p, g, keep, r in zip(matrices, held, kept, ref.param_groups[0]["params"]):
            if r.grad is not None:
                assert (p.grad is g) == keep  # accumulated into the held tensor, not replaced
                torch.testing.assert_close(p.grad, r.grad, rtol=0, atol=0)
        opt._program = program  # the CPU step resolves no program: put the fake back for zero_grad
        opt.step()
        ref.step()
        middle = [p for p in layers[1].parameters()]
        assert all((p.grad is None) == skip_middle for p in middle)
        for a, b in zip(opt.param_groups, ref.param_groups):
            for p, q in zip(a["params"], b["params"]):
                torch.testing.assert_close(p, q, rtol=0, atol=0)
        opt._program = program


def test_capture_runs_on_the_warm_up_steps_grads():
    """The CUDA-graph program captures on the grad tensors its warm-up step saw (whose one-launch glue
    tables exist): this step's values are copied into them and they become the params' ``.grad``;
    a param without a grad either time, or whose grad changed shape or dtype, keeps its own. The
    bookkeeping runs on CPU (no graph is captured here)."""
    from fpolar.optim.group_state import GroupRuntime

    params = [torch.randn(4, 3, requires_grad=True) for _ in range(4)]
    warm = [torch.randn(4, 3), None, torch.randn(4, 3), torch.randn(4, 3, dtype=torch.float64)]
    fresh = [torch.randn(4, 3), torch.randn(4, 3), None, torch.randn(4, 3)]
    for p, g in zip(params, fresh):
        p.grad = g
    rt = GroupRuntime("polargrad", params)
    program = StepProgram("cuda_graph")
    program._warm_grads = [list(warm)]
    values = [None if g is None else g.clone() for g in fresh]
    (out_rt, out_grads, decay), = program._onto_warm_grads([(rt, list(fresh), True)])
    assert out_rt is rt and decay is True
    assert out_grads[0] is warm[0] and params[0].grad is warm[0]  # copied into the warm-up's tensor
    assert torch.equal(warm[0], values[0])
    assert out_grads[1] is fresh[1] and params[1].grad is fresh[1]  # no grad at warm-up: its own
    assert out_grads[2] is None  # no grad now
    assert out_grads[3] is fresh[3] and params[3].grad is fresh[3]  # dtype differs: its own
    assert program._warm_grads == []  # used once, then dropped
    # a layout whose warm-up grads are gone (e.g. dropped with a new layout) passes work through
    work = [(rt, list(fresh), True)]
    assert program._onto_warm_grads(work) is work
