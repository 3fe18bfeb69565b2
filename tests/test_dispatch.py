"""The auto-dispatch rules and their visibility through describe_plan."""

import sys

import pytest
import torch

import fpolar
from fpolar.polar.dispatch import (
    GRAM_MIN_ASPECT,
    SYMMETRIC_MIN_SIDE,
    TRITON_MIN_SIDE,
    PolarImpl,
    ns_implementation,
    ns_ops,
)
from fpolar.polar.newton_schulz import TORCH_OPS

BF16 = torch.bfloat16


@pytest.fixture(autouse=True)
def _fixed_rules():
    """These tests are about the fixed rules: on a GPU machine, kernels="auto" would otherwise time the
    candidates (tests/test_kernel_tuning.py tests that part)."""
    from fpolar.kernels import tuning

    saved = tuning._TUNER
    tuning.set_tuning(False)
    yield
    tuning._TUNER = saved


@pytest.fixture
def tma(monkeypatch):
    """Sets whether the plan sees a CUDA device with TMA (sm90+), whatever this machine has; the
    tests without it run as on a device without TMA (see the autouse fixture below)."""

    def set_tma(has: bool) -> None:
        plan_module = sys.modules["fpolar.polar"]  # the package (``fpolar.polar`` is also a function)
        monkeypatch.setattr(plan_module, "hopper_with_tma", lambda device: has and device.type == "cuda")

    return set_tma


@pytest.fixture(autouse=True)
def _no_tma_unless_asked(tma):
    tma(False)


@pytest.mark.parametrize(
    "m, n, cuda, dtype, kernels, norm, expected",
    [
        (768, 3072, True, BF16, "auto", "frobenius", "gram"),
        (768, 768, True, BF16, "auto", "frobenius", "torch"),
        (4096, 4096, True, BF16, "auto", "frobenius", "triton"),
        (4096, 4096, True, torch.float32, "auto", "frobenius", "torch"),
        (768, 3072, True, BF16, "auto", "aol", "torch"),  # AOL start has no Gram-space form here
        (768, 3072, False, BF16, "auto", "frobenius", "torch"),  # CPU: always torch
        (768, 3072, True, BF16, "torch", "frobenius", "torch"),
        (10, 10, True, BF16, "triton", "frobenius", "triton"),
    ],
)
def test_ns_implementation(m, n, cuda, dtype, kernels, norm, expected):
    assert ns_implementation(m, n, cuda, dtype, kernels, norm) == expected


@pytest.mark.parametrize(
    "m, n, cuda, dtype, kernels, expected",
    [
        (768, 768, True, BF16, "auto", "symmetric_in_graphs"),
        (1024, 1536, True, torch.float16, "auto", "symmetric_in_graphs"),
        (SYMMETRIC_MIN_SIDE - 1, SYMMETRIC_MIN_SIDE, True, BF16, "auto", "torch"),  # below the measured sizes
        (768, 768, True, torch.float32, "auto", "torch"),  # fp32 iteration: cuBLAS
        (768, 3072, True, BF16, "auto", "gram"),  # Gram space first (its m×m products: see below)
        (4096, 4096, True, BF16, "auto", "triton"),
        (768, 768, False, BF16, "auto", "torch"),
        (768, 768, True, BF16, "torch", "torch"),
        (768, 768, True, BF16, "symmetric", "symmetric"),
    ],
)
def test_ns_implementation_on_a_device_with_tma(m, n, cuda, dtype, kernels, expected):
    assert ns_implementation(m, n, cuda, dtype, kernels, "frobenius", tma=True) == expected


@pytest.mark.parametrize(
    "method, kernels, m, n, expected",
    [
        ("newton_schulz", "auto", 768, 3072, ("gram_newton_schulz", "symmetric_in_graphs")),
        ("newton_schulz", "auto", 2304, 768, ("gram_newton_schulz", "symmetric_in_graphs")),  # tall
        ("newton_schulz", "auto", 768, 768, ("newton_schulz", "symmetric_in_graphs")),
        ("gram_newton_schulz", "auto", 768, 3072, ("gram_newton_schulz", "symmetric_in_graphs")),
        ("newton_schulz", "auto", 4096, 4096, ("newton_schulz", "triton")),
        ("newton_schulz", "auto", 256, 1024, ("gram_newton_schulz", "torch")),
        ("newton_schulz", "torch", 768, 768, ("newton_schulz", "torch")),
        ("gram_newton_schulz", "triton", 768, 3072, ("gram_newton_schulz", "triton")),
    ],
)
def test_symmetric_products_where_the_hopper_with_tma(tma, method, kernels, m, n, expected):
    tma(True)
    spec = fpolar.PolarSpec.build(method, kernels=kernels)
    impl = spec.impl_for(m, n, BF16, torch.device("cuda"))
    assert (impl.method, impl.kernels) == expected
    tma(False)
    assert spec.impl_for(m, n, BF16, torch.device("cuda")).kernels == (
        "torch" if expected[1] == "symmetric_in_graphs" else expected[1]
    )


