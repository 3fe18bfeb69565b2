"""nonfinite="skip" compiled: a skipped and a clean step run the same graph (no recompile, fullgraph),
the skipped one is a bitwise no-op, and the same holds inside a CUDA graph (GPU only)."""

from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import fpolar
from compile_cases import MIXED_SHAPES, adamw_hparams, make_problem, polar_hparams

ADAMW_SHAPES = ((7,), (4, 5), ())


def both_steps(params, grads, state, hp, aparams, agrads, astate, ahp) -> None:
    fpolar.polargrad_step(params, grads, state, hp)
    fpolar.adamw_step(aparams, agrads, astate, ahp)


def snapshot(*tensor_lists):
    return [t.clone() for ts in tensor_lists for t in ts]


def bitwise_same(a, b):
    return all(torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)) for x, y in zip(a, b))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_skip_and_clean_steps_share_one_graph(backend):
    shapes = MIXED_SHAPES if backend == "aot_eager" else ((4, 8), (8, 4))
    params, grads = make_problem(shapes)
    hp = polar_hparams()
    state = fpolar.init_state(params, hp)
    aparams = [torch.randn(s) for s in ADAMW_SHAPES]
    agrads = [torch.randn(s) for s in ADAMW_SHAPES]
    ahp = adamw_hparams()
    astate = fpolar.init_adamw_state(aparams, ahp)
    counter = CompileCounterWithBackend(backend)
    step = torch.compile(both_steps, backend=counter, fullgraph=True)
    step(params, grads, state, hp, aparams, agrads, astate, ahp)
    with torch.compiler.set_stance("fail_on_recompile"):
        for bad in (math.nan, math.inf, None, -math.inf, None):
            g = [x.clone() for x in grads]
            if bad is not None:
                g[-1].view(-1)[0] = bad
            before = snapshot(params, state.buffers, [state.step], aparams, astate.exp_avg, astate.exp_avg_sq, astate.step)
            step(params, g, state, hp, aparams, agrads, astate, ahp)
            after = snapshot(params, state.buffers, [state.step], aparams, astate.exp_avg, astate.exp_avg_sq, astate.step)
            polar_part = len(params) + len(state.buffers) + 1
            if bad is not None:
                assert bitwise_same(after[:polar_part], before[:polar_part])
            else:
                assert not bitwise_same(after[:polar_part], before[:polar_part])
    assert counter.frame_count == 1
    assert state.skipped.item() == 3 and state.step.item() == 3
    assert astate.skipped.item() == 0 and all(s.item() == 6 for s in astate.step)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_skip_inside_a_cuda_graph():
    """Capture one polar + AdamW step with static grads; replaying it with a NaN written into a grad
    changes no bit of params or state and counts the skip; a clean replay after it steps."""
    dev = "cuda"
    params = [torch.randn(s, device=dev) for s in ((64, 32), (32, 64), (3, 16, 16))]
    grads = [torch.randn_like(p) for p in params]
    aparams = [torch.randn(s, device=dev) for s in ((64,), (32,))]
    agrads = [torch.randn_like(p) for p in aparams]
    hp = fpolar.PolarGradHParams(lr=torch.tensor(0.02, device=dev), weight_decay=torch.tensor(0.1, device=dev))
    ahp = fpolar.AdamWHParams(lr=torch.tensor(1e-2, device=dev), weight_decay=torch.tensor(0.05, device=dev))
    state, astate = fpolar.init_state(params, hp), fpolar.init_adamw_state(aparams, ahp)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        both_steps(params, grads, state, hp, aparams, agrads, astate, ahp)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        both_steps(params, grads, state, hp, aparams, agrads, astate, ahp)
    graph.replay()
    clean = grads[1].clone()
    grads[1].view(-1)[5] = math.nan
    before = snapshot(params, state.buffers, [state.step], aparams, astate.exp_avg, astate.exp_avg_sq, astate.step)
    graph.replay()
    after = snapshot(params, state.buffers, [state.step], aparams, astate.exp_avg, astate.exp_avg_sq, astate.step)
    n_polar = len(params) + len(state.buffers) + 1
    assert bitwise_same(after[:n_polar], before[:n_polar])
    assert state.skipped.item() == 1
    grads[1].copy_(clean)
    graph.replay()
    assert torch.isfinite(torch.cat([p.reshape(-1) for p in params])).all()
    assert not bitwise_same(snapshot(params), before[: len(params)])
    assert state.skipped.item() == 1


