"""The fused glue on a CUDA GPU (skipped without one): GPT-2-small shapes, fused vs torch glue.

- each op's Triton kernel against its torch twin and float64 (fresh random inputs, tall and wide,
  Nesterov on/off, skip flag False and True with NaN grads: bitwise unchanged);
- one launch per group (the offsets table) against one launch per tensor (bitwise), and the scale
  pass against torch's in-place multiply (bitwise), odd shapes included (offsets not 16-aligned);
- the one launch inside a captured CUDA graph (tables built by an eager call before), and the
  fallback to one launch per tensor for tensors first seen inside the capture, replays against eager;
- the whole Muon step on the fused glue against the torch glue (same ``kernels="auto"`` polar path),
  eagerly, inside ``torch.compile(fullgraph=True)`` and inside a manually captured CUDA graph.
"""

from __future__ import annotations

import pytest
import torch

import fpolar.kernels as K
from fpolar import PolarGradHParams, init_state, polargrad_step
from fpolar.kernels._glue_common import clear_matrix_offsets, matrix_offsets, matrix_view
from fpolar.kernels.momentum_polar_input import frobenius_scale_from_tiles, launch_scale_polar_input

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
    x, scale, _ = K.momentum_polar_input(m_fused, grads, 0.95, nesterov, torch.bfloat16, SAFETY, EPS, found)
    x_t, scale_t, _ = K.momentum_polar_input_reference(m_twin, grads, 0.95, nesterov, torch.bfloat16, SAFETY, EPS, found)
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
    x, _, _ = K.momentum_polar_input(mom, grads, 0.95, True, torch.bfloat16, SAFETY, EPS, found)
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


def _group_tensors(m, n, seed):
    """A group of 4 m×n matrices as separate tensors (a 3-D grad/param of 2 and two 2-D ones), its
    momentum, and a bf16 polar factor in the wide orientation."""
    grads = [_random((2, m, n), seed=seed), _random((m, n), seed=seed + 1), _random((m, n), seed=seed + 2)]
    params = [_random((2, m, n), seed=seed + 3), _random((m, n), seed=seed + 4), _random((m, n), seed=seed + 5)]
    mom = _random((4, m, n), seed=seed + 6)
    o = _random((4, min(m, n), max(m, n)), torch.bfloat16, seed=seed + 7)
    return grads, params, mom, o


# per-matrix step sizes and the decay of the update half, made once (no host-to-device copy in a capture)
STEP = torch.linspace(0.01, 0.05, 4, device="cuda") if torch.cuda.is_available() else None
DECAY = torch.full((), 0.999, device="cuda") if torch.cuda.is_available() else None


def _glue_by_launchers(grads, params, mom, o, single):
    """Both glue halves through the launchers: (M, V before the scale, X, tile stats, scale, W)."""
    b, m, n = mom.shape
    x = torch.empty((b, min(m, n), max(m, n)), dtype=torch.bfloat16, device="cuda")
    tmax, tsum = K.launch_momentum_polar_input(mom, grads, x, 0.95, True, None, single_launch=single)
    v = x.clone()
    scale, _ = launch_scale_polar_input(x, tmax, tsum, SAFETY, EPS)
    K.launch_scaled_update(params, o, STEP, DECAY, None, single_launch=single)
    return mom, v, x, tmax, tsum, scale, params


@pytest.mark.parametrize("shape", GPT2_SMALL + [(20, 37), (40, 17)], ids=_id)
def test_one_launch_per_group_equals_one_per_tensor(shape):
    m, n = shape
    grads, params, mom, o = _group_tensors(m, n, seed=50)
    table = matrix_offsets([matrix_view(t, m, n, writable=False) for t in grads])
    assert table is not None and table.aligned == (m * n % 16 == 0)
    one = _glue_by_launchers(grads, [p.clone() for p in params], mom.clone(), o, single=True)
    per = _glue_by_launchers(grads, [p.clone() for p in params], mom.clone(), o, single=False)
    # the same kernel code on the same matrices, only addressed differently: bit for bit
    for a, b in zip(one[:6], per[:6]):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(one[6], per[6]))
    mom_new, v, x, tmax, tsum, scale, _ = one
    torch.testing.assert_close(scale, frobenius_scale_from_tiles(tmax, tsum, SAFETY, EPS), rtol=1e-6, atol=0)
    # the scale pass: V·scale in fp32 rounded once to nearest, exactly torch's in-place multiply
    assert torch.equal(x, v.clone().mul_(scale[:, None, None]))
    # and the op against its twin on these grads (a 3-D grad in the list)
    m_op, m_twin = mom.clone(), mom.clone()
    x_op, s_op, _ = K.momentum_polar_input(m_op, grads, 0.95, True, torch.bfloat16, SAFETY, EPS, None)
    x_t, s_t, _ = K.momentum_polar_input_reference(m_twin, grads, 0.95, True, torch.bfloat16, SAFETY, EPS, None)
    torch.testing.assert_close(m_op, m_twin, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s_op, s_t, rtol=1e-5, atol=0)
    assert (x_op.float() - x_t.float()).abs().amax() <= 2.0**-7 * x_t.float().abs().amax()


