"""The torch path's step without copies and with a bounded workspace (``benchmarks/op_ledger.py``
counts the ops), and the chunked group step equal to the whole-group step."""

from __future__ import annotations

import os
import sys

import pytest
import torch

import fpolar
import fpolar.polargrad as polargrad_module
from fpolar.state import ShapeGroup
from helpers import run_polargrad_steps

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
from op_ledger import COPY_OPS, OpLedger  # noqa: E402

# wide, tall (iterated as its transpose), a (k, m, n) stack, square
SHAPES = [(6, 10), (6, 10), (6, 10), (3, 6, 10), (10, 6), (10, 6), (10, 6), (8, 8), (8, 8)]


def problem(seed: int, steps: int, drop: bool = False):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(*s, generator=gen) for s in SHAPES]
    seq = []
    for k in range(steps):
        grads = [torch.randn(*s, generator=gen) for s in SHAPES]
        if drop and k == 1:
            grads[1] = grads[5] = None  # a param without a grad, inside a chunk
        seq.append(grads)
    return params, seq


@pytest.mark.parametrize(
    "kw",
    [
        dict(scale="shape", nesterov=True, coefficients="muon", ns_steps=5),
        dict(),  # PolarGrad: nuclear scale, polar_express
        dict(order="polar_first", nesterov=True, weight_decay=0.1),
        dict(polar="gram_newton_schulz", scale="shape", lr=torch.tensor(0.03)),
    ],
)
def test_chunked_group_step_equals_whole_group_bitwise(monkeypatch, kw):
    """float32 on CPU: every matrix's math is independent of its batch, so chunks of 1–2 matrices
    give the whole group's params and momentum bit for bit (also with a param missing its grad)."""
    params, seq = problem(0, steps=3, drop=True)
    hp = fpolar.PolarGradHParams(**{"lr": 0.02, **kw})
    whole, ws = run_polargrad_steps(params, seq, hp)
    monkeypatch.setattr(polargrad_module, "CHUNK_ELEMENTS", 2 * 60)  # chunks of two 6×10 matrices
    chunked, cs = run_polargrad_steps(params, seq, hp)
    for a, b in zip(chunked, whole):
        assert torch.equal(a, b)
    for a, b in zip(cs.buffers, ws.buffers):
        assert torch.equal(a, b)
    moved = sum(not torch.equal(a, p) for a, p in zip(whole, params))
    assert moved == len(params)  # the comparison is of params that stepped


def test_small_models_groups_run_whole_and_large_ones_in_bounded_chunks():
    """GPT-2-small's groups (≤ 28 M elements) run whole; a 7B-class model's run in chunks under the bound."""
    counts = {}
    shapes = [(12, 768, 768), (12, 768, 2304), (12, 768, 3072), (12, 3072, 768), (32, 4096, 11008), (32, 4096, 4096)]
    for b, m, n in shapes:
        group = ShapeGroup(indices=tuple(range(b)), offsets=tuple(range(b)), counts=(1,) * b, m=m, n=n,
                           dtype=torch.float32, device=torch.device("meta"))
        chunks = polargrad_module.group_chunks(group, torch.empty(b, m, n, device="meta"))
        counts[(b, m, n)] = [len(c.indices) for c, _ in chunks]
        for c, buf in chunks:
            assert buf.shape[0] == sum(c.counts) and buf.numel() <= polargrad_module.CHUNK_ELEMENTS
    assert counts == {
        (12, 768, 768): [12], (12, 768, 2304): [12], (12, 768, 3072): [12], (12, 3072, 768): [12],
        (32, 4096, 11008): [1] * 32, (32, 4096, 4096): [4] * 8,
    }


def ledger_of_step(hp, shapes, polar_dtype=torch.bfloat16):
    params = [torch.empty(*s, device="meta") for s in shapes]
    grads = [torch.empty(*s, device="meta") for s in shapes]
    state = fpolar.init_state(params, hp)
    fpolar.polargrad_step(params, grads, state, hp)
    with torch.no_grad(), OpLedger() as ledger:
        fpolar.polargrad_step(params, grads, state, hp)
    return ledger


@pytest.mark.parametrize(
    "kw",
    [
        dict(scale="shape", nesterov=True, coefficients="muon", ns_steps=5),
        dict(),
        dict(polar="gram_newton_schulz", scale="shape"),
        dict(scale="shape", nesterov=False, weight_decay=0.1),
    ],
)
def test_momentum_first_step_makes_no_copy(kw):
    """The eager torch path of a momentum-first step (meta tensors: the ops and sizes of a CPU run)
    copies nothing: no cat/stack of momentum or update, no upcast or contiguous copy of O (a tall
    group included), no eye for a·I; and its live workspace stays within a few stacks of a chunk."""
    hp = fpolar.PolarGradHParams(lr=0.02, polar_dtype=torch.bfloat16, nonfinite="propagate", **kw)
    shapes = [(64, 192)] * 4 + [(192, 64)] * 4 + [(64, 64)] * 3
    ledger = ledger_of_step(hp, shapes)
    assert [r.name for r in ledger.copies()] == []
    # the largest group's float32 stack; live at once at most: the polar input X (the Nesterov blend),
    # X / max|X| in float32, and two bf16 iterates (each half a stack), plus m×m Gram products
    stack = 4 * 64 * 192 * 4
    assert 0 < ledger.peak_live_bytes <= 3.05 * stack


def test_ledger_sees_copies_and_frees():
    """The ledger itself: a clone and a contiguous copy of a transpose are copies; a freed temporary
    leaves the live count; a view does not allocate."""
    x = torch.randn(8, 16)
    with OpLedger() as ledger:
        y = x.clone()
        t = x.mT.contiguous()
        v = y[2:]
        del y, t, v
        z = x * 2
    assert [r.name for r in ledger.copies()] == ["clone", "clone"]
    assert ledger.peak_live_bytes == 2 * x.numel() * 4
    assert ledger.live_bytes == x.numel() * 4  # z alone
    assert "clone" in COPY_OPS and z.shape == x.shape