@pytest.mark.parametrize("has_tma", [True, False])
@pytest.mark.parametrize(
    "method, m, n, dtype, expected",
    [
        ("newton_schulz", 768, 3072, BF16, "gram_newton_schulz"),  # "auto"'s Gram-space rule
        ("newton_schulz", 3072, 768, BF16, "gram_newton_schulz"),  # tall
        ("newton_schulz", 768, 768, BF16, "newton_schulz"),
        ("newton_schulz", 64, 96, BF16, "newton_schulz"),  # below SYMMETRIC_MIN_SIDE: asked for, so taken
        ("newton_schulz", 768, 768, torch.float32, "newton_schulz"),
        ("gram_newton_schulz", 768, 1024, BF16, "gram_newton_schulz"),
    ],
)
def test_the_users_symmetric_choice_holds_on_every_cuda_device(tma, has_tma, method, m, n, dtype, expected):
    """kernels="symmetric": the lower-tile kernels at every launch, whatever the device, size and dtype
    (no rule overrides an explicit choice), with "auto"'s Gram-space rule and the fused glue."""
    tma(has_tma)
    impl = fpolar.PolarSpec.build(method, kernels="symmetric", polar_dtype=dtype).impl_for(
        m, n, torch.float32, torch.device("cuda")
    )
    assert (impl.method, impl.kernels, impl.glue) == (expected, "symmetric", "fused")


def test_symmetric_labels():
    assert PolarImpl("newton_schulz", "symmetric_in_graphs", BF16).label == (
        "newton_schulz [symmetric products on triton in CUDA graphs]"
    )
    assert PolarImpl("gram_newton_schulz", "symmetric_in_graphs", BF16).label == (
        "gram_newton_schulz [symmetric products on triton in CUDA graphs]"
    )
    assert PolarImpl("newton_schulz", "symmetric", BF16).label == "newton_schulz [symmetric products on triton]"
    assert PolarImpl("gram_newton_schulz", "symmetric", BF16).label == (
        "gram_newton_schulz [symmetric products on triton]"
    )


def test_thresholds_are_what_the_docs_say():
    assert GRAM_MIN_ASPECT == 2.0 and TRITON_MIN_SIDE == 4096 and SYMMETRIC_MIN_SIDE == 512


def test_triton_on_cpu_is_refused_clearly():
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="kernels='triton' needs CUDA tensors, got a tensor on cpu"):
        ns_ops("triton", cpu)
    for kernels in ("symmetric", "symmetric_in_graphs"):
        with pytest.raises(ValueError, match=f"kernels='{kernels}' needs CUDA tensors, got a tensor on cpu"):
            ns_ops(kernels, cpu)
    auto = fpolar.PolarSpec.build(kernels="auto").impl_for(4, 8, torch.float32, cpu)
    assert ns_ops(auto.kernels, cpu) is TORCH_OPS


@pytest.mark.parametrize("kernels", ["triton", "symmetric"])
@pytest.mark.parametrize("shape", [(4, 8), (4, 16)], ids=["plain", "gram space"])
def test_triton_on_cpu_is_refused_before_any_tensor_changes(kernels, shape):
    params = [torch.randn(*shape)]
    grads = [torch.randn(*shape)]
    hp = fpolar.PolarGradHParams(lr=0.1, kernels=kernels)
    state = fpolar.init_state(params, hp)
    before = params[0].clone()
    with pytest.raises(ValueError, match=f"kernels='{kernels}' needs CUDA tensors, got a tensor on cpu"):
        fpolar.polargrad_step(params, grads, state, hp)
    assert torch.equal(params[0], before) and not state.buffers[0].any() and state.step.item() == 0