@pytest.mark.parametrize("shape", [(768, 3072), (3072, 768)], ids=_id)
def test_captured_graph_runs_one_launch_after_an_eager_call_and_falls_back_before(shape):
    """Tables built by an eager call are found inside a capture (single_launch=True would raise
    otherwise); tensors first seen inside the capture get one launch per tensor. Replays with new
    grads match eager runs of the same inputs."""
    m, n = shape
    # Tables are keyed by address: a table left by an earlier test whose tensors' memory the "unseen"
    # tensors now reuse would be found (rightly: same addresses, same offsets). Start from none.
    clear_matrix_offsets()
    seen = _group_tensors(m, n, seed=60)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        _glue_by_launchers(*seen[:2], seen[2].clone(), seen[3], single=True)  # warm-up: compiles, builds tables
        _glue_by_launchers(*_group_tensors(m, n, seed=61), single=False)  # compiles the per-tensor variant
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    unseen = _group_tensors(m, n, seed=70)
    start = {"seen": ([p.clone() for p in seen[1]], seen[2].clone()), "unseen": ([p.clone() for p in unseen[1]], unseen[2].clone())}
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        assert matrix_offsets([matrix_view(t, m, n, writable=False) for t in unseen[0]]) is None
        out_seen = _glue_by_launchers(*seen, single=True)
        out_unseen = _glue_by_launchers(*unseen, single=None)
    for name, group, out in (("seen", seen, out_seen), ("unseen", unseen, out_unseen)):
        for trial in range(2):
            for k, g in enumerate(group[0]):
                g.copy_(_random(g.shape, seed=80 + 10 * trial + k))
            params0, mom0 = start[name]
            for p, p0 in zip(group[1], params0):
                p.copy_(p0)
            group[2].copy_(mom0)
            graph.replay()
            torch.cuda.synchronize()
            eager = _glue_by_launchers(group[0], [p.clone() for p in params0], mom0.clone(), group[3], single=False)
            for a, b in zip(out[:6], eager[:6]):
                assert torch.equal(a, b), name
            assert all(torch.equal(a, b) for a, b in zip(out[6], eager[6])), name


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
def test_muon_step_fused_glue_matches_torch_glue(mode, monkeypatch):
    """Three steps (the second with a NaN grad: skipped) of Muon on GPT-2-small shapes, fused glue
    vs torch glue, from the same params and state. On Hopper the captured graph's Gram groups defer
    their Frobenius scale into the iteration (``defers_input_scale``), and the comparison covers it."""
    import fpolar.fused_glue
    from fpolar.polar.dispatch import hopper_with_tma

    decisions = []
    real = fpolar.fused_glue.defers_input_scale

    def recorded(impl, device):
        decisions.append((impl.method, real(impl, device)))
        return decisions[-1][1]

    monkeypatch.setattr(fpolar.fused_glue, "defers_input_scale", recorded)
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
    if mode == "graph" and hopper_with_tma(torch.device("cuda")):
        assert ("gram_newton_schulz", True) in decisions, decisions  # captured: deferred
    if mode == "eager":
        assert all(not deferred for _, deferred in decisions), decisions  # cuBLAS outside graphs
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


def test_eager_fused_step_in_chunks_equals_the_whole_group(monkeypatch):
    """Eagerly a group above ``CHUNK_ELEMENTS`` runs the fused glue chunk by chunk (bounding the
    step's workspace): the momentum is the whole group's bit for bit (elementwise), the updates
    agree to bf16 rounding (cuBLAS may pick other kernels for the smaller batches), and the chunks
    are the ones asked for."""
    import fpolar.fused_glue as fused_module
    import fpolar.polargrad as polargrad_module

    def run(bound: int):
        monkeypatch.setattr(polargrad_module, "CHUNK_ELEMENTS", bound)
        params, grads_per_step = _problem()
        start = [p.clone() for p in params]
        hp = _muon("auto")
        state = init_state(params, hp)
        sizes = []
        real = fused_module.fused_group_step

        def counting(group, *args, **kwargs):
            sizes.append(sum(group.counts))
            return real(group, *args, **kwargs)

        monkeypatch.setattr(polargrad_module, "fused_group_step", counting)
        for k in range(2):
            polargrad_step(params, grads_per_step[k], state, hp)
        torch.cuda.synchronize()
        return [p - s for p, s in zip(params, start)], [b.clone() for b in state.buffers], sizes

    whole_updates, whole_momentum, whole_sizes = run(1 << 30)
    chunk_updates, chunk_momentum, chunk_sizes = run(768 * 3072)  # one 768×3072 matrix per chunk
    assert whole_sizes == [2, 2, 2, 2] * 2
    assert sorted(chunk_sizes) == [1] * 6 * 2 + [2] * 2  # 768² (2 of 590k elements) stays one chunk
    for a, b in zip(whole_momentum, chunk_momentum):
        assert torch.equal(a, b)
    for a, b in zip(whole_updates, chunk_updates):
        rel = (b - a).norm() / a.norm()
        assert rel < 1e-2, rel


def test_group_stays_whole_while_a_cuda_graph_is_captured(monkeypatch):
    """A graph's pool is allocated once and reused, so a captured step batches whole groups."""
    import fpolar.polargrad as polargrad_module
    from fpolar.state import ShapeGroup

    monkeypatch.setattr(polargrad_module, "CHUNK_ELEMENTS", 64 * 64)
    group = ShapeGroup(indices=(0, 1, 2), offsets=(0, 1, 2), counts=(1, 1, 1), m=64, n=64,
                       dtype=torch.float32, device=torch.device("cuda"))
    buffer = torch.zeros(3, 64, 64, device="cuda")
    assert len(polargrad_module.group_chunks(group, buffer)) == 3
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side), torch.cuda.graph(graph):
        captured = polargrad_module.group_chunks(group, buffer)
        buffer.add_(1)  # something to capture
    assert len(captured) == 1 and captured[0][1].shape[0] == 3
