"""``fpolar::max_abs`` (max |t| over a list of tensors, the non-finite skip's detection) on CPU.

- the Triton kernels under the interpreter (TRITON_INTERPRET=1 in a subprocess: this file run as a
  script) against the torch twin ``max_abs_reference`` on fresh random inputs: several tensors of
  different sizes (a 1-element one, sizes below, at and past a chunk), separately allocated or carved
  from one buffer with the list's first tensor in its middle (negative offsets), 16-aligned or not;
  fp32 / bf16 / fp16; NaN in the very last element, +inf, −inf, NaN with −inf, the largest finite
  values, a negative max, ±0 only, subnormals only; the heuristic config; more partials than the
  combine program reads at once. The value must be the twin's bit for bit where the twin's is finite,
  NaN where it is NaN and +inf where it is +inf (the op's contract); the twin itself is checked against
  a float64 max of the same elements;
- mutants of the launch (the last chunk skipped, the last chunk one element short, the first chunk
  skipped) on inputs whose only NaN sits where the mutant does not look: the check must call each
  one wrong, which shows the cases above would catch such a kernel;
- the CPU op (the twin), opcheck, one node in a fullgraph compiled graph; input checks that name the
  bad entry; the chunk table (content, cache, simulated CUDA-graph capture), and which path the op and
  ``fpolar.nonfinite`` take.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import torch

if __name__ == "__main__":  # the interpreter subprocess runs this file: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# the module (``fpolar.kernels.max_abs`` as an attribute is the op, which the package exports)
M = importlib.import_module("fpolar.kernels.max_abs")
from helpers import bitwise_equal, max_abs_agrees as agrees  # noqa: E402
from triton_interpreter import interpreter_main, run_interpreted_file  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Interpreter config: chunks of 32 elements (2 loads of 16), so small tensors span several chunks.
SMALL = {"BLOCK": 16, "BLOCKS_PER_CHUNK": 2}
SIZES = [33, 1, 32, 100, 7, 81]  # past, one, at, several chunks; the last tensor ends in a partial chunk


def make_tensors(sizes, dtype: torch.dtype, layout: str, seed: int):
    """Fresh random tensors of ``sizes`` elements (as 1-D, 2-D or 3-D shapes), each with its own scale
    (|x| from 1e-3 to 1e3), laid out as ``layout`` says:

    separate: each its own allocation; carved: slices of one buffer at 16-element-aligned starts, in
    an order that puts the list's first tensor in the buffer's middle (some offsets negative);
    unaligned: the same at odd starts."""
    gen = torch.Generator().manual_seed(seed)
    values = [torch.randn(n, generator=gen) * 10.0 ** (6 * torch.rand((), generator=gen).item() - 3) for n in sizes]
    if layout == "separate":
        flat = [v.to(dtype) for v in values]
    else:
        step = (lambda n: -(-n // 16) * 16 + 16) if layout == "carved" else (lambda n: n + 3)
        starts, at = [], 5 if layout == "unaligned" else 0
        order = list(range(1, len(sizes))) + [0]  # tensors[0] lies after all the others but one
        order = order[: len(order) // 2] + [0] + [i for i in order[len(order) // 2 :] if i != 0]
        place = {}
        for i in order:
            place[i] = at
            at += step(sizes[i])
        buf = torch.full((at + 16,), float("nan"), dtype=dtype)  # NaN between the tensors: must not be read
        flat = []
        for i, v in enumerate(values):
            t = buf[place[i] : place[i] + sizes[i]]
            t.copy_(v)
            flat.append(t)
        starts = [place[i] - place[0] for i in range(len(sizes))]
        assert min(starts) < 0 < max(starts)
    shapes = {1: (1,), 7: (7,), 32: (4, 8), 33: (3, 11), 81: (3, 3, 9), 100: (10, 10)}
    return [t.view(shapes.get(t.numel(), (t.numel(),))) for t in flat]


def poison(ts, kind: str):
    """Puts ``kind``'s special values into ``ts`` (in place); returns nothing."""
    big = torch.finfo(ts[0].dtype).max
    last = ts[-1].view(-1)
    if kind == "nan_last":  # the very last element of the list: a kernel that skips any of the last chunk misses it
        last[-1] = math.nan
    elif kind == "pinf":
        ts[3].view(-1)[40] = math.inf  # in a full chunk's second load
    elif kind == "ninf":
        ts[0].view(-1)[32] = -math.inf  # the first tensor's partial chunk
    elif kind == "nan_ninf":
        ts[0].view(-1)[0] = -math.inf
        ts[3].view(-1)[99] = math.nan
        last[0] = math.inf
    elif kind == "huge":  # finite: a max-abs must not overflow (3e38 in fp32 and bf16, 65504 in fp16)
        ts[2].view(-1)[5] = min(3e38, big)
        last[-1] = -min(3e38, big)
    elif kind == "negative_max":  # the largest |x| is negative and in the last element
        peak = max(t.float().abs().max().item() for t in ts)
        last[-1] = -2 * peak
    elif kind == "zeros":  # ±0 only: +0, bitwise
        for t in ts:
            t.zero_()
        ts[1].view(-1)[0] = -0.0
        last[-1] = -0.0
    elif kind == "subnormal":  # subnormals only: their bits order them too
        tiny = torch.finfo(ts[0].dtype).smallest_normal
        for k, t in enumerate(ts):
            t.copy_(torch.linspace(-tiny / 2, tiny / (3 + k), t.numel()).view(t.shape))
    else:
        assert kind == "clean"


