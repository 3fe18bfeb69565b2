"""The kernel autotune and the measured kernels="auto" on a CUDA GPU (skipped without one).

Every candidate config and the tuned choice against float64; the tuning of the GPT-2-small matrix
set within its time budget; no tuning while a CUDA graph is captured; Gram Newton–Schulz on the
symmetric kernels against the float64 SVD polar factor.
"""

from __future__ import annotations

import time

import pytest
import torch

import fpolar
import fpolar.kernels as K
from fpolar.kernels import tuning

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

NS_A, NS_B, NS_C = 3.4445, -4.7750, 2.0315
BF16 = torch.bfloat16
# The wide (B, m, n) batches of the GPT-2-small matrix set (tall ones transposed).
GPT2_SMALL = [(12, 768, 768), (12, 768, 2304), (24, 768, 3072)]


@pytest.fixture
def fresh_tuner(tmp_path):
    """A tuner of its own (tuning on, its own cache file), the process one restored afterwards."""
    saved = tuning._TUNER
    tuner = tuning.set_tuning(True, cache_path=tmp_path / "kernel_tuning.json")
    yield tuner
    tuning._TUNER = saved
    torch.cuda.empty_cache()


def _normalized(shape, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape, generator=g, device="cuda")
    return (x / x.norm(dim=(-2, -1), keepdim=True)).to(BF16)


def _rel_err(out, exact):
    assert not torch.isnan(out).any()
    return ((out.double() - exact).norm() / exact.norm()).item()


def _cases(shape):
    batch, m, n = shape
    x = _normalized(shape, 1)
    y = _normalized(shape, 2)
    a = x @ x.mT  # symmetric, norm ≤ 1
    x64, y64, a64 = x.double(), y.double(), a.double()
    lower = lambda t: t.tril() + t.tril(-1).mT  # noqa: E731
    return {
        "sym_gram": (lambda c: K.launch_sym_gram(x, torch.empty(batch, m, m, device="cuda", dtype=BF16), c), x64 @ x64.mT),
        "sym_poly": (
            lambda c: K.launch_sym_poly(a, torch.empty_like(a), NS_B, NS_C, c),
            NS_B * a64 + NS_C * (a64 @ a64),
        ),
        "sym_cross": (
            lambda c: K.launch_sym_cross(x, y, torch.empty(batch, m, m, device="cuda", dtype=BF16), c),
            lower(x64 @ y64.mT),
        ),
        "ns_apply": (lambda c: K.launch_ns_apply(x, a, torch.empty_like(x), NS_A, c), NS_A * x64 + a64 @ x64),
    }


@pytest.mark.parametrize("shape", [(12, 768, 3072), (3, 1000, 1537), (2, 40, 70)], ids=lambda s: "x".join(map(str, s)))
def test_every_candidate_and_the_tuned_choice_match_float64(shape, fresh_tuner):
    batch, m, n = shape
    for kernel, (launch, exact) in _cases(shape).items():
        ran = 0
        # the pointer-load and TMA variants' candidates (a launch loads through TMA where it can)
        names = [kernel] + ([tuning.loaded_through(kernel, True)] if kernel.startswith("sym_") else [])
        configs = [c for name in names for c in K.candidate_configs(name, m, m if kernel == "sym_poly" else n, BF16)]
        for config in configs:
            try:
                out = launch(config)
            except Exception as exc:  # a config this GPU cannot run is skipped by the tuner too
                if "resource" not in str(exc).lower():
                    raise
                continue
            ran += 1
            assert _rel_err(out, exact) < 1e-2, (kernel, config)
        assert ran >= 2, kernel
        tuned = launch(None)  # through the tuner: times the candidates, then runs the fastest
        assert _rel_err(tuned, exact) < 1e-2, kernel
    assert fresh_tuner.timed == 4


def test_gpt2_small_set_tunes_within_budget(fresh_tuner):
    """The whole set under kernels="auto" (all four candidates per group, every kernel config on the
    way) in under 20 s; a second plan reads every decision from the cache."""
    spec = fpolar.PolarSpec.build("newton_schulz", kernels="auto", coefficients="polar_express")
    start = time.perf_counter()
    impls = [spec.impl_for(m, n, torch.float32, torch.device("cuda"), batch=b) for b, m, n in GPT2_SMALL]
    torch.cuda.synchronize()
    took = time.perf_counter() - start
    print(f"tuning the GPT-2-small set: {took:.1f} s, {fresh_tuner.timed} keys")
    for impl in impls:
        print(impl.label, "|", impl.reason)
        assert impl.reason.startswith("measured on ")
    assert took < 20.0
    timed = fresh_tuner.timed
    assert [spec.impl_for(m, n, torch.float32, torch.device("cuda"), batch=b) for b, m, n in GPT2_SMALL] == impls
    assert fresh_tuner.timed == timed
    fresh = tuning.set_tuning(True, cache_path=fresh_tuner.cache_path)  # a new process: from the file
    assert [spec.impl_for(m, n, torch.float32, torch.device("cuda"), batch=b) for b, m, n in GPT2_SMALL] == impls
    assert fresh.timed == 0


def test_capture_uses_the_heuristic_without_tuning(fresh_tuner):
    x = _normalized((4, 200, 330), 3)  # a shape no other test tunes
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        tuning.set_tuning(False)  # warm-up compiles the heuristic's kernel without tuning
        K.sym_gram(x)
    torch.cuda.current_stream().wait_stream(side)
    tuner = tuning.set_tuning(True, cache_path=fresh_tuner.cache_path)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = K.sym_gram(x)
    graph.replay()
    torch.cuda.synchronize()
    assert tuner.timed == 0
    assert _rel_err(out, x.double() @ x.double().mT) < 1e-2


def test_symmetric_gram_ns_matches_svd_polar(fresh_tuner):
    x = torch.randn(12, 768, 3072, device="cuda", generator=torch.Generator(device="cuda").manual_seed(4))
    u, _, vh = torch.linalg.svd(x.double(), full_matrices=False)
    exact = u @ vh
    opts = dict(coefficients="quintic", ns_steps=8, polar_dtype=BF16)
    tri = fpolar.polar(x, "gram_newton_schulz", kernels="triton", **opts)
    cub = fpolar.polar(x, "gram_newton_schulz", kernels="torch", **opts)
    err_tri, err_cub = _rel_err(tri, exact), _rel_err(cub, exact)
    print(f"Gram NS8 vs SVD polar: Triton symmetric {err_tri:.4f}, cuBLAS {err_cub:.4f}")
    assert err_tri < 1.5 * err_cub + 5e-3