# --------------------------------------------------------------------------- fpolar::max_abs

MAX_ABS_SHAPES = ((3, 5), (7,), (2, 3, 4), (1, 1))


def random_tensors(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # spread over many magnitudes so the max is one element, not a tie
    return [(torch.randn(s, generator=gen) * 10.0 ** torch.randint(-3, 4, s, generator=gen)).to(dtype) for s in MAX_ABS_SHAPES]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_max_abs_is_the_largest_magnitude(dtype):
    """The op against the float64 max of |t| over every element; a max is one element, so exact."""
    from fpolar.nonfinite import max_abs

    ts = random_tensors(dtype)
    want = torch.cat([t.double().reshape(-1) for t in ts]).abs().max()
    got = max_abs(ts)
    assert got.dtype == dtype and got.shape == ()
    assert got.double() == want


@pytest.mark.parametrize("where", range(len(MAX_ABS_SHAPES)))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_max_abs_sees_a_nonfinite_in_any_one_tensor(where, bad):
    from fpolar.nonfinite import max_abs

    ts = random_tensors(torch.float32)
    ts[where].view(-1)[-1] = bad
    got = max_abs(ts)
    assert torch.isnan(got) if math.isnan(bad) else got == math.inf
    compiled = torch.compile(max_abs, backend="aot_eager", fullgraph=True)(ts)
    assert torch.equal(compiled.isnan(), got.isnan()) and (got.isnan() or compiled == got)


def test_max_abs_of_negative_zeros_is_plus_zero_and_finite_extremes_stay_finite():
    from fpolar.nonfinite import max_abs

    zero = max_abs([torch.tensor([-0.0, -0.0]), torch.tensor([[-0.0]])])
    assert zero == 0 and not torch.signbit(zero)
    big = torch.finfo(torch.float32).max
    assert max_abs([torch.tensor([-big, 1.0])]) == big  # no square: the largest finite value stays finite
    tiny = torch.tensor([-1e-45, 0.0])  # a subnormal is not flushed
    assert max_abs([tiny]) == tiny.abs().max()


def test_max_abs_op_registration():
    """Schema, fake (meta) kernel and eager kernel agree (torch.library.opcheck)."""
    from fpolar.nonfinite import max_abs

    torch.library.opcheck(max_abs, (random_tensors(torch.float32),))


@pytest.mark.parametrize(
    "tensors, exc, match",
    [
        ([], ValueError, "non-empty list"),
        ([torch.randn(2), torch.randn(2, dtype=torch.float64)], ValueError, r"tensors\[1\] is torch.float64"),
        ([torch.randn(2), torch.arange(3)], TypeError, r"tensors\[1\] has dtype torch.int64"),
        ([torch.randn(2), torch.randn(0, 3)], ValueError, r"tensors\[1\] is empty"),
    ],
)
def test_max_abs_rejects_bad_lists(tensors, exc, match):
    from fpolar.nonfinite import max_abs

    with pytest.raises(exc, match=match):
        max_abs(tensors)


def test_compiled_check_is_one_op_and_skips_on_any_grad():
    """Under torch.compile the step's check is one fpolar::max_abs for all grads; a NaN/inf in any one
    grad (each position in turn) skips the step bitwise, in one graph."""
    from graph_ops import aten_graph, op_sequence

    params, grads = make_problem(MIXED_SHAPES)
    hp = polar_hparams()
    state = fpolar.init_state(params, hp)
    seq = op_sequence(aten_graph(fpolar.polargrad_step, [p.clone() for p in params], grads, fpolar.init_state(params, hp), hp))
    assert seq.count("fpolar.max_abs") == 1 and "aten.amax" not in seq[: seq.index("fpolar.max_abs") + 1]
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(fpolar.polargrad_step, backend=counter, fullgraph=True)
    step(params, grads, state, hp)
    with torch.compiler.set_stance("fail_on_recompile"):
        for i in range(len(grads)):
            g = [x.clone() for x in grads]
            g[i].view(-1)[i % g[i].numel()] = (math.nan, math.inf, -math.inf)[i % 3]
            before = snapshot(params, state.buffers, [state.step])
            step(params, g, state, hp)
            assert bitwise_same(snapshot(params, state.buffers, [state.step]), before), f"grad {i}"
    assert counter.frame_count == 1
    assert state.skipped.item() == len(grads) and state.step.item() == 1
