"""The drop-in's CUDA-graph program (``fpolar.optim.compiled_step``, backend "cuda_graph") on a GPU
(skipped without one): replays equal the eager drop-in step by step, with grads set to None between
steps (copied into the captured ones) or zeroed in place (no copy), under an LR schedule (no
recapture), and a param losing its grad re-warms and recaptures. fp32 with TF32 off, so eager and
replay run the same kernels: equal up to the fused AdamW kernel's own rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch

import fpolar.optim as fo
from fpolar.adamw_fused import fused_adamw_step
from fpolar.optim.compiled_step import StepProgram

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOL = dict(rtol=2e-6, atol=2e-6)


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


@pytest.mark.parametrize("in_place", [False, True], ids=["set_to_none", "zeroed_in_place"])
def test_cuda_graph_program_equals_eager(in_place):
    p_e, p_g = make_params(), make_params()
    opt_e, opt_g = build(p_e), build(p_g)
    prog = StepProgram("cuda_graph")
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.7) for o in (opt_e, opt_g)]
    captured_grads = None
    for k in range(6):
        skip = (1,) if k >= 4 else ()
        write_grads(p_e, k, in_place, skip)
        write_grads(p_g, k, in_place, skip)
        run(opt_e, None)
        run(opt_g, prog)
        for s in scheds:
            s.step()
        torch.cuda.synchronize()
        # AdamW goes through the fused kernel in the program, foreach ops eagerly: fp32 ulps apart
        torch.testing.assert_close(p_g, p_e, **TOL)
        if k == 0:
            warm_grads = [p.grad for p in p_g]
        if k == 1:
            captured_grads = [p.grad for p in p_g]
            # the capture ran on the warm-up step's grad tensors (their one-launch tables exist)
            assert all(a is b for a, b in zip(captured_grads, warm_grads))
            assert all(a is b for a, b in zip(captured_grads[:4], prog._graph_grads[0]))
        if k == 3 and in_place:  # zeroed in place: the graph reads the user's own grad tensors
            assert all(a is b for a, b in zip(captured_grads, [p.grad for p in p_g]))
    # steps 0-3 one layout (warm-up, capture, 2 replays), 4-5 another (warm-up, capture)
    assert (prog.warmups, prog.captures) == (2, 2)
    assert max(float((a - b).detach().abs().max()) for a, b in zip(p_g, make_params())) > 1e-3


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


def test_zero_grad_set_to_none_keeps_one_grad_set_under_capture():
    """A train loop with ``zero_grad()`` (set_to_none=True, the default) and the CUDA-graph drop-in:
    once captured, backward accumulates into the grads the graph reads (``p.grad`` stays the held
    tensor), so a backward allocates no new grad set (torch.cuda.memory_allocated grows by less than
    half the grads' bytes over it, where fresh grads would add all of them), and the params equal an
    eager drop-in's with grads set to None."""
    torch.manual_seed(0)
    model_e = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256)).cuda()
    model_g = copy.deepcopy(model_e)
    x = torch.randn(64, 256, device="cuda")
    opt_e = fo.Muon(model_e.parameters(), lr=0.02, weight_decay=0.05, polar_dtype=torch.float32, compiled=False)
    opt_g = fo.Muon(model_g.parameters(), lr=0.02, weight_decay=0.05, polar_dtype=torch.float32)
    grad_bytes = sum(p.numel() * p.element_size() for p in model_g.parameters())
    for k in range(6):
        for model, opt in ((model_e, opt_e), (model_g, opt_g)):
            opt.zero_grad()
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            model(x).square().mean().backward()
            torch.cuda.synchronize()
            grown = torch.cuda.memory_allocated() - before
            if opt is opt_g and k >= 3:  # captured at step 1, replayed since: grads held and reused
                held = {id(g) for grads in opt_g._program._graph_grads for g in grads}
                assert all(id(p.grad) in held for p in model_g.parameters())
                assert grown < grad_bytes / 2, (k, grown, grad_bytes)
            opt.step()
        torch.cuda.synchronize()
        torch.testing.assert_close(list(model_g.parameters()), list(model_e.parameters()), **TOL)
    assert opt_g._program.captures == 1
