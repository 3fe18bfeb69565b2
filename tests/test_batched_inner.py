"""``fpolar::batched_inner`` (⟨O_b, X_b⟩_F per matrix) and ``fpolar.scale.nuclear_scale`` on CPU.

- the Triton kernels under the interpreter (TRITON_INTERPRET=1 in a subprocess: this file run as a
  script) against float64 on fresh random inputs: one tile, several tiles and chunks (the second
  launch), square, wide and tall, edges that are not a tile multiple, O a transposed view while X is
  not, mixed dtypes; the same bits on a second run (no atomics);
- the CPU op (the twin) against float64, opcheck, one node in a fullgraph compiled graph;
- input checks that name the bad value;
- ``nuclear_scale``: float64 stays float64, the op only for plain CUDA tensors outside torch.compile.

Tolerance: |s − s_exact| ≤ 2e-6 · Σ_ij |O_ij·X_ij|. Each product is exact in fp32 for 16-bit operands
(one fp32 rounding for fp32 ones) and every sum is a chain of at most ~31 fp32 additions deep (8 tiles
of a chunk, a 64×64 tile's tree, the partials), so the a-priori bound is 31·2⁻²⁴ ≈ 1.85e-6 of Σ|terms|.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

if __name__ == "__main__":  # the interpreter subprocess runs this file: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fpolar.kernels as K  # noqa: E402
from triton_interpreter import interpreter_main, run_interpreted_file  # noqa: E402

REL_TOL = 2e-6  # of Σ|O_ij·X_ij|, see the module docstring
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _random(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)


def make_inputs(batch: int, m: int, n: int, o_dtype: torch.dtype, x_dtype: torch.dtype, o_transposed: bool, seed: int):
    """Fresh O and X (B, m, n); O with a nonzero mean so the sum is not near zero, and as the
    transpose view of a (B, n, m) tensor when ``o_transposed`` (a tall group's polar factor)."""
    o = _random((batch, n, m), o_dtype, seed).mT if o_transposed else _random((batch, m, n), o_dtype, seed)
    o = (o.float() + 0.25).to(o_dtype)
    if o_transposed:  # keep the transposed strides after the shift
        o = o.mT.contiguous().mT
    return o, _random((batch, m, n), x_dtype, seed + 1)


def relative_error(out: torch.Tensor, o: torch.Tensor, x: torch.Tensor) -> float:
    """max_b |out_b − ⟨O_b, X_b⟩| / Σ|O_b·X_b|, the reference in float64."""
    terms = o.double() * x.double()
    exact = terms.sum(dim=(-2, -1))
    return ((out.double() - exact).abs() / terms.abs().sum(dim=(-2, -1))).max().item()


# (batch, m, n, o dtype, x dtype, O transposed, config: None = the heuristic, or (BLOCK_R, BLOCK_C, TILES))
INTERPRETER_CASES = [
    (3, 20, 37, "bf16", "bf16", False, None),  # one tile, masked edges: a single launch
    (2, 130, 70, "bf16", "fp32", True, None),  # tall, O transposed, edge tiles on both sides
    (2, 70, 200, "fp16", "bf16", False, (16, 32, 2)),  # many chunks: the partials' sum loops
    (1, 64, 64, "fp32", "fp32", True, (32, 32, 1)),  # tiles exactly covering, fp32
    (2, 1, 50, "bf16", "bf16", False, None),  # one row
]


def _case_name(case) -> str:
    b, m, n, od, xd, t, cfg = case
    return f"{b}x{m}x{n}-{od}-{xd}-{'oT' if t else 'o'}-{'heur' if cfg is None else '_'.join(map(str, cfg))}"


def _run_interpreted(case) -> dict:
    import triton

    b, m, n, od, xd, transposed, cfg = case
    o, x = make_inputs(b, m, n, DTYPES[od], DTYPES[xd], transposed, seed=len(_case_name(case)))
    assert o.is_contiguous() != transposed or m == 1
    config = None if cfg is None else triton.Config({"BLOCK_R": cfg[0], "BLOCK_C": cfg[1], "TILES_PER_CHUNK": cfg[2]}, num_warps=4)
    out = torch.full((b,), float("nan"))
    K.launch_batched_inner(o, x, out, config)
    again = torch.full((b,), float("nan"))
    K.launch_batched_inner(o, x, again, config)
    err = relative_error(out, o, x)
    return {"case": _case_name(case), "err": err, "same_bits": torch.equal(out, again), "ok": err <= REL_TOL and torch.equal(out, again)}


if __name__ == "__main__":
    sys.exit(interpreter_main(INTERPRETER_CASES, _run_interpreted, _case_name))


# --------------------------------------------------------------------------------------------------
# pytest part
# --------------------------------------------------------------------------------------------------

import pytest  # noqa: E402

from fpolar.scale import nuclear_scale  # noqa: E402


@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    return run_interpreted_file(__file__)


@pytest.mark.parametrize("case", [_case_name(c) for c in INTERPRETER_CASES])
def test_triton_kernel_under_interpreter(interpreter_results, case):
    assert case in interpreter_results, interpreter_results["__stderr__"]
    assert interpreter_results[case]["ok"], interpreter_results[case]


def test_interpreter_subprocess_exit_status(interpreter_results):
    assert interpreter_results["__returncode__"] == 0, interpreter_results["__stderr__"]


@pytest.mark.parametrize("case", INTERPRETER_CASES[:3], ids=_case_name)
def test_cpu_op_matches_float64(case):
    b, m, n, od, xd, transposed, _ = case
    o, x = make_inputs(b, m, n, DTYPES[od], DTYPES[xd], transposed, seed=7)
    out = K.batched_inner(o, x)
    assert out.shape == (b,) and out.dtype == torch.float32
    assert relative_error(out, o, x) <= REL_TOL


def test_opcheck():
    o, x = make_inputs(3, 12, 20, torch.bfloat16, torch.float32, True, seed=3)
    torch.library.opcheck(K.batched_inner, (o, x))
    torch.library.opcheck(K.batched_inner, (x.bfloat16(), x.bfloat16()))


def test_op_is_one_node_in_a_fullgraph_compile():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    o, x = make_inputs(3, 12, 20, torch.bfloat16, torch.bfloat16, False, seed=4)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda a, b: torch.ops.fpolar.batched_inner(a, b) * 2, fullgraph=True, backend=counter)
    assert torch.equal(compiled(o, x), K.batched_inner(o, x) * 2)
    nodes = [str(n.target) for n in counter.graphs[0].graph.nodes if n.op == "call_function"]
    assert sum("batched_inner" in t for t in nodes) == 1


