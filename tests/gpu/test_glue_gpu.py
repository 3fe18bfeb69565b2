"""The fused glue on a CUDA GPU (skipped without one): GPT-2-small shapes, fused vs torch glue.

- each op's Triton kernel against its torch twin and float64 (fresh random inputs, tall and wide,
  Nesterov on/off, skip flag False and True with NaN grads: bitwise unchanged);
- the whole Muon step on the fused glue against the torch glue (same ``kernels="auto"`` polar path),
  eagerly, inside ``torch.compile(fullgraph=True)`` and inside a manually captured CUDA graph.
"""

from __future__ import annotations

import pytest
import torch

import fpolar.kernels as K
from fpolar import PolarGradHParams, init_state, polargrad_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPT2_SMALL = [(768, 768), (768, 3072), (3072, 768), (768, 2304)]
SAFETY, EPS = 1.02, 1e-7


def _random(shape, dtype=torch.float32, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(shape, generator=gen, device="cuda", dtype=torch.float32).to(dtype)


def _id(shape):
    return "x".join(map(str, shape))


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("shape", GPT2_SMALL, ids=_id)
def test_momentum_polar_input_matches_twin_and_float64(shape, nesterov):
    m, n = shape
    batch = 4
    mom = _random((batch, m, n), seed=1)
    grads = [_random((m, n), seed=10 + i) for i in range(batch)]
    m_fused, m_twin = mom.clone(), mom.clone()
    found = torch.zeros((), dtype=torch.bool, device="cuda")
    x, scale = K.momentum_polar_input(m_fused, grads, 0.95, nesterov, torch.bfloat16, SAFETY, EPS, found)
    x_t, scale_t = K.momentum_polar_input_reference(m_twin, grads, 0.95, nesterov, torch.bfloat16, SAFETY, EPS, found)
    assert x.shape == x_t.shape == (batch, min(m, n), max(m, n)) and x.is_contiguous()
    torch.testing.assert_close(m_fused, m_twin, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(scale, scale_t, rtol=1e-5, atol=0)
    # two roundings to bf16 (to nearest) against one: within one bf16 ulp of the largest entry
    err = (x.float() - x_t.float()).abs().amax() / x_t.float().abs().amax()
    assert err <= 2.0**-7, err
    # float64 reference of X
    g64 = torch.stack(grads).double()
    new = 0.95 * mom.double() + 0.05 * g64
    v = 0.95 * new + 0.05 * g64 if nesterov else new
    v = v.mT if m > n else v
    peak = v.abs().amax(dim=(-2, -1), keepdim=True)
    x64 = v / (SAFETY * (v / peak).norm(dim=(-2, -1), keepdim=True) * peak + EPS * peak)
    rel = (x.double() - x64).norm() / x64.norm()
    assert rel <= 5e-3, rel


@pytest.mark.parametrize("shape", GPT2_SMALL, ids=_id)
def test_skip_leaves_momentum_and_params_bitwise(shape):
    m, n = shape
    mom = _random((3, m, n), seed=2)
    grads = [_random((m, n), seed=20 + i) for i in range(3)]
    grads[1][5, 7] = float("nan")
    params = [_random((m, n), seed=30 + i) for i in range(3)]
    before_m, before_p = mom.clone(), [p.clone() for p in params]
    found = torch.ones((), dtype=torch.bool, device="cuda")
    x, _ = K.momentum_polar_input(mom, grads, 0.95, True, torch.bfloat16, SAFETY, EPS, found)
    assert torch.equal(mom.view(torch.int32), before_m.view(torch.int32))
    assert bool((x == 0).all())
    K.scaled_update_(params, _random(x.shape, torch.bfloat16, 3), torch.rand(3, device="cuda"), torch.tensor(0.99, device="cuda"), found)
    assert all(torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in zip(params, before_p))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", GPT2_SMALL, ids=_id)
def test_scaled_update_matches_float64(shape, dtype):
    m, n = shape
    params = [_random((m, n), dtype, seed=40 + i) for i in range(3)]
    wide = (3, min(m, n), max(m, n))
    o = _random(wide, torch.bfloat16, seed=4)
    step = torch.rand(3, device="cuda") * 0.05
    decay = torch.tensor(0.999, device="cuda")
    o_p = o.mT if m > n else o
    w64 = torch.stack(params).double()
    exact = 0.999 * w64 - step.double()[:, None, None] * o_p.double()
    K.scaled_update_(params, o, step, decay, None)
    out = torch.stack(params).double()
    tol = 1e-6 if dtype == torch.float32 else 2.0**-8
    bound = 0.999 * w64.abs() + (step.double()[:, None, None] * o_p.double()).abs()
    assert ((out - exact).abs() <= tol * bound + 1e-30).all()


def _muon(kernels: str) -> PolarGradHParams:
    return PolarGradHParams(
        lr=torch.tensor(0.02, device="cuda"), momentum=0.95, nesterov=True, scale="shape", weight_decay=0.01,
        coefficients="muon", ns_steps=5, kernels=kernels,
    )


def _problem(seed: int = 0):
    params = [_random(s, seed=seed + i) for i, s in enumerate(GPT2_SMALL * 2)]
    grads = [[_random(s, seed=100 * (k + 1) + i) for i, s in enumerate(GPT2_SMALL * 2)] for k in range(3)]
    return params, grads


def _runner(glue: str, mode: str):
    """(params, state, grads, run): ``run()`` takes one step from the static ``grads`` tensors, eagerly,
    compiled (fullgraph) or replaying a captured CUDA graph. ``kernels="auto"`` either way, with the
    glue forced to ``glue``, so only the glue differs between the two. Params and momentum are reset
    to the common starting point after any warm-up."""
    params, _ = _problem()
    hp = _muon("auto")
    state = init_state(params, hp)
    assert all(i.glue == "fused" for i in state.polar_impls), state.polar_impls
    state.polar_impls = tuple(i._replace(glue=glue) for i in state.polar_impls)
    grads = [torch.zeros_like(p) for p in params]

    def step():
        polargrad_step(params, grads, state, hp)

    run = step
    if mode == "compile":
        torch._dynamo.reset()
        run = torch.compile(step, fullgraph=True)
    elif mode == "graph":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()  # warm-up: Triton compiles, the allocator settles
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        run = graph.replay
        start, _ = _problem()
        for p, s in zip(params, start):
            p.copy_(s)
        for b in state.buffers:
            b.zero_()
    return params, state, grads, run


@pytest.mark.parametrize("mode", ["eager", "compile", "graph"])
def test_muon_step_fused_glue_matches_torch_glue(mode):
    """Three steps (the second with a NaN grad: skipped) of Muon on GPT-2-small shapes, fused glue
    vs torch glue, from the same params and state."""
    results = {}
    _, grads_per_step = _problem()
    for glue in ("torch", "fused"):
        # compile mode: the fused glue compiled (Inductor, fullgraph) against the torch glue eager
        params, state, grads, run = _runner(glue, mode if glue == "fused" or mode != "compile" else "eager")
        start = [p.clone() for p in params]
        for k in range(3):
            for g, new in zip(grads, grads_per_step[k]):
                g.copy_(new)
            if k == 1:
                grads[3][0, 0] = float("nan")
            before = [p.clone() for p in params]
            run()
            torch.cuda.synchronize()
            if k == 1:
                assert all(torch.equal(a, b) for a, b in zip(params, before)), f"{glue}: a skipped step wrote"
        results[glue] = ([p.clone() for p in params], [b.clone() for b in state.buffers], start)
    (p_t, m_t, s_t), (p_f, m_f, s_f) = results["torch"], results["fused"]
    for a, b in zip(s_t, s_f):
        assert torch.equal(a, b)
    for a, b in zip(m_t, m_f):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for a, b, s in zip(p_t, p_f, s_t):
        # the updates differ by the bf16 rounding of X (twice fused, once torch) carried through NS;
        # compare the updates, not the weights (a transposed or misplaced matrix gives rel ≈ 1.4)
        du_t, du_f = a - s, b - s
        rel = (du_f - du_t).norm() / du_t.norm()
        assert rel < 3e-2, rel
