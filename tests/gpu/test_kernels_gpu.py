"""The Triton kernels of fpolar.kernels on a CUDA GPU (skipped without one).

Realistic transformer shapes and odd ones, against float64 references; poisoned outputs; exact
symmetry; batches whose offsets pass int32; the ops inside torch.compile(mode="reduce-overhead") and
inside a manually captured CUDA graph, matching eager.
"""

from __future__ import annotations

import math

import pytest
import torch

import fpolar.kernels as K

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

NS_A, NS_B, NS_C = 3.4445, -4.7750, 2.0315

SHAPES = [(12, 768, 768), (12, 768, 3072), (4, 1024, 4096), (3, 1000, 1537), (2, 1, 9), (5, 17, 33)]
# Relative Frobenius error against float64: bf16/fp16 inputs (output rounding dominates), fp32 with
# exact ("ieee") dots, fp32 with TF32 dots (10-bit mantissa operands).
REL_TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}
TF32_REL_TOL = 3e-3


def _id(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _random(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(shape, generator=gen, device="cuda", dtype=torch.float32).to(dtype)


def _normalized(x: torch.Tensor) -> torch.Tensor:
    """x / ‖x‖_F per matrix, as Newton–Schulz sees it (σ_max ≤ 1)."""
    xf = x.float()
    return (xf / xf.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-7)).to(x.dtype)


def _symmetric(batch: int, m: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """An exactly symmetric (B, m, m) with norm about 1: a normalized Gram matrix."""
    x = _normalized(_random((batch, m, m + 7), torch.float32, seed))
    gram = x @ x.mT
    return ((gram + gram.mT) / 2).to(dtype)


def _rel_err(out: torch.Tensor, exact: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "NaN in output (an unwritten tile?)"
    return ((out.double() - exact).norm() / exact.norm().clamp_min(1e-300)).item()


def _poison(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.full(shape, math.nan, dtype=dtype, device="cuda")


@pytest.fixture(autouse=True)
def _exact_fp32_matmul():
    """fp32 kernels follow torch's TF32 switch; keep it off unless a test turns it on."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before
    torch.cuda.empty_cache()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_kernels_match_float64(shape, dtype):
    batch, m, n = shape
    tol = REL_TOL[dtype]
    x = _normalized(_random(shape, dtype, seed=1))
    x64 = x.double()

    gram = K.launch_sym_gram(x, _poison((batch, m, m), dtype))
    assert _rel_err(gram, x64 @ x64.mT) < tol
    assert torch.equal(gram, gram.mT)
    torch.testing.assert_close(K.sym_gram(x), gram, rtol=0, atol=0)  # the op runs the same kernel

    a = _symmetric(batch, m, dtype, seed=2)
    a64 = a.double()
    poly = K.launch_sym_poly(a, _poison((batch, m, m), dtype), NS_B, NS_C)
    assert _rel_err(poly, NS_B * a64 + NS_C * (a64 @ a64)) < tol
    assert torch.equal(poly, poly.mT)
    torch.testing.assert_close(K.sym_poly(a, NS_B, NS_C), poly, rtol=0, atol=0)

    applied = K.launch_ns_apply(x, poly, _poison(shape, dtype), NS_A)
    assert _rel_err(applied, NS_A * x64 + poly.double() @ x64) < tol
    torch.testing.assert_close(K.ns_apply(x, poly, NS_A), applied, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(12, 768, 3072), (3, 1000, 1537)], ids=_id)
def test_fp32_with_tf32_dots(shape):
    torch.backends.cuda.matmul.allow_tf32 = True
    x = _normalized(_random(shape, torch.float32, seed=3))
    x64 = x.double()
    err = _rel_err(K.sym_gram(x), x64 @ x64.mT)
    assert 1e-6 < err < TF32_REL_TOL  # TF32 is really in use (exact fp32 would be ~1e-7)
    bm = K.sym_poly(K.sym_gram(x), NS_B, NS_C)
    assert _rel_err(K.ns_apply(x, bm, NS_A), NS_A * x64 + bm.double() @ x64) < TF32_REL_TOL


def test_non_contiguous_inputs():
    x = _normalized(_random((4, 1537, 1000), torch.bfloat16, seed=4)).mT  # (4, 1000, 1537) column-major
    a = _symmetric(4, 1000, torch.bfloat16, seed=5).mT
    assert not x.is_contiguous()
    assert torch.equal(K.sym_gram(x), K.sym_gram(x.contiguous()))
    assert torch.equal(K.sym_poly(a, NS_B, NS_C), K.sym_poly(a.contiguous(), NS_B, NS_C))
    assert torch.equal(K.ns_apply(x, a, NS_A), K.ns_apply(x.contiguous(), a.contiguous(), NS_A))


def test_batch_offsets_past_int32():
    """batch · stride > 2**31 elements: the last matrices are right only with int64 batch offsets."""
    batch, m, n = 520, 64, 65536  # 2.2e9 elements of x, 4.4 GB in bf16
    x = torch.empty((batch, m, n), dtype=torch.bfloat16, device="cuda")
    x.normal_(generator=torch.Generator(device="cuda").manual_seed(6)).div_(math.sqrt(m * n))
    tail = x[-3:].double()
    gram = K.sym_gram(x)
    assert _rel_err(gram[-3:], tail @ tail.mT) < 1e-2
    applied = K.ns_apply(x, gram, NS_A)
    assert _rel_err(applied[-3:], NS_A * tail + gram[-3:].double() @ tail) < 1e-2
    del applied, x
    a = torch.empty((520, 2048, 2048), dtype=torch.bfloat16, device="cuda")  # 2.2e9 elements
    a[:-3].normal_()
    a[-3:] = _symmetric(3, 2048, torch.bfloat16, seed=7)
    poly = K.sym_poly(a, NS_B, NS_C)
    a_tail = a[-3:].double()
    assert _rel_err(poly[-3:], NS_B * a_tail + NS_C * (a_tail @ a_tail)) < 1e-2


def _ns_step(x: torch.Tensor) -> torch.Tensor:
    """Two Newton–Schulz steps through the three ops."""
    a = K.sym_gram(x)
    x = K.ns_apply(x, K.sym_poly(a, NS_B, NS_C), NS_A)
    a = K.sym_gram(x)
    return K.ns_apply(x, K.sym_poly(a, NS_B, NS_C), NS_A)


def _assert_matches_eager(out: torch.Tensor, eager: torch.Tensor) -> None:
    torch.testing.assert_close(out.float(), eager.float(), rtol=2e-2, atol=2e-2)
    assert _rel_err(out, eager.double()) < 1e-2


def test_ops_under_compile_reduce_overhead():
    torch._dynamo.reset()
    x = _normalized(_random((6, 768, 3072), torch.bfloat16, seed=8))  # σ_max ≤ 1, as NS sees it
    compiled = torch.compile(_ns_step, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up, record, replay
        out = compiled(x)
    _assert_matches_eager(out, _ns_step(x))
    x2 = _normalized(_random((6, 768, 3072), torch.bfloat16, seed=9))
    _assert_matches_eager(compiled(x2).clone(), _ns_step(x2))


def test_ops_in_manual_cuda_graph():
    static_x = _normalized(_random((6, 1000, 1537), torch.bfloat16, seed=10))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up compiles the kernels outside the capture
        for _ in range(2):
            _ns_step(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = _ns_step(static_x)
    for seed in (11, 12):
        static_x.copy_(_normalized(_random(static_x.shape, torch.bfloat16, seed=seed)))
        graph.replay()
        torch.cuda.synchronize()
        _assert_matches_eager(static_out, _ns_step(static_x))


def _has_tma() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


@pytest.mark.skipif(not _has_tma(), reason="needs TMA (sm90 or later)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(12, 768, 3072), (3, 1000, 1536), (2, 40, 72)], ids=_id)
def test_tma_and_pointer_loads_both_match_float64(shape, dtype):
    """The lower-tile kernels (X Xᵀ, b·A + c·A², A·Bᵀ) through TMA (the default on sm90) and through pointer loads: each against
    float64, exactly symmetric, edge tiles included (1000 and 40 are not multiples of the tile)."""
    batch, m, n = shape
    tol = REL_TOL[dtype]
    x = _normalized(_random(shape, dtype, seed=5))
    a = _symmetric(batch, m, dtype, seed=6)
    x64, a64 = x.double(), a.double()
    for tma in (True, False):
        gram = K.launch_sym_gram(x, _poison((batch, m, m), dtype), tma=tma)
        assert _rel_err(gram, x64 @ x64.mT) < tol, tma
        assert torch.equal(gram, gram.mT)
        poly = K.launch_sym_poly(a, _poison((batch, m, m), dtype), NS_B, NS_C, tma=tma)
        assert _rel_err(poly, NS_B * a64 + NS_C * (a64 @ a64)) < tol, tma
        assert torch.equal(poly, poly.mT)
        # the congruence's second half: P·Uᵀ with U = P·R, = P·R·P for symmetric P and R
        u = torch.bmm(a, gram)
        cross = K.launch_sym_cross(a, u, _poison((batch, m, m), dtype), tma=tma)
        assert _rel_err(cross, a64 @ u.double().mT) < tol, tma
        assert torch.equal(cross, cross.mT)
        # a per-matrix scale in the epilogue (Gram NS's deferred input scale): s²·X Xᵀ and s·p(A)
        scale = torch.linspace(0.01, 40.0, batch, device="cuda", dtype=torch.float32)
        s64 = scale.double()[:, None, None]
        v = x * 7.5  # an unnormalized input, X = s·V in exact arithmetic for s = 1/7.5
        scaled = K.launch_sym_gram(v, _poison((batch, m, m), dtype), tma=tma, scale=scale)
        v64 = v.double()
        want = s64 * s64 * (v64 @ v64.mT)
        assert max(_rel_err(scaled[b], want[b]) for b in range(batch)) < tol, tma  # per matrix: scales differ
        assert torch.equal(scaled, scaled.mT)
        poly = K.launch_sym_poly(a, _poison((batch, m, m), dtype), NS_B, NS_C, tma=tma, shift=NS_A, scale=scale)
        eye = torch.eye(m, device="cuda", dtype=torch.float64)
        want = s64 * (NS_A * eye + NS_B * a64 + NS_C * (a64 @ a64))
        assert max(_rel_err(poly[b], want[b]) for b in range(batch)) < tol, tma
