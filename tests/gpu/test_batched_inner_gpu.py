"""``fpolar::batched_inner`` and ``nuclear_scale`` on a CUDA GPU (skipped without one).

GPT-2-small shapes, O bf16 (the polar dtype) and X bf16 or fp32 (the fused glue's X, the torch glue's
momentum), O transposed for tall groups as ``polar_in_orientation`` returns it:
- the kernel against float64 within 2e-6·Σ|O_ij·X_ij| (tests/test_batched_inner.py says why), and
  the same bits on every call;
- ``nuclear_scale`` runs the kernel eagerly and inside a captured CUDA graph (same bits), and the
  torch expression under torch.compile (within the same tolerance).
"""

from __future__ import annotations

import pytest
import torch

import fpolar.kernels as K
from fpolar.scale import nuclear_scale

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPT2_SMALL = [(768, 768), (768, 3072), (3072, 768), (2304, 768)]
REL_TOL = 2e-6


def _inputs(shape, x_dtype, seed, batch=12):
    m, n = shape
    gen = torch.Generator(device="cuda").manual_seed(seed)
    tall = m > n
    wide = torch.randn((batch, min(m, n), max(m, n)), generator=gen, device="cuda") + 0.25
    o = wide.bfloat16().mT if tall else wide.bfloat16()
    x = torch.randn((batch, m, n), generator=gen, device="cuda").to(x_dtype)
    return o, x


def _rel_err(out, o, x):
    terms = o.double() * x.double()
    return ((out.double() - terms.sum(dim=(-2, -1))).abs() / terms.abs().sum(dim=(-2, -1))).max().item()


@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", GPT2_SMALL, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_float64_and_repeats_bitwise(shape, x_dtype):
    o, x = _inputs(shape, x_dtype, seed=shape[0] + shape[1])
    out = K.batched_inner(o, x)
    assert out.dtype == torch.float32 and out.shape == (12,)
    assert _rel_err(out, o, x) <= REL_TOL
    for _ in range(3):
        assert torch.equal(K.batched_inner(o, x), out)


def test_nuclear_scale_eager_graph_and_compile():
    o, x = _inputs((3072, 768), torch.bfloat16, seed=5)
    eager = nuclear_scale(o, x)
    assert torch.equal(eager, K.launch_batched_inner(o, x, torch.empty(12, device="cuda")))  # the kernel ran
    static = torch.empty(12, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        static.copy_(nuclear_scale(o, x))  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static.copy_(nuclear_scale(o, x))
    static.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static, eager)
    torch._dynamo.reset()
    compiled = torch.compile(nuclear_scale, fullgraph=True)(o, x)
    assert _rel_err(compiled, o, x) <= REL_TOL


def test_float64_stays_on_the_torch_path():
    o, x = _inputs((768, 768), torch.float64, seed=6, batch=2)
    s = nuclear_scale(o.double(), x)
    assert s.dtype == torch.float64
    torch.testing.assert_close(s, (o.double() * x).sum(dim=(-2, -1)), rtol=1e-12, atol=0)
