"""Gram Newton–Schulz with its m×m products on the lower-tile ops (``triton_gram_ops``), on CPU.

On CPU the ``torch.ops.fpolar`` ops run their torch twins, which compute exactly what the CUDA
kernels compute (lower triangles reflected): so this checks the math of the symmetric formulation
(R, p(R) and P·R·P from their lower triangles, P·Q in full) against the float64 SVD polar factor and
against the plain batched-matmul Gram iteration.
"""

import pytest
import torch

from fpolar.coefficients import schedule_for
from fpolar.polar.dispatch import symmetric_gram_ops, symmetric_ops, triton_gram_ops, triton_ops
from fpolar.polar.gram_newton_schulz import gram_newton_schulz
from fpolar.polar.newton_schulz import newton_schulz


def _svd_polar(x: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(x.double(), full_matrices=False)
    return u @ vh


@pytest.mark.parametrize("restart", [1, 2, 3])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)], ids=str)
def test_symmetric_gram_ns_matches_svd_polar(restart, dtype, tol):
    x = torch.randn(3, 20, 70, generator=torch.Generator().manual_seed(restart))
    schedule = schedule_for("quintic", 10, "repeat_last")  # converged well past the 5-step list
    exact = _svd_polar(x)
    sym = gram_newton_schulz(x, schedule, polar_dtype=dtype, gram_restart=restart, ops=triton_ops(), gram_ops=triton_gram_ops())
    plain = gram_newton_schulz(x, schedule, polar_dtype=dtype, gram_restart=restart)
    assert sym.dtype == dtype and sym.shape == x.shape
    err_sym = ((sym.double() - exact).norm() / exact.norm()).item()
    err_plain = ((plain.double() - exact).norm() / exact.norm()).item()
    assert err_sym < tol, err_sym
    assert err_sym < 2 * err_plain + 1e-6  # no worse than the full products, beyond rounding


def test_congruence_is_p_r_p_and_exactly_symmetric():
    g = torch.Generator().manual_seed(7)
    y = torch.randn(2, 16, 40, generator=g)
    r = y @ y.mT / 40
    z = torch.randn(2, 16, 40, generator=g)
    p = z @ z.mT / 40 + torch.eye(16)
    got = triton_gram_ops().congruence(p, r)
    exact = p.double() @ r.double() @ p.double()
    assert torch.equal(got, got.mT)
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(triton_gram_ops().product(p, r).double(), p.double() @ r.double(), rtol=1e-5, atol=1e-5)


def test_symmetric_gram_ns_compiles_fullgraph():
    """The symmetric formulation traces as one graph (custom ops + the in-place a·I on a fresh tensor)."""
    schedule = schedule_for("quintic", 5, "repeat_last")

    def run(x):
        return gram_newton_schulz(x, schedule, polar_dtype=torch.float32, ops=triton_ops(), gram_ops=triton_gram_ops())

    torch._dynamo.reset()
    x = torch.randn(2, 16, 48, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(torch.compile(run, fullgraph=True)(x), run(x), rtol=1e-5, atol=1e-6)


@pytest.fixture
def counted_ops(monkeypatch):
    """Counts the calls of the lower-tile ops (their CPU twins run) by replacing the ops namespace
    the "symmetric" products read."""
    import types

    calls = {"sym_gram": 0, "sym_poly": 0, "sym_cross": 0}
    real = torch.ops.fpolar

    def counting(name):
        def op(*args):
            calls[name] += 1
            return getattr(real, name)(*args)

        return op

    fake = types.SimpleNamespace(**{name: counting(name) for name in calls})
    monkeypatch.setattr(torch, "ops", types.SimpleNamespace(fpolar=fake))
    return calls


@pytest.mark.parametrize("in_graphs_only", [True, False], ids=["symmetric_in_graphs", "symmetric"])
@pytest.mark.parametrize("captured", [True, False], ids=["in a CUDA graph", "elsewhere"])
@pytest.mark.parametrize("restart", [1, 3])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)], ids=str)
def test_symmetric_products_with_cublas_full_products_match_svd_polar(
    monkeypatch, counted_ops, in_graphs_only, captured, restart, dtype, tol
):
    """The symmetric products (R and b·R + c·R², the congruence's P·Uᵀ) on the lower-tile ops, and
    U = P·R, P·Q, Q·X on batched matmul: at every call for ``kernels="symmetric"``, only while a CUDA
    graph is captured (simulated) for "symmetric_in_graphs", every product on batched matmul
    elsewhere. Gram space and the plain iteration, against the float64 SVD polar factor."""
    import fpolar.side_streams

    monkeypatch.setattr(fpolar.side_streams, "being_captured", lambda device: captured)
    g = torch.Generator().manual_seed(10 + restart)
    x = torch.randn(3, 20, 70, generator=g)
    square = torch.randn(3, 24, 24, generator=g)
    schedule = schedule_for("quintic", 10, "repeat_last")
    gram = gram_newton_schulz(x, schedule, polar_dtype=dtype, gram_restart=restart, ops=symmetric_ops(in_graphs_only),
                              gram_ops=symmetric_gram_ops(in_graphs_only))
    plain = newton_schulz(square, schedule, polar_dtype=dtype, ops=symmetric_ops(in_graphs_only))
    for got, source in ((gram, x), (plain, square)):
        exact = _svd_polar(source)
        assert got.dtype == dtype and got.shape == source.shape
        err = ((got.double() - exact).norm() / exact.norm()).item()
        assert err < tol, err
    # the same math as the all-cuBLAS iteration, up to rounding
    reference = gram_newton_schulz(x, schedule, polar_dtype=torch.float32, gram_restart=restart)
    torch.testing.assert_close(gram.float(), reference, rtol=0, atol=tol)
    # which ran the symmetric products: the plain iteration's 10 X Xᵀ and 10 polynomials, Gram
    # space's R per block, its 10 polynomials and a congruence after each step but a block's last
    blocks = [schedule[i : i + restart] for i in range(0, len(schedule), restart)]
    congruences = sum(len(block) - 1 for block in blocks)
    on_kernels = captured or not in_graphs_only
    expected = {"sym_gram": 10 + len(blocks), "sym_poly": 20, "sym_cross": congruences}
    assert counted_ops == (expected if on_kernels else {name: 0 for name in expected})
    if restart > 1 and on_kernels:
        assert congruences > 0