def float64_max_abs(ts) -> float:
    x = torch.cat([t.reshape(-1).double() for t in ts])
    return math.nan if torch.isnan(x).any() else x.abs().max().item()


POISONS = ["clean", "nan_last", "pinf", "ninf", "nan_ninf", "huge", "negative_max", "zeros", "subnormal"]
CASES = [(d, layout, p) for d in DTYPES for layout in ("separate", "carved", "unaligned") for p in POISONS]
CASES += [("bf16", "heuristic", "nan_last"), ("fp16", "heuristic", "clean"), ("fp32", "many_partials", "nan_last")]
MUTANTS = ["skip_last_chunk", "short_last_chunk", "skip_first_chunk"]
INTERPRETER_CASES = CASES + [("mutant", m, d) for m in MUTANTS for d in ("fp32", "bf16")]


def _case_name(case) -> str:
    return "-".join(case)


def _run_case(case) -> dict:
    import triton

    name = _case_name(case)
    if case[0] == "mutant":
        return _run_mutant(case[1], DTYPES[case[2]], name)
    dtype, layout, kind = DTYPES[case[0]], case[1], case[2]
    config = triton.Config(SMALL, num_warps=4)
    if layout == "heuristic":  # the real config: chunks of 16384 elements, a full one and partial ones
        ts, config = make_tensors([5000, 1, 20000, 333], dtype, "separate", seed=len(name)), None
    elif layout == "many_partials":  # 4103 chunks of 16: the combine program loops twice over the partials
        config = triton.Config({"BLOCK": 16, "BLOCKS_PER_CHUNK": 1}, num_warps=4)
        ts = make_tensors([4100 * 16 - 5, 40], dtype, "separate", seed=1)
    else:
        ts = make_tensors(SIZES, dtype, layout, seed=len(name) + 31 * POISONS.index(kind))
    poison(ts, kind)
    ref = M.max_abs_reference(ts)
    out = M.launch_max_abs(ts, torch.full((), 7.0, dtype=dtype), config)
    again = M.launch_max_abs(ts, torch.full((), 7.0, dtype=dtype), config)
    exact = float64_max_abs(ts)
    twin_ok = math.isnan(exact) if math.isnan(exact) else ref.double().item() == exact
    table = M.max_abs_table(ts, M._chunk_of(config or M.max_abs_config(dtype)))
    ok = agrees(out, ref) and bitwise_equal(out, again) and twin_ok
    return {"case": name, "ok": ok, "out": out.item(), "twin": ref.item(), "exact": exact,
            "programs": table.chunks.shape[0], "aligned": table.aligned}


def _run_mutant(mutant: str, dtype: torch.dtype, name: str) -> dict:
    """A launch that misses part of the list, on inputs whose one NaN it misses: ``agrees`` must fail."""
    import triton

    config = triton.Config(SMALL, num_warps=4)
    ts = make_tensors(SIZES, dtype, "separate", seed=5)
    table = M.max_abs_table(ts, M._chunk_of(config))
    chunks = table.chunks.clone()
    if mutant == "skip_first_chunk":
        ts[0].view(-1)[0] = math.nan
        chunks = chunks[1:]
    else:
        ts[-1].view(-1)[-1] = math.nan
        chunks = chunks[:-1] if mutant == "skip_last_chunk" else chunks
        if mutant == "short_last_chunk":
            chunks[-1, 1] -= 1
    ref = M.max_abs_reference(ts)
    right = M.launch_max_abs(ts, torch.empty((), dtype=dtype), config)
    wrong = M.launch_max_abs(ts, torch.empty((), dtype=dtype), config, table._replace(chunks=chunks))
    caught = agrees(right, ref) and not agrees(wrong, ref)
    return {"case": name, "ok": caught, "mutant_result": wrong.item(), "twin": ref.item()}


if __name__ == "__main__":
    sys.exit(interpreter_main(INTERPRETER_CASES, _run_case, _case_name))


# --------------------------------------------------------------------------------------------------
# pytest part
# --------------------------------------------------------------------------------------------------

import pytest  # noqa: E402

