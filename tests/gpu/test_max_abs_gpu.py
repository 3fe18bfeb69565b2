"""``fpolar::max_abs``'s Triton kernel on a CUDA GPU (skipped without one).

- against the torch twin on GPT-2-small's grads (85 M elements, fp32 / bf16 / fp16, fresh random
  values of per-tensor scales), clean and with NaN in the very last element, ±inf, NaN with inf, the
  largest finite values: the twin's bits where it is finite, NaN / +inf where it is (the op's contract);
- lists whose first tensor lies above others (negative offsets) and slices at odd offsets (unaligned);
- inside a captured CUDA graph: the kernel runs there on tables built by an eager call, and replays
  follow the grads' values; tensors first seen inside a capture run the twin; the optimizer's
  CUDA-graph step builds the tables before its capture; under torch.compile(fullgraph=True) the op
  runs the kernel.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from fpolar import nonfinite
from helpers import max_abs_agrees as agrees

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

M = importlib.import_module("fpolar.kernels.max_abs")  # the module (the package's attribute is the op)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def gpt2_small_shapes():
    """GPT-2-small's 12 blocks: 4 matrices (85 M elements) and 8 vectors each."""
    block = [(768, 2304), (768, 768), (768, 3072), (3072, 768), (2304,), (768,), (3072,), (768,)] + [(768,)] * 4
    return block * 12


def random_grads(shapes, dtype, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    out = []
    for s in shapes:
        scale = 10.0 ** (6 * torch.rand((), generator=gen, device="cuda").item() - 3)
        out.append((torch.randn(s, generator=gen, device="cuda") * scale).to(dtype))
    return out


@pytest.fixture
def launches(monkeypatch):
    """Every kernel launch of the op: whether a CUDA graph was being captured at the time."""
    seen = []
    real = M._launch

    def counting(out, config, table):
        seen.append(torch.cuda.is_current_stream_capturing())
        return real(out, config, table)

    monkeypatch.setattr(M, "_launch", counting)
    return seen


def poison(ts, kind, gen):
    big = torch.finfo(ts[0].dtype).max
    where = lambda: (int(torch.randint(len(ts), (), generator=gen)), None)  # noqa: E731
    if kind == "nan_last":
        ts[-1].view(-1)[-1] = math.nan
    elif kind in ("pinf", "ninf"):
        i, _ = where()
        ts[i].view(-1)[int(torch.randint(ts[i].numel(), (), generator=gen))] = math.inf if kind == "pinf" else -math.inf
    elif kind == "nan_inf":
        ts[0].view(-1)[0] = -math.inf
        ts[len(ts) // 2].view(-1)[-1] = math.nan
    elif kind == "huge":
        ts[5].view(-1)[3] = -min(3e38, big)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_matches_twin_on_gpt2_small_grads(dtype, launches):
    gen = torch.Generator().manual_seed(0)
    for k, kind in enumerate(["clean", "nan_last", "pinf", "ninf", "nan_inf", "huge"]):
        ts = random_grads(gpt2_small_shapes(), dtype, seed=k)
        poison(ts, kind, gen)
        ref = M.max_abs_reference(ts)
        before = len(launches)
        assert agrees(torch.ops.fpolar.max_abs(ts), ref), kind
        assert agrees(nonfinite._max_abs(ts), ref), kind
        assert len(launches) == before + 2  # both through the kernel
        assert bool(nonfinite.found_nonfinite(ts, ts[0].device)) == (kind not in ("clean", "huge"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_negative_and_unaligned_offsets(dtype, launches):
    ts = random_grads([(1000, 37), (1,), (4096,), (3, 5, 7), (70000,)], dtype, seed=3)
    backwards = ts[::-1]  # the last allocation first: offsets below it
    buf = torch.full((200_003,), math.nan, device="cuda", dtype=dtype)  # never read between the slices
    sliced = [buf[101_000 : 101_000 + 777], buf[3 : 3 + 50_001], buf[150_001 : 150_001 + 1]]
    for t in sliced:
        t.copy_(torch.randn(t.shape, device="cuda").to(dtype))
    for lst in (backwards, sliced):
        assert agrees(M.max_abs_on_cuda(lst), M.max_abs_reference(lst))
        lst[-1].view(-1)[-1] = math.nan
        assert torch.isnan(M.max_abs_on_cuda(lst))
    assert not M.max_abs_table(sliced, 8192).aligned and len(launches) == 4


def test_inside_a_cuda_graph_with_tables_built_before(launches):
    ts = random_grads(gpt2_small_shapes()[:24], torch.float32, seed=5)
    lr = torch.tensor(0.02, device="cuda")
    every = ts + [None, lr]
    nonfinite.build_max_abs_tables(every)  # what the optimizer does before its capture
    nonfinite._max_abs(ts)  # an eager call builds its table too (and compiles the kernel)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        found = nonfinite.found_nonfinite(every, lr.device)  # one fp32 list: the grads and the lr
        peak = nonfinite._max_abs(ts)
    assert launches == [False, True, True]  # both captured as the kernel, not the twin
    for kind in ["clean", "nan_last", "pinf", "clean", "huge"]:
        for t in ts:
            t.normal_()
        poison(ts, kind, torch.Generator().manual_seed(1))
        graph.replay()
        assert bool(found) == (kind in ("nan_last", "pinf")), kind
        assert agrees(peak, M.max_abs_reference(ts)), kind


def test_tensors_first_seen_inside_a_capture_run_the_twin(launches):
    ts = random_grads([(513, 7), (9,)], torch.bfloat16, seed=6)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        peak = M.max_abs_on_cuda(ts)
    assert True not in launches
    ts[1][-1] = -math.inf
    graph.replay()
    assert peak.item() == math.inf


def test_optimizer_cuda_graph_step_captures_the_kernel(launches):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8)).cuda()
    import fpolar.optim

    opt = fpolar.optim.PolarGrad(model.parameters(), lr=0.02, compiled="cuda_graph")
    x = torch.randn(16, 32, device="cuda")
    for k in range(5):  # warm-up, capture, replays; step 3 has an inf grad
        opt.zero_grad(set_to_none=False)
        model(x).square().mean().backward()
        if k == 3:
            next(model.parameters()).grad[-1, -1] = -math.inf
        opt.step()
    assert True in launches and opt.skipped_steps.item() == 1


def test_compiled_op_runs_the_kernel(launches):
    torch._dynamo.reset()
    ts = random_grads([(300, 41), (5,), (20000,)], torch.float16, seed=7)
    compiled = torch.compile(lambda xs: nonfinite._max_abs(xs) * 1, fullgraph=True)
    assert agrees(compiled(ts), M.max_abs_reference(ts)) and launches