@pytest.mark.parametrize(
    "o, x, error, words",
    [
        (torch.ones(2, 3, 4), torch.ones(2, 4, 3), ValueError, "(2, 3, 4) and x (2, 4, 3)"),
        (torch.ones(3, 4), torch.ones(3, 4), ValueError, "3 dims"),
        (torch.ones(2, 3, 4, dtype=torch.float64), torch.ones(2, 3, 4), TypeError, "torch.float64"),
        (torch.ones(2, 3, 4), torch.ones(2, 3, 4, dtype=torch.int32), TypeError, "x has dtype torch.int32"),
        (torch.ones(2, 3, 4), torch.ones(2, 3, 4, device="meta"), ValueError, "o is on cpu and x on meta"),
    ],
)
def test_rejects_bad_inputs_naming_them(o, x, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        K.batched_inner(o, x)


def test_empty_matrices_sum_to_zero():
    assert torch.equal(K.batched_inner(torch.ones(2, 0, 3), torch.ones(2, 0, 3)), torch.zeros(2))
    assert K.batched_inner(torch.ones(0, 3, 3), torch.ones(0, 3, 3)).shape == (0,)


@pytest.mark.parametrize("o_dtype, x_dtype, expected", [
    (torch.bfloat16, torch.bfloat16, torch.float32),
    (torch.bfloat16, torch.float32, torch.float32),
    (torch.float32, torch.float64, torch.float64),
])
def test_nuclear_scale_matches_float64_in_at_least_float32(o_dtype, x_dtype, expected):
    o, x = make_inputs(4, 24, 40, o_dtype, x_dtype, True, seed=11)
    s = nuclear_scale(o, x)
    assert s.dtype == expected and s.shape == (4,)
    assert relative_error(s, o, x) <= (1e-14 if expected == torch.float64 else REL_TOL)


def test_nuclear_scale_is_the_polar_inputs_nuclear_norm():
    """⟨polar(X), X⟩ = ‖X‖_* (the scale's meaning), exact polar factor from a float64 SVD."""
    x = _random((3, 16, 28), torch.float64, 12)
    u, sv, vh = torch.linalg.svd(x, full_matrices=False)
    o = (u @ vh).float()
    torch.testing.assert_close(nuclear_scale(o, x.float()).double(), sv.sum(-1), rtol=1e-5, atol=0)


def test_nuclear_scale_uses_the_op_only_for_plain_cuda_tensors_outside_compile(monkeypatch):
    from fpolar import scale

    fake_cuda = torch.empty(2, 3, 4, device="meta")  # a device tensor stand-in: only metadata is read
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda t: t.device.type == "meta"))
    assert scale._kernel_applies(fake_cuda, fake_cuda)
    assert scale._kernel_applies(fake_cuda.bfloat16(), fake_cuda)
    assert not scale._kernel_applies(fake_cuda.double(), fake_cuda)  # float64 stays on the torch path
    assert not scale._kernel_applies(fake_cuda, fake_cuda[:, :, :3])
    assert not scale._kernel_applies(fake_cuda[0], fake_cuda[0])
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not scale._kernel_applies(fake_cuda, fake_cuda)  # Inductor fuses the torch expression
    monkeypatch.undo()
    assert not scale._kernel_applies(torch.ones(2, 3, 4), torch.ones(2, 3, 4))
