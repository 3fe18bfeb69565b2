"""The drop-in's CUDA-graph program (``fpolar.optim.compiled_step``, backend "cuda_graph") on a GPU
(skipped without one): replays equal the eager drop-in step by step, with grads written in place or
fresh each step (a graph per place they come back at, then copied in), under an LR schedule (no recapture), and
a param losing its grad re-warms and recaptures; a train loop's grads stay where the graph reads them. fp32 with TF32 off, so eager and
replay run the same kernels: equal up to the fused AdamW kernel's own rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch

import fpolar.optim as fo
from fpolar.adamw_fused import fused_adamw_step
from fpolar.optim.compiled_step import RECAPTURES_BEFORE_COPYING, StepProgram

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOL = dict(rtol=2e-6, atol=2e-6)


@pytest.fixture
def follow_every_grad(monkeypatch):
    """No grad counts as small (``SMALL_GRAD_BYTES`` = 0): every grad is read where it lies, so the
    test sees the graphs follow them. These tests' params are all under the default 1 MiB, which
    would copy every one of them in."""
    import fpolar.optim.compiled_step as compiled_step

    monkeypatch.setattr(compiled_step, "SMALL_GRAD_BYTES", 0)


@pytest.fixture(autouse=True)
def _no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def make_params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(96, 64), (96, 64), (64, 256), (256, 64), (512, 64), (64,), (96,)]
    return [torch.randn(s, generator=gen).cuda().requires_grad_() for s in shapes]


def write_grads(params, seed, in_place, skip=()):
    gen = torch.Generator().manual_seed(1000 + seed)
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen).cuda()
        if i in skip:
            p.grad = None
        elif in_place and p.grad is not None:
            p.grad.copy_(g)
        else:
            p.grad = g


def build(params):
    groups = [{"params": params[:4]}, {"params": params[4:], "algorithm": "adamw", "lr": 3e-3, "weight_decay": 0.01}]
    return fo.Muon(groups, lr=0.02, weight_decay=0.05, polar_dtype=torch.float32)


def run(opt, program):
    with torch.no_grad():
        opt._prepare()
        if program is None:
            opt._apply()
        else:
            program(opt)


@pytest.mark.parametrize("in_place", [False, True], ids=["fresh_tensors", "written_in_place"])
def test_cuda_graph_program_equals_eager(in_place, follow_every_grad):
    """Replays equal the eager drop-in step by step under an LR schedule. Grads written in place stay
    where the graph reads them: one capture per layout. Fresh grad tensors, each allocated while the
    last is alive, cycle between a few blocks: one graph per place they were seen (at most
    ``RECAPTURES_BEFORE_COPYING`` + 1), then replays of the matching one, or, past that, copies into
    the program's own grads. A param losing its grad (step 6) is a new layout."""
    p_e, p_g = make_params(), make_params()
    opt_e, opt_g = build(p_e), build(p_g)
    prog = StepProgram("cuda_graph")
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.8) for o in (opt_e, opt_g)]
    for k in range(8):
        skip = (1,) if k >= 6 else ()
        write_grads(p_e, k, in_place, skip)
        write_grads(p_g, k, in_place, skip)
        run(opt_e, None)
        run(opt_g, prog)
        for s in scheds:
            s.step()
        torch.cuda.synchronize()
        # AdamW goes through the fused kernel in the program, foreach ops eagerly: fp32 ulps apart
        torch.testing.assert_close(p_g, p_e, **TOL)
        if k == 5 and in_place:
            assert (prog.captures, prog.recaptures, prog.graphs, prog.copies_grads) == (1, 0, 1, False)
        if k == 5 and not in_place:
            assert prog.recaptures <= RECAPTURES_BEFORE_COPYING + 1 and prog.captures == prog.recaptures + 1
            assert prog.replays == 5  # steps 1-5 each ran a graph
    # one layout for steps 0-5 (warm-up, capture, then replays or recaptures), another for 6-7
    assert prog.warmups == 2 and prog.graphs == 1 and not prog.copies_grads
    if in_place:
        assert (prog.captures, prog.recaptures, prog.replays) == (2, 0, 6)
    assert max(float((a - b).detach().abs().max()) for a, b in zip(p_g, make_params())) > 1e-3