def test_symmetric_gram_ops_products():
    g = torch.Generator().manual_seed(8)
    y = torch.randn(2, 16, 40, generator=g)
    r = y @ y.mT / 40
    p = r @ r + torch.eye(16)
    for ops in (symmetric_gram_ops(in_graphs_only=False), symmetric_gram_ops(in_graphs_only=True)):
        congruence = ops.congruence(p, r)
        torch.testing.assert_close(congruence.double(), p.double() @ r.double() @ p.double(), rtol=1e-5, atol=1e-5)
    ops = symmetric_gram_ops(in_graphs_only=False)
    congruence = ops.congruence(p, r)
    assert torch.equal(congruence, congruence.mT)  # from its lower tiles: exactly symmetric
    torch.testing.assert_close(ops.product(p, r).double(), p.double() @ r.double(), rtol=1e-5, atol=1e-5)
    eye = torch.eye(16, dtype=torch.float64)
    for ops in (ops, symmetric_gram_ops(in_graphs_only=True), triton_gram_ops()):
        torch.testing.assert_close(ops.poly(r, 1.5, 2.0, -0.5).double(),
                                   1.5 * eye + 2.0 * r.double() - 0.5 * r.double() @ r.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("restart", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_deferred_input_scale_equals_the_scaled_input(restart, dtype):
    """``input_scale``: the iteration on X₀ = s·V with V given unscaled (its first X Xᵀ and a
    polynomial carry s) equals the iteration on the scaled X₀, on every implementation of the Gram
    ops; each matrix has its own s (norms from 1e-3 to 1e3, so a missing or doubled s shows)."""
    from fpolar.polar.frobenius import frobenius_normalize
    from fpolar.polar.gram_newton_schulz import TORCH_GRAM_OPS

    g = torch.Generator().manual_seed(20 + restart)
    v = torch.randn(3, 20, 70, generator=g) * torch.tensor([1e-3, 1.0, 1e3])[:, None, None]
    scale = (1.0 / (v.double().norm(dim=(-2, -1)) * 1.02 + 1e-7)).float()
    x0 = frobenius_normalize(v, 1.02, 1e-7, torch.float64)
    schedule = schedule_for("quintic", 10, "repeat_last")
    exact = _svd_polar(v)
    kinds = [(TORCH_GRAM_OPS, None), (triton_gram_ops(), triton_ops()), (symmetric_gram_ops(False), symmetric_ops(False))]
    for gram_ops, ops in kinds:
        extra = {} if ops is None else {"ops": ops}
        run = lambda x, **kw: gram_newton_schulz(  # noqa: E731
            x, schedule, polar_dtype=dtype, gram_restart=restart, gram_ops=gram_ops, normalized=True, **extra, **kw
        )
        deferred = run(v.to(dtype), input_scale=scale)
        scaled = run(x0.to(dtype))
        assert deferred.dtype == dtype and deferred.shape == v.shape
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        err = ((deferred.double() - exact).norm() / exact.norm()).item()
        assert err < tol, (gram_ops, err)
        torch.testing.assert_close(deferred.float(), scaled.float(), rtol=0, atol=1e-5 if dtype == torch.float32 else 5e-2)


def test_deferred_input_scale_needs_a_normalized_input():
    x = torch.randn(2, 4, 9)
    with pytest.raises(ValueError, match="input_scale is the deferred scale of a normalized input: it needs normalized=True"):
        gram_newton_schulz(x, schedule_for("quintic", 5, "repeat_last"), input_scale=torch.ones(2))
