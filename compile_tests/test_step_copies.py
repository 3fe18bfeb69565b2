"""What the compiled step copies, read from the graph Inductor lowers (after its re-inplacing).

Functionalization turns every in-place op (the momentum update, the param update, fpolar's mutating
custom ops) into an out-of-place op plus a write-back; where Inductor cannot put the result back in
place it keeps a ``clone`` of the mutated buffer, a full extra pass over it. These tests pin that no
such copy is left, on the torch glue and on the fused glue (``fpolar::momentum_polar_input`` /
``fpolar::scaled_update_``, CUDA-only in practice, forced here on CPU where the ops run their torch
bodies: the graph is the same up to the device).

What is left are the β-terms of the Newton–Schulz products: ``baddbmm(S, A, B, beta=β)`` with β ≠ 0
into a new tensor copies S into its output first (ATen, on CUDA a device-to-device memcpy), then
the GEMM accumulates onto it. Per Newton–Schulz step: b·A + c·A² and a·X + B·X (two), per Gram
Newton–Schulz step: b·R + c·R² (one; its a·I is a diagonal add and its final Q·X has β = 0). They are
counted exactly, so a new one shows. (Folding a·X into B's diagonal would remove one, but rounds
a·I + B to the polar dtype, where a ≈ 8 dwarfs B's entries in the first Polar-Express step: in bf16
``tests/test_polar.py::test_bf16_newton_schulz_close_to_fp64`` then fails.)

The non-finite check of the grads is one ``fpolar::max_abs`` op whatever the number of grads.
"""

from __future__ import annotations

import collections
import sys

import pytest
import torch

import fpolar
from graph_ops import beta_products, copies, op_name, post_grad_graph

# A tall group (8×24 wide side: Gram space), a square one (plain Newton–Schulz) and a wide one (Gram).
SHAPES = ((24, 8), (24, 8), (8, 8), (8, 32))
NS_STEPS = 5


@pytest.fixture
def forced_cuda_rules(monkeypatch):
    """The plan the rules make on CUDA (Gram space for n ≥ 2m, the fused glue unless ``glue`` says
    torch), for CPU tensors; returns a setter for the glue."""
    polar = sys.modules["fpolar.polar"]
    original = polar.decide_polar_impl
    chosen = {"glue": "fused"}

    def on_cuda_rules(method, kernels, normalization, m, n, on_cuda, polar_dtype, input_dtype, tma=False):
        # a device without TMA: every product on cuBLAS, so its β copies are what this counts
        impl = original(method, kernels, normalization, m, n, True, torch.bfloat16, input_dtype, tma=False)
        return impl._replace(glue=chosen["glue"])

    monkeypatch.setattr(polar, "decide_polar_impl", on_cuda_rules)
    return chosen


def muon_problem():
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen) * 0.02 for s in SHAPES]
    grads = [torch.randn(s, generator=gen) for s in SHAPES]
    hp = fpolar.PolarGradHParams(
        lr=torch.tensor(0.02), scale="shape", nesterov=True, coefficients="muon", ns_steps=NS_STEPS
    )
    return params, grads, hp


@pytest.mark.parametrize("glue", ["fused", "torch"])
def test_compiled_muon_step_copies_only_the_beta_operands(forced_cuda_rules, glue):
    forced_cuda_rules["glue"] = glue
    params, grads, hp = muon_problem()
    state = fpolar.init_state(params, hp)
    methods = [impl.method for impl in state.polar_impls]
    assert methods == ["gram_newton_schulz", "newton_schulz", "gram_newton_schulz"]
    assert all(impl.glue == glue for impl in state.polar_impls)

    gm = post_grad_graph(lambda: fpolar.polargrad_step(params, grads, state, hp))
    ops = collections.Counter(op_name(n.target) for n in gm.graph.nodes if n.op == "call_function")

    assert copies(gm) == []
    assert beta_products(gm) == NS_STEPS * (2 * methods.count("newton_schulz") + methods.count("gram_newton_schulz"))
    assert ops["fpolar.max_abs"] == 1
    if glue == "fused":
        assert ops["fpolar.momentum_polar_input"] == ops["fpolar.scaled_update_"] == len(methods)
        # the grads are read by max_abs and the fused ops only: no per-grad reduction is left
        assert ops["aten.amax"] == 0


def test_copies_sees_a_clone_and_a_non_input_copy():
    """The counter itself: a clone kept by the graph and a copy into a fresh buffer are copies."""

    def f(x):
        y = x.clone()
        x.add_(1)
        z = torch.empty_like(x)
        z.copy_(x * 2)
        return y, z

    gm = post_grad_graph(f, torch.randn(4, 4))
    assert len(copies(gm)) >= 1


def test_compiled_train_step_copies_no_parameter(forced_cuda_rules):
    """The whole train step (``make_train_step(backward="func")``): the params are read by the forward
    and backward and then written by ``fpolar::scaled_update_`` in the same graph, the pattern where
    Inductor keeps a clone of a mutated input when it cannot prove the old value dead. None is kept;
    the β-products are the Gram polynomials (one per step per group) and the forward's bias ``addmm``s."""
    from compile_cases import adamw_hparams, cross_entropy_loss, polar_hparams, tiny_batches, tiny_model

    from fpolar.compile import make_train_step

    model = tiny_model()
    hp = polar_hparams()
    step = make_train_step(model, cross_entropy_loss, hp, adamw_hparams(), backward="func")
    impls = step.polar_state.polar_impls
    assert all(impl.glue == "fused" for impl in impls)
    x, y = tiny_batches(1)
    gm = post_grad_graph(step, x[0], y[0])
    ops = collections.Counter(op_name(n.target) for n in gm.graph.nodes if n.op == "call_function")
    assert copies(gm) == []
    assert ops["fpolar.scaled_update_"] == ops["fpolar.momentum_polar_input"] == len(impls)
    assert ops["fpolar.max_abs"] == 1
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert beta_products(gm) == len(hp.polar_spec.schedule) * sum(i.method == "gram_newton_schulz" for i in impls) + linears


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_profile_agrees_with_the_graph():
    """On the GPU, with the real plan (Gram space and the fused glue by the CUDA rules): per compiled
    Muon step the device-to-device memcpys are exactly the graph's β-products, and no Inductor
    reduction reads the grads (the check is ``fpolar::max_abs``: a multi-tensor kernel, a stack, a
    reduce, whatever the number of grads)."""
    from fpolar.compile import mark_static

    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(0)
    # GPT-2-small's four shape groups at 1/8 of the size, 3 matrices each
    shapes = [s for s in ((288, 96), (96, 96), (384, 96), (96, 384)) for _ in range(3)]
    params = [torch.randn(s, device=dev, generator=gen) * 0.02 for s in shapes]
    grads = [torch.randn(s, device=dev, generator=gen) for s in shapes]
    hp = fpolar.PolarGradHParams(
        lr=torch.tensor(0.02, device=dev), scale="shape", nesterov=True, coefficients="muon", ns_steps=NS_STEPS
    )
    state = fpolar.init_state(params, hp)
    mark_static(params, grads, state, hp)

    def step():
        fpolar.polargrad_step(params, grads, state, hp)

    betas = beta_products(post_grad_graph(step))
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    for _ in range(3):
        compiled()
    torch.cuda.synchronize()
    steps = 2
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            compiled()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    memcpys = sum(n.startswith("Memcpy DtoD") for n in names)
    assert memcpys == steps * betas, (memcpys, betas)
    if all(impl.glue == "fused" for impl in state.polar_impls):
        assert not [n for n in names if "amax" in n]