def test_grads_cycling_between_two_places_replay_two_graphs_on_the_gpu(follow_every_grad):
    """Grads written each step into one of two sets of buffers in turn: two captures (one pool),
    then replays of the graph whose addresses match, equal to the eager step; no copy."""
    p_e, p_g = make_params(), make_params()
    opt_e, opt_g = build(p_e), build(p_g)
    prog = StepProgram("cuda_graph")
    buffers = [[torch.empty_like(p) for p in p_g] for _ in range(2)]
    for k in range(8):
        write_grads(p_e, k, in_place=False)
        for p, e, b in zip(p_g, p_e, buffers[k % 2]):
            p.grad = b.copy_(e.grad)
        run(opt_e, None)
        run(opt_g, prog)
        torch.cuda.synchronize()
        torch.testing.assert_close(p_g, p_e, **TOL)
    assert (prog.warmups, prog.captures, prog.recaptures, prog.graphs, prog.replays, prog.copies_grads) == (1, 2, 1, 2, 7, False)


def test_fused_adamw_matches_foreach_on_cuda():
    params = make_params()[4:]
    hp_params = [p.detach().clone() for p in params]
    import fpolar

    hp = fpolar.AdamWHParams(lr=torch.tensor(3e-3, device="cuda"), weight_decay=torch.tensor(0.01, device="cuda"))
    ref = [p.detach().clone() for p in params]
    s_f, s_r = fpolar.init_adamw_state(hp_params, hp), fpolar.init_adamw_state(ref, hp)
    for k in range(3):
        gen = torch.Generator().manual_seed(k)
        grads = [torch.randn(p.shape, generator=gen).cuda() for p in params]
        fused_adamw_step(hp_params, grads, s_f, hp)
        fpolar.adamw_step(ref, grads, s_r, hp)
    torch.testing.assert_close(hp_params, ref, **TOL)


def test_svd_backend_is_not_captured_and_still_steps():
    """The SVD solver checks convergence on the host, so its layouts run eagerly, never captured."""
    p_e, p_g = make_params(), make_params()
    kw = dict(lr=0.02, weight_decay=0.0, polar="svd", polar_dtype=torch.float32)
    opt_e, opt_g = fo.Muon(p_e[:4], compiled=False, **kw), fo.Muon(p_g[:4], **kw)
    for k in range(3):
        write_grads(p_e[:4], k, in_place=False)
        write_grads(p_g[:4], k, in_place=False)
        opt_e.step()
        opt_g.step()
    assert opt_g._program is not None and opt_g._program.captures == 0
    torch.testing.assert_close(p_g[:4], p_e[:4], **TOL)


def test_train_loop_with_zero_grad_replays_on_the_grads_backward_left(follow_every_grad):
    """A train loop with ``zero_grad()`` (set_to_none=True, the default) and the CUDA-graph drop-in:
    the caching allocator hands backward the same blocks each step, so after the capture (step 1)
    every step replays the one graph on the user's own grads: no recapture, no copy, no grad tensor
    kept by the optimizer, and the params equal an eager drop-in's."""
    torch.manual_seed(0)
    model_e = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256)).cuda()
    model_g = copy.deepcopy(model_e)
    x = torch.randn(64, 256, device="cuda")
    opt_e = fo.Muon(model_e.parameters(), lr=0.02, weight_decay=0.05, polar_dtype=torch.float32, compiled=False)
    opt_g = fo.Muon(model_g.parameters(), lr=0.02, weight_decay=0.05, polar_dtype=torch.float32)
    for k in range(8):
        for model, opt in ((model_e, opt_e), (model_g, opt_g)):
            opt.zero_grad()
            assert all(p.grad is None for p in model.parameters())
            model(x).square().mean().backward()
            opt.step()
        torch.cuda.synchronize()
        torch.testing.assert_close(list(model_g.parameters()), list(model_e.parameters()), **TOL)
    prog = opt_g._program
    assert (prog.warmups, prog.captures, prog.recaptures, prog.copies_grads) == (1, 1, 0, False)