@pytest.mark.parametrize(
    "method, kernels, normalization, m, n, cuda, expected",
    [
        ("newton_schulz", "auto", "frobenius", 768, 3072, True, ("gram_newton_schulz", "torch")),
        ("newton_schulz", "auto", "frobenius", 3072, 768, True, ("gram_newton_schulz", "torch")),  # tall
        ("newton_schulz", "auto", "frobenius", 4096, 4096, True, ("newton_schulz", "triton")),
        ("newton_schulz", "auto", "aol", 768, 3072, True, ("newton_schulz", "torch")),
        ("newton_schulz", "triton", "frobenius", 768, 3072, True, ("newton_schulz", "triton")),
        ("gram_newton_schulz", "auto", "frobenius", 4096, 4096, True, ("gram_newton_schulz", "torch")),
        ("gram_newton_schulz", "triton", "frobenius", 64, 64, True, ("gram_newton_schulz", "triton")),
        ("qdwh", "triton", "frobenius", 64, 64, True, ("qdwh", "torch")),
        ("newton_schulz", "auto", "frobenius", 768, 3072, False, ("newton_schulz", "torch")),
    ],
)
def test_one_decision_per_group(method, kernels, normalization, m, n, cuda, expected):
    """The plan's decision: Gram space and cuBLAS-vs-Triton in one place, on the wide side."""
    coefficients = "aol" if normalization == "aol" else "polar_express"
    spec = fpolar.PolarSpec.build(method, coefficients=coefficients, kernels=kernels)
    device = torch.device("cuda" if cuda else "cpu")
    impl = spec.impl_for(m, n, BF16, device)
    assert (impl.method, impl.kernels) == expected
    assert impl.polar_dtype == (BF16 if cuda and method != "qdwh" else torch.float32)


def test_state_holds_the_decision_and_describe_reads_it():
    params = [torch.randn(30, 10), torch.randn(4, 4)]
    hp = fpolar.PolarGradHParams(lr=0.1, polar="svd")
    state = fpolar.init_state(params, hp)
    assert state.polar_impls == (PolarImpl("svd", "torch", torch.float32),) * 2
    assert state.polar_impls_for(hp.polar_spec) is state.polar_impls
    assert [r["implementation"] for r in fpolar.describe_plan(state, hp)] == ["svd", "svd"]
    # hparams changed since the state was built (a torch.optim group edited between steps): the same
    # rule, applied to the new spec
    hp_ns = fpolar.PolarGradHParams(lr=0.1, polar_dtype=torch.float64)
    assert [i.polar_dtype for i in state.polar_impls_for(hp_ns.polar_spec)] == [torch.float64] * 2
    assert [r["implementation"] for r in fpolar.describe_plan(state, hp_ns)] == ["newton_schulz [torch matmul]"] * 2


def test_describe_plan_lists_groups():
    params = [torch.randn(30, 10), torch.randn(30, 10), torch.randn(2, 4, 4), torch.randn(6, 2, 3, 3)]
    hp = fpolar.PolarGradHParams(lr=0.1)
    rows = fpolar.describe_plan(fpolar.init_state(params, hp), hp)
    assert [r["batch"] for r in rows] == [(2, 10, 30), (2, 4, 4), (1, 6, 18)]
    assert [r["transposed"] for r in rows] == [True, False, False]
    assert all(r["implementation"] == "newton_schulz [torch matmul]" for r in rows)
    assert all(r["glue"] == "torch" for r in rows)  # CPU: the fused glue is CUDA only
    hp_q = fpolar.PolarGradHParams(lr=0.1, polar="qdwh")
    assert fpolar.describe_plan(fpolar.init_state(params, hp_q), hp_q)[0]["implementation"] == "qdwh"


def test_the_input_scale_is_deferred_where_lower_tile_kernels_run_in_gram_space(monkeypatch):
    """``defers_input_scale``: Gram space on "triton"/"symmetric" always, on "symmetric_in_graphs"
    only while a CUDA graph is captured; never on cuBLAS ("torch") nor outside Gram space."""
    import fpolar.side_streams
    from fpolar.polar.dispatch import PolarImpl, defers_input_scale

    cuda = torch.device("cuda")
    gram = lambda kernels: PolarImpl("gram_newton_schulz", kernels, torch.bfloat16, glue="fused")  # noqa: E731
    for captured in (False, True):
        monkeypatch.setattr(fpolar.side_streams, "being_captured", lambda device, c=captured: c)
        assert defers_input_scale(gram("triton"), cuda)
        assert defers_input_scale(gram("symmetric"), cuda)
        assert defers_input_scale(gram("symmetric_in_graphs"), cuda) == captured
        assert not defers_input_scale(gram("torch"), cuda)
        for kernels in ("triton", "symmetric", "symmetric_in_graphs", "torch"):
            assert not defers_input_scale(PolarImpl("newton_schulz", kernels, torch.bfloat16, glue="fused"), cuda)