from fpolar import nonfinite  # noqa: E402
from fpolar.kernels import _glue_common as glue  # noqa: E402


@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    return run_interpreted_file(__file__)


@pytest.mark.parametrize("case", [_case_name(c) for c in INTERPRETER_CASES])
def test_triton_kernel_under_interpreter(interpreter_results, case):
    assert case in interpreter_results, interpreter_results["__stderr__"]
    assert interpreter_results[case]["ok"], interpreter_results[case]


def test_interpreter_cases_cover_what_they_claim(interpreter_results):
    """Several chunks a list, both alignments, and more partials than one combine pass reads."""
    records = {k: v for k, v in interpreter_results.items() if not k.startswith("__")}
    assert records["fp32-carved-clean"]["aligned"] and not records["fp32-unaligned-clean"]["aligned"]
    assert records["bf16-separate-clean"]["programs"] == sum(-(-n // 32) for n in SIZES)
    assert records["fp32-many_partials-nan_last"]["programs"] > 4096
    assert records["bf16-heuristic-nan_last"]["programs"] == 5  # 20000 elements: 2 chunks of 16384


def test_interpreter_subprocess_exit_status(interpreter_results):
    assert interpreter_results["__returncode__"] == 0, interpreter_results["__stderr__"]


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("kind", ["clean", "nan_last", "ninf", "huge"])
def test_cpu_op_is_the_twin(dtype, kind):
    ts = make_tensors(SIZES, dtype, "separate", seed=3)
    poison(ts, kind)
    out = torch.ops.fpolar.max_abs(ts)
    assert agrees(out, M.max_abs_reference(ts))
    assert agrees(nonfinite._max_abs(ts), out)  # eager off CUDA: the twin


def test_opcheck():
    ts = make_tensors(SIZES[:3], torch.bfloat16, "separate", seed=4)
    torch.library.opcheck(M.max_abs, (ts,))
    torch.library.opcheck(M.max_abs, ([torch.randn(3, 5)],))


def test_op_is_one_node_in_a_fullgraph_compile():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    ts = make_tensors(SIZES[:4], torch.float32, "separate", seed=6)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda xs: ~torch.isfinite(nonfinite._max_abs(xs)), fullgraph=True, backend=counter)
    assert not compiled(ts)
    nodes = [str(n.target) for n in counter.graphs[0].graph.nodes if n.op == "call_function"]
    assert sum("max_abs" in t for t in nodes) == 1


@pytest.mark.parametrize(
    "tensors, error, words",
    [
        ([], ValueError, "non-empty list"),
        ([torch.ones(3), torch.ones(2), torch.ones(2, dtype=torch.float16)], ValueError,
         r"tensors\[2\] is torch.float16 on cpu, tensors\[0\] is torch.float32"),
        ([torch.ones(3), torch.ones(0, 4)], ValueError, r"tensors\[1\] is empty"),
        ([torch.ones(3), torch.ones(2, dtype=torch.int32)], TypeError, r"tensors\[1\] has dtype torch.int32"),
        ([torch.ones(3), torch.ones(2, device="meta")], ValueError, r"tensors\[1\] is torch.float32 on meta"),
    ],
)
def test_op_rejects_bad_inputs_naming_them(tensors, error, words):
    with pytest.raises(error, match=words):
        torch.ops.fpolar.max_abs(tensors)
    with pytest.raises(error, match=words):
        M.launch_max_abs(tensors, torch.empty(()))


def test_launcher_rejects_what_the_kernel_cannot_read():
    import triton

    x = torch.ones(4, 6)
    with pytest.raises(ValueError, match=r"tensors\[1\] of shape \(6, 4\) is not contiguous"):
        M.launch_max_abs([x, x.mT], torch.empty(()))
    with pytest.raises(TypeError, match="torch.float64"):
        M.launch_max_abs([x.double()], torch.empty((), dtype=torch.float64))
    with pytest.raises(ValueError, match=r"out must be a 0-d torch.float32 tensor on cpu, got torch.float32 of shape \(1,\)"):
        M.launch_max_abs([x], torch.empty(1))
    with pytest.raises(ValueError, match="got torch.bfloat16"):
        M.launch_max_abs([x], torch.empty((), dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="out must be a torch.Tensor, got float"):
        M.launch_max_abs([x], 0.0)
    with pytest.raises(ValueError, match="BLOCK a power of 2"):
        M.launch_max_abs([x], torch.empty(()), triton.Config({"BLOCK": 24, "BLOCKS_PER_CHUNK": 2}))


@pytest.fixture
def fresh_tables(monkeypatch):
    """An empty table cache (eager and captured), as ``glue``'s own tests use."""
    monkeypatch.setattr(glue, "_TABLES", glue.OrderedDict())
    monkeypatch.setattr(glue, "_CAPTURED_TABLES", {})


def test_table_rows_address_every_chunk(fresh_tables):
    ts = make_tensors(SIZES, torch.float32, "carved", seed=8)
    table = M.max_abs_table(ts, 32)
    assert table.base is ts[0] and table.chunks.dtype == torch.int64 and table.chunk == 32 and table.aligned
    want = []
    for t in ts:
        start = (t.data_ptr() - ts[0].data_ptr()) // 4
        want += [[start + k, min(32, t.numel() - k)] for k in range(0, t.numel(), 32)]
    assert table.chunks.tolist() == want and min(row[0] for row in want) < 0
    assert not M.max_abs_table(make_tensors(SIZES, torch.float32, "unaligned", seed=8), 32).aligned


def test_table_cached_and_found_again_while_a_graph_is_captured(fresh_tables, monkeypatch):
    """Eagerly a table is built once per list of addresses (and chunk) and reused; while a CUDA graph is
    captured (simulated) an unseen list gets None (the op runs its twin) and a seen one its table, kept
    from then on, also by ``clear_matrix_offsets``."""
    ts = make_tensors(SIZES, torch.bfloat16, "separate", seed=9)
    first = M.max_abs_table(ts, 32)
    assert M.max_abs_table(ts, 32).chunks.data_ptr() == first.chunks.data_ptr()  # no second copy
    assert M.max_abs_table(ts, 64).chunks.shape[0] < first.chunks.shape[0]  # another chunk, another table
    monkeypatch.setattr(glue, "capturing", lambda device: True)
    assert M.max_abs_table(ts[1:], 32) is None
    captured = M.max_abs_table(ts, 32)
    assert captured is not None and captured.chunks.data_ptr() == first.chunks.data_ptr()
    monkeypatch.setattr(glue, "capturing", lambda device: False)
    glue.clear_matrix_offsets()
    assert M.max_abs_table(ts, 32).chunks.data_ptr() == first.chunks.data_ptr()


def test_build_tables_builds_what_found_nonfinite_looks_up(fresh_tables, monkeypatch):
    """``build_max_abs_tables`` takes the same buckets as ``found_nonfinite`` (None and empty grads
    left out, one list per dtype, 0-d lr tensors in their dtype's): a capture then finds every table."""
    monkeypatch.setattr(M, "max_abs_kernel_applies", lambda tensors: True)
    grads = [torch.randn(5, 3), None, torch.randn(7).bfloat16(), torch.empty(0, 2), torch.randn(40), torch.tensor(0.1)]
    nonfinite.build_max_abs_tables(grads)
    monkeypatch.setattr(glue, "capturing", lambda device: True)
    for dtype in (torch.float32, torch.bfloat16):
        bucket = [g for g in grads if g is not None and g.numel() and g.dtype == dtype]
        assert M.max_abs_table(bucket, M._chunk_of(M.max_abs_config(dtype))) is not None


def test_cuda_implementation_takes_the_kernel_only_with_a_table(fresh_tables, monkeypatch):
    launched = []
    monkeypatch.setattr(M, "_launch", lambda out, config, table: launched.append(table) or out.fill_(-1))
    ts = make_tensors(SIZES, torch.float32, "separate", seed=10)
    assert agrees(M.max_abs_on_cuda(ts), M.max_abs_reference(ts)) and not launched  # CPU: the twin
    monkeypatch.setattr(M, "max_abs_kernel_applies", lambda tensors: True)
    monkeypatch.setattr(glue, "capturing", lambda device: True)
    assert agrees(M.max_abs_on_cuda(ts), M.max_abs_reference(ts)) and not launched  # captured, no table
    monkeypatch.setattr(glue, "capturing", lambda device: False)
    assert M.max_abs_on_cuda(ts).item() == -1 and len(launched) == 1  # the kernel, with its table


def test_kernel_applies_to_contiguous_cuda_16_and_32_bit_lists(monkeypatch):
    fake_cuda = torch.empty(4, 6, device="meta")  # a device tensor stand-in: only metadata is read
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda t: t.device.type == "meta"))
    assert M.max_abs_kernel_applies([fake_cuda, fake_cuda[1:]])
    assert M.max_abs_kernel_applies([fake_cuda.bfloat16(), fake_cuda.half()[:1]])
    assert not M.max_abs_kernel_applies([fake_cuda, fake_cuda.mT])
    assert not M.max_abs_kernel_applies([fake_cuda.double()])
    monkeypatch.undo()
    assert not M.max_abs_kernel_applies([torch.ones(3)])


def test_nonfinite_takes_the_cuda_implementation_eagerly_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(nonfinite, "max_abs_on_cuda", lambda gs: calls.append(gs) or torch.tensor(math.inf))
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda t: True))
    assert nonfinite.found_nonfinite([torch.ones(3), None, torch.ones(2)], torch.device("cpu")).item()
    assert len(calls) == 1 and len(calls[0]) == 2