def _train_beside_eager(model, opt, model_e, opt_e, x, steps=8):
    """``steps`` iterations of the usual loop (zero_grad, backward, step) on both models in turn;
    returns the graph program's capture count after each."""
    captures = []
    for _ in range(steps):
        for m, o in ((model, opt), (model_e, opt_e)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
        captures.append(opt._program.captures)
    torch.cuda.synchronize()
    return captures


@pytest.mark.parametrize("lanes", [1, 4])
def test_one_model_loop_settles_on_replays_of_one_graph(monkeypatch, lanes, follow_every_grad):
    """The capture keeps the allocator's cache (``capture_keeping_cache``): with ``torch.cuda.graph``,
    whose entry empties the cache, this loop's grads came back elsewhere after every capture (with the
    groups in order: recaptured twice, then copied in, on the H200). Now the grads may move once,
    after the first capture (the step before it ran eagerly, with its own workspace), and the loop
    then replays one graph on the user's grads: no more captures, no copy. Groups in order or side by
    side."""
    import fpolar.side_streams as side_streams

    monkeypatch.setattr(side_streams, "MAX_LANES", lanes)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256)).cuda()
    model_e = copy.deepcopy(model)
    x = torch.randn(64, 256, device="cuda")
    opt = fo.Muon(model.parameters(), lr=0.02, weight_decay=0.05, polar_dtype=torch.float32)
    opt_e = fo.Muon(model_e.parameters(), lr=0.02, weight_decay=0.05, polar_dtype=torch.float32, compiled=False)
    captures = _train_beside_eager(model, opt, model_e, opt_e, x)
    torch.testing.assert_close(list(model.parameters()), list(model_e.parameters()), **TOL)
    prog = opt._program
    assert prog.recaptures <= 1 and not prog.copies_grads
    assert captures[3:] == [captures[3]] * 5  # the last five steps replayed one graph


def test_a_failed_capture_warns_ends_the_capture_and_steps_eagerly(monkeypatch):
    """A step whose recording raises (here: a RuntimeError from the math while captured) warns, ends
    the capture, and runs that layout eagerly from then on, equal to the eager drop-in."""
    import fpolar.optim.compiled_step as compiled_step

    real = compiled_step.run_math

    def fails_while_captured(*args, **kwargs):
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("cannot be recorded")
        return real(*args, **kwargs)

    monkeypatch.setattr(compiled_step, "run_math", fails_while_captured)
    p_e, p_g = make_params(), make_params()
    kw = dict(lr=0.02, weight_decay=0.05, polar_dtype=torch.float32)
    opt_e, opt_g = fo.Muon(p_e, compiled=False, **kw), fo.Muon(p_g, **kw)
    with pytest.warns(UserWarning, match="capturing the step in a CUDA graph failed"):
        for k in range(4):
            write_grads(p_e, k, in_place=False)
            write_grads(p_g, k, in_place=False)
            opt_e.step()
            opt_g.step()
    torch.cuda.synchronize()
    assert not torch.cuda.is_current_stream_capturing()
    assert opt_g._program.captures == 0
    torch.testing.assert_close(p_g, p_e, **TOL)


def test_loop_with_fused_glue_and_small_grads_settles_on_one_graph():
    """A loop with LayerNorm and biases beside its matrices, on the fused glue, settles on one graph.
    The small grads (norms, biases, the 256×768 weights) are copied in each step; the large one is
    followed. Before, the small grads moved: the glue's offsets tables took small blocks from the
    ordinary pool (now they have a pool of their own), and the small temporaries of each step moved
    them anyway (GPT-2-small's loop on the H200). The polar factor in fp32 (TF32 off), so the eager
    twin runs the same kernels and the check can be tight: in bf16 the two drifted 1.4e-3 apart over
    8 steps on the H200, a bound too loose to catch a wrong graph."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 768), torch.nn.LayerNorm(768), torch.nn.GELU(),
        torch.nn.Linear(768, 768), torch.nn.LayerNorm(768), torch.nn.GELU(), torch.nn.Linear(768, 256),
    ).cuda()
    model_e = copy.deepcopy(model)
    x = torch.randn(128, 256, device="cuda")
    opt = fo.Muon(fo.param_groups(model), lr=0.02, weight_decay=0.05, polar_dtype=torch.float32)
    opt_e = fo.Muon(fo.param_groups(model_e), lr=0.02, weight_decay=0.05, polar_dtype=torch.float32, compiled=False)
    captures = _train_beside_eager(model, opt, model_e, opt_e, x)
    polar = next(rt for rt in opt._runtime if rt.algorithm == "polargrad")
    assert all(impl.glue == "fused" for impl in polar.state.polar_impls_for(polar.hparams.polar_spec))
    prog = opt._program
    assert prog.recaptures <= 1 and not prog.copies_grads, (prog.captures, prog.recaptures)
    assert 0 < prog.copied_grads < len(list(model.parameters()))  # the small ones: norms, biases, 256×768
    assert captures[3:] == [captures[3]] * 5
    # the LayerNorm params step on fused AdamW in the graph, foreach AdamW eagerly: over 8 steps one
    # bias element drifted 2.9e-6 apart on the H200; a graph reading stale grads is off by ~1e-3
    torch.testing.assert_close(list(model.parameters()), list(model_e.parameters()), rtol=1e-5, atol=1e-5)
