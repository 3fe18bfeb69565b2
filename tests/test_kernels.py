"""The Newton–Schulz ops of fpolar.kernels on CPU: registration, torch twins, Triton kernel logic.

- opcheck of every op (schema, fake tensor, AOT dispatch) on odd shapes, m = 1, batches 1 and 3;
- the CPU ops against float64 references, elementwise, with tolerances stated per dtype;
- the Triton kernels under the Triton interpreter (TRITON_INTERPRET=1, which must be set before triton
  is imported, so they run in a subprocess: this file run as a script) against the torch twins,
  on outputs poisoned with NaN, with exact symmetry of the mirrored outputs;
- each op is one node of a fullgraph torch.compile graph;
- input validation names the bad argument.
"""

from __future__ import annotations

import math
import sys
import zlib
from pathlib import Path

import torch

if __name__ == "__main__":  # the interpreter subprocess runs this file: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fpolar.kernels as K  # noqa: E402
from triton_interpreter import interpreter_main, run_interpreted_file  # noqa: E402

# Newton–Schulz coefficients ("muon" schedule): realistic magnitudes and signs for the scalars.
NS_A, NS_B, NS_C = 3.4445, -4.7750, 2.0315
AOL_EPS = 1e-7

# |computed − exact| ≤ TOL · bound elementwise, where bound is the same expression evaluated on
# absolute values (e.g. |X|·|X|ᵀ for X·Xᵀ): the standard error bound of a dot product, which stays
# meaningful where the result cancels to near zero. fp32: n·u with n ≤ ~300 is < 2e-5. 16-bit: the
# output rounding, half an ulp of the result (2⁻⁹ bf16, 2⁻¹¹ fp16), doubled for slack.
TOL = {torch.float32: 2e-5, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-10}
# fp16 results below 2⁻¹⁴ are subnormal, spaced 2⁻²⁴ apart: relative bounds fail there, so every
# comparison also allows one such step absolutely (far below every other dtype's errors).
ATOL = 2.0**-24


def _random(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)


def _random_symmetric(batch: int, m: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """A random symmetric positive semidefinite (B, m, m) with spectral norm about 1, exactly symmetric."""
    x = _random((batch, m, m + 5), torch.float32, seed) / math.sqrt(m + 5)
    gram = x @ x.mT
    gram = (gram + gram.mT) / 2  # fl(a + b) = fl(b + a): exactly symmetric
    return (gram / gram.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-30)).to(dtype)


def _bounds_error(out: torch.Tensor, exact: torch.Tensor, bound: torch.Tensor, tol: float) -> float:
    """max |out − exact| / (tol · bound + tiny); ≤ 1 passes. NaN (an unwritten entry) fails."""
    err = (out.double() - exact).abs() / (tol * bound + ATOL)
    if torch.isnan(err).any():
        return math.inf
    return err.max().item() if err.numel() else 0.0


def exact_sym_gram(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x64 = x.double()
    return x64 @ x64.mT, x64.abs() @ x64.abs().mT


def exact_sym_poly(a: torch.Tensor, b: float, c: float, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    a64 = a.double()
    eye = torch.eye(a.shape[-1], dtype=torch.float64)
    exact = shift * eye + b * a64 + c * (a64 @ a64)
    return exact, abs(shift) * eye + abs(b) * a64.abs() + abs(c) * (a64.abs() @ a64.abs())


def exact_sym_cross(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The lower triangle of A·Bᵀ reflected (the op's meaning), and the same of |A|·|B|ᵀ."""

    def reflected(t: torch.Tensor) -> torch.Tensor:
        return t.tril() + t.tril(-1).mT

    a64, b64 = a.double(), b.double()
    return reflected(a64 @ b64.mT), reflected(a64.abs() @ b64.abs().mT)


def exact_ns_apply(x: torch.Tensor, bm: torch.Tensor, a: float) -> tuple[torch.Tensor, torch.Tensor]:
    x64, bm64 = x.double(), bm.double()
    return a * x64 + bm64 @ x64, abs(a) * x64.abs() + bm64.abs() @ x64.abs()


# --------------------------------------------------------------------------------------------------
# Triton kernels under the interpreter. Run in a subprocess (this file as a script).
# --------------------------------------------------------------------------------------------------

INTERPRETER_SHAPES = [(3, 5, 7), (2, 17, 33), (1, 1, 9), (2, 40, 70)]
# A 16-wide tile splits the larger shapes above into several tiles: mirrored off-diagonal tiles,
# partial edge tiles and the lower-tile index map all get exercised. None: the launcher's own heuristic.
INTERPRETER_TILES = [None, 16]
INTERPRETER_DTYPES = ["float32", "bfloat16"]
# The Triton interpreter (3.9) rounds fp32 -> bf16 toward zero where the GPU rounds to nearest, so
# its bf16 outputs may sit one bf16 ulp (2⁻⁷ relative) from the twin's; fp32 must match to ~1e-5.
INTERPRETER_TOL = {"float32": 1e-5, "bfloat16": 2.0**-7 + 1e-5, "float16": 2.0**-10 + 1e-5}


def _interpreter_cases() -> list[str]:
    cases = [
        f"{op}-{'x'.join(map(str, shape))}-{dtype}-tile{tile}"
        for op in ("sym_gram", "sym_poly", "sym_cross", "ns_apply")
        for shape in INTERPRETER_SHAPES
        for dtype in INTERPRETER_DTYPES
        for tile in INTERPRETER_TILES
    ]
    # fp16, a batch of 5 (batch offsets), strided (non-contiguous) inputs, and the tile index map.
    cases += [f"{op}-4x20x24-float16-tile16" for op in ("sym_gram", "sym_poly", "sym_cross", "ns_apply")]
    cases += [
        f"{op}-5x20x24-float32-tile16-strided" for op in ("sym_gram", "sym_poly", "sym_cross", "ns_apply")
    ]
    # The TMA kernels (sm90's tile copies; descriptors work in the interpreter): shapes whose rows are
    # 16-byte aligned, with edge tiles (40 = 2.5 tiles of 16) and a single partial tile.
    cases += [
        f"{op}-{shape}-{dtype}-tile{tile}-tma"
        for op in ("sym_gram", "sym_poly", "sym_cross")
        for shape in ("2x40x72", "3x24x40")
        for dtype in INTERPRETER_DTYPES
        for tile in (None, 16)
    ]
    # The shift (Gram Newton–Schulz's a·I) on the diagonal tiles: several tiles, edges, and through TMA.
    cases += [
        f"sym_poly-{shape}-{dtype}-tile16{tma}-shift"
        for shape in ("2x40x72", "3x24x40", "1x1x9")
        for dtype in INTERPRETER_DTYPES
        for tma in ("", "-tma")
        if not (tma and shape == "1x1x9")  # a 1-wide row is not 16-byte aligned
    ]
    # A per-matrix scale in the epilogue (Gram Newton–Schulz's deferred input scale): s²·X Xᵀ and
    # s·p(A), each matrix its own s, through both load paths.
    cases += [
        f"{op}-{shape}-{dtype}-tile16{tma}-scaled"
        for op in ("sym_gram", "sym_poly")
        for shape in ("3x40x72", "2x24x40")
        for dtype in INTERPRETER_DTYPES
        for tma in ("", "-tma")
    ]
    # Every candidate config of the autotune gives the twin's result: a matrix over 64 wide (the
    # 64/128-tile candidates) and one under it (the small-matrix candidates).
    for op in ("sym_gram", "sym_poly", "sym_cross", "ns_apply"):
        for shape in CANDIDATE_SHAPES:
            batch, m, n = shape
            count = len(K.candidate_configs(op, m, m if op == "sym_poly" else n, torch.bfloat16))
            cases += [f"{op}-{'x'.join(map(str, shape))}-bfloat16-cand{i}" for i in range(count)]
    cases += ["lower_tile_coords"]
    return cases


CANDIDATE_SHAPES = [(2, 70, 90), (1, 20, 24)]


def _parse_case(case: str) -> tuple[str, tuple[int, int, int], torch.dtype, int | str | None, bool, bool, bool, bool]:
    op, shape, dtype, tile, *rest = case.split("-")
    if tile.startswith("cand"):  # "candI": the I-th autotune candidate
        tile_size: int | str | None = tile
    else:
        tile_size = None if tile == "tileNone" else int(tile.removeprefix("tile"))
    shape_t = tuple(int(v) for v in shape.split("x"))
    return op, shape_t, getattr(torch, dtype), tile_size, "strided" in rest, "tma" in rest, "shift" in rest, "scaled" in rest


# Per-matrix scales of the "scaled" cases: one below 1, one large, one small, none a power of two (so
# the multiply rounds), each matrix a different one (a kernel reading the wrong matrix's scale fails).
CASE_SCALES = (0.37, 1.3 * 2.0**11, 0.7 * 2.0**-9)


def _strided(t: torch.Tensor) -> torch.Tensor:
    """The same values as t through a transposed view (column-major matrices)."""
    return t.mT.contiguous().mT


def _run_kernel_case(case: str) -> dict:
    import triton

    op, (batch, m, n), dtype, tile, strided, tma, shifted, scaled = _parse_case(case)
    scale = torch.tensor(CASE_SCALES[:batch], dtype=torch.float32) if scaled else None
    # the bound of s·(…) or s²·(…) is the unscaled bound times s or s²
    once = torch.ones(batch, 1, 1, dtype=torch.float64) if scale is None else scale.double()[:, None, None]
    through = {"tma": True} if tma else {}  # else the launcher's own choice (pointer loads on CPU)
    seed = zlib.crc32(case.encode())
    tol = INTERPRETER_TOL[str(dtype).removeprefix("torch.")]
    x = _random((batch, m, n), dtype, seed)
    if strided:
        x = _strided(x)

    def poisoned(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.full(shape, math.nan, dtype=dtype)

    if isinstance(tile, str):
        config = K.candidate_configs(op, m, m if op == "sym_poly" else n, dtype)[int(tile.removeprefix("cand"))]
    elif op in ("sym_gram", "sym_poly", "sym_cross"):
        config = None if tile is None else triton.Config({"BLOCK": tile, "BLOCK_K": 32})
    else:
        config = None if tile is None else triton.Config(
            {"BLOCK_M": tile, "BLOCK_N": tile, "BLOCK_K": 32, "GROUP_M": 2}
        )
    result: dict = {"case": case}
    if op == "sym_gram":
        out = K.launch_sym_gram(x, poisoned((batch, m, m)), config=config, scale=scale, **through)
        twin = K.sym_gram_reference(x, scale)
        bound = exact_sym_gram(x)[1] * once * once
        result["err"] = _bounds_error(out, twin.double(), bound, tol)
        result["symmetric"] = bool(torch.equal(out, out.mT))
    elif op == "sym_poly":
        a = _random_symmetric(batch, m, dtype, seed)
        if strided:
            a = _strided(a)
        shift = NS_A if shifted else 0.0
        out = K.launch_sym_poly(
            a, poisoned((batch, m, m)), NS_B, NS_C, config=config, shift=shift, scale=scale, **through
        )
        twin = K.sym_poly_reference(a, NS_B, NS_C, shift, scale)
        bound = exact_sym_poly(a, NS_B, NS_C, shift)[1] * once
        result["err"] = _bounds_error(out, twin.double(), bound, tol)
        result["symmetric"] = bool(torch.equal(out, out.mT))
    elif op == "sym_cross":
        b = _random((batch, m, n), dtype, seed + 1)
        if strided:
            b = _strided(b)
        out = K.launch_sym_cross(x, b, poisoned((batch, m, m)), config=config, **through)
        twin = K.sym_cross_reference(x, b)
        bound = exact_sym_cross(x, b)[1]
        result["err"] = _bounds_error(out, twin.double(), bound, tol)
        result["symmetric"] = bool(torch.equal(out, out.mT))
    elif op == "ns_apply":
        bm = K.sym_poly_reference(_random_symmetric(batch, m, dtype, seed), NS_B, NS_C)
        if strided:
            bm = _strided(bm)
        out = K.launch_ns_apply(x, bm, poisoned((batch, m, n)), NS_A, config=config)
        twin = K.ns_apply_reference(x, bm, NS_A)
        bound = exact_ns_apply(x, bm, NS_A)[1]
        result["err"] = _bounds_error(out, twin.double(), bound, tol)
    else:
        raise ValueError(f"unknown op in case {case}")
    result["ok"] = result["err"] <= 1.0 and result.get("symmetric", True)
    return result


if K.HAS_TRITON:
    import triton
    import triton.language as tl

    from fpolar.kernels._lower_tiles import lower_tile_coords

    @triton.jit
    def tile_map_kernel(ti_ptr, tj_ptr, count, BLOCK: tl.constexpr):
        idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ti, tj = lower_tile_coords(idx)
        tl.store(ti_ptr + idx, ti, mask=idx < count)
        tl.store(tj_ptr + idx, tj, mask=idx < count)


def _run_tile_map_case() -> dict:
    """lower_tile_coords over every lower tile of a 2048×2048 tile grid (2.1M indices), vectorized."""
    tiles = 2048
    count = tiles * (tiles + 1) // 2
    ti = torch.empty(count, dtype=torch.int32)
    tj = torch.empty(count, dtype=torch.int32)
    block = 2**17
    tile_map_kernel[(triton.cdiv(count, block),)](ti, tj, count, BLOCK=block)
    rows = torch.arange(tiles, dtype=torch.int32)
    expected_ti = torch.repeat_interleave(rows, rows + 1)
    row_starts = expected_ti.long() * (expected_ti.long() + 1) // 2
    expected_tj = torch.arange(count, dtype=torch.int64) - row_starts
    ok = torch.equal(ti, expected_ti) and torch.equal(tj.long(), expected_tj)
    return {"case": "lower_tile_coords", "ok": bool(ok)}


def _run_case(case: str) -> dict:
    return _run_tile_map_case() if case == "lower_tile_coords" else _run_kernel_case(case)


if __name__ == "__main__":
    sys.exit(interpreter_main(_interpreter_cases(), _run_case))


# --------------------------------------------------------------------------------------------------
# pytest part (everything above is also importable by the subprocess without pytest)
# --------------------------------------------------------------------------------------------------

import pytest  # noqa: E402

OPCHECK_SHAPES = [(1, 1, 1), (1, 1, 9), (3, 5, 7), (3, 17, 33), (1, 16, 16)]
CPU_SHAPES = OPCHECK_SHAPES + [(2, 64, 300), (3, 40, 40)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _id(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", OPCHECK_SHAPES, ids=_id)
def test_opcheck(shape, dtype):
    batch, m, n = shape
    x = _random(shape, dtype, seed=1)
    a = _random_symmetric(batch, m, dtype, seed=2)
    bm = K.sym_poly_reference(a, NS_B, NS_C)
    torch.library.opcheck(K.sym_gram, (x,))
    torch.library.opcheck(K.sym_poly, (a, NS_B, NS_C))
    torch.library.opcheck(K.sym_poly, (a, NS_B, NS_C, NS_A))
    scale = torch.rand(batch) + 0.5
    torch.library.opcheck(K.sym_gram, (x, scale))
    torch.library.opcheck(K.sym_poly, (a, NS_B, NS_C, NS_A, scale))
    torch.library.opcheck(K.ns_apply, (x, bm, NS_A))
    torch.library.opcheck(K.sym_cross, (x, _random(shape, dtype, seed=5)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=_id)
def test_cpu_ops_match_float64(shape, dtype):
    batch, m, n = shape
    tol = TOL[dtype]
    x = _random(shape, dtype, seed=3)

    gram = K.sym_gram(x)
    assert gram.shape == (batch, m, m) and gram.dtype == dtype
    assert _bounds_error(gram, *exact_sym_gram(x), tol) <= 1.0

    a = _random_symmetric(batch, m, dtype, seed=4)
    poly = K.sym_poly(a, NS_B, NS_C)
    assert poly.shape == (batch, m, m) and poly.dtype == dtype
    assert _bounds_error(poly, *exact_sym_poly(a, NS_B, NS_C), tol) <= 1.0
    shifted = K.sym_poly(a, NS_B, NS_C, NS_A)
    assert _bounds_error(shifted, *exact_sym_poly(a, NS_B, NS_C, NS_A), tol) <= 1.0

    bm = K.sym_poly_reference(a, NS_B, NS_C)
    applied = K.ns_apply(x, bm, NS_A)
    assert applied.shape == shape and applied.dtype == dtype
    assert _bounds_error(applied, *exact_ns_apply(x, bm, NS_A), tol) <= 1.0

    # a per-matrix scale: s²·X Xᵀ and s·p(A), each matrix its own s, against float64
    scales = CASE_SCALES if dtype != torch.float16 else (0.37, 3.1, 0.21)  # fp16 overflows at 65504
    scale = torch.tensor(scales * batch, dtype=torch.float32)[:batch]
    s64 = scale.double()[:, None, None]
    exact, bound = exact_sym_gram(x)
    assert _bounds_error(K.sym_gram(x, scale), exact * s64 * s64, bound * s64 * s64, tol) <= 1.0
    exact, bound = exact_sym_poly(a, NS_B, NS_C, NS_A)
    assert _bounds_error(K.sym_poly(a, NS_B, NS_C, NS_A, scale), exact * s64, bound * s64, tol) <= 1.0

    y = _random(shape, dtype, seed=5)
    cross = K.sym_cross(x, y)
    assert cross.shape == (batch, m, m) and cross.dtype == dtype and torch.equal(cross, cross.mT)
    assert _bounds_error(cross, *exact_sym_cross(x, y), tol) <= 1.0


def test_aol_scaling_bounds_singular_values():
    """The point of AOL: σ_max(diag(s)·X) ≤ 1 (Gershgorin on diag(s)·A·diag(s)), and the scaled Gram
    matrix handed to the first NS step is diag(s)·XXᵀ·diag(s) of that X (float64 reference)."""
    from fpolar.polar.newton_schulz import TORCH_OPS, aol_precondition

    x = _random((4, 24, 80), torch.float32, seed=5) * 37.0
    x_scaled, a_scaled = aol_precondition(x, AOL_EPS, TORCH_OPS)
    assert torch.linalg.matrix_norm(x_scaled.double(), ord=2).max().item() <= 1.0 + 1e-6
    x64 = x.double()
    s = ((x64 @ x64.mT).abs().sum(-1) + AOL_EPS).rsqrt()
    torch.testing.assert_close(x_scaled.double(), s[..., None] * x64, rtol=1e-5, atol=0)
    xs64 = s[..., None] * x64
    torch.testing.assert_close(a_scaled.double(), xs64 @ xs64.mT, rtol=1e-5, atol=1e-6)


def test_cpu_ops_accept_non_contiguous_inputs():
    x = _random((3, 40, 24), torch.float32, seed=6).mT  # (3, 24, 40), column-major
    a = _strided(_random_symmetric(3, 24, torch.float32, seed=7))
    assert not x.is_contiguous() and not a.is_contiguous()
    torch.testing.assert_close(K.sym_gram(x), K.sym_gram(x.contiguous()))
    torch.testing.assert_close(K.sym_poly(a, NS_B, NS_C), K.sym_poly(a.contiguous(), NS_B, NS_C))
    torch.testing.assert_close(K.ns_apply(x, a, NS_A), K.ns_apply(x.contiguous(), a.contiguous(), NS_A))


# ------------------------------- Triton interpreter (subprocess) -------------------------------


@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    return run_interpreted_file(__file__)


@pytest.mark.parametrize("case", _interpreter_cases())
def test_triton_kernel_under_interpreter(interpreter_results, case):
    assert case in interpreter_results, interpreter_results["__stderr__"]
    record = interpreter_results[case]
    assert record["ok"], record


def test_interpreter_subprocess_exit_status(interpreter_results):
    assert interpreter_results["__returncode__"] == 0, interpreter_results["__stderr__"]


# ------------------------------------- torch.compile -------------------------------------------


class _GraphRecorder:
    """A torch.compile backend that keeps the Dynamo graph and the post-AOT (aten) graph."""

    def __init__(self) -> None:
        self.dynamo_graphs: list[torch.fx.Graph] = []
        self.aten_graphs: list[torch.fx.Graph] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        from torch._dynamo.backends.common import aot_autograd

        self.dynamo_graphs.append(gm.graph)

        def keep_aten(aten_gm: torch.fx.GraphModule, _inputs):
            self.aten_graphs.append(aten_gm.graph)
            return aten_gm.forward

        return aot_autograd(fw_compiler=keep_aten)(gm, example_inputs)


def _op_nodes(graph: torch.fx.Graph, op_name: str) -> list[torch.fx.Node]:
    return [n for n in graph.nodes if n.op == "call_function" and f"fpolar.{op_name}" in str(n.target)]


COMPILE_CASES = {
    "sym_gram": lambda x, a, bm: K.sym_gram(x) * 2.0,
    "sym_poly": lambda x, a, bm: K.sym_poly(a, NS_B, NS_C) + 1.0,
    "ns_apply": lambda x, a, bm: K.ns_apply(x, bm, NS_A) - 1.0,
    "sym_cross": lambda x, a, bm: K.sym_cross(a, bm) * 3.0,
}


@pytest.mark.parametrize("op_name", sorted(COMPILE_CASES))
def test_op_is_one_node_in_compiled_graph(op_name):
    torch._dynamo.reset()
    x = _random((3, 9, 13), torch.float32, seed=8)
    a = _random_symmetric(3, 9, torch.float32, seed=9)
    bm = K.sym_poly_reference(a, NS_B, NS_C)
    fn = COMPILE_CASES[op_name]
    recorder = _GraphRecorder()
    compiled = torch.compile(fn, fullgraph=True, backend=recorder)  # fullgraph: a break raises
    torch.testing.assert_close(compiled(x, a, bm), fn(x, a, bm))
    assert len(recorder.dynamo_graphs) == 1
    assert len(_op_nodes(recorder.dynamo_graphs[0], op_name)) == 1
    assert len(recorder.aten_graphs) == 1
    assert len(_op_nodes(recorder.aten_graphs[0], op_name)) == 1


# ---------------------------------------- validation --------------------------------------------


def test_rejects_wrong_number_of_dims():
    with pytest.raises(ValueError, match=r"x must be a batch of matrices with 3 dims"):
        K.sym_gram(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"a must be a batch of matrices with 3 dims"):
        K.sym_poly(torch.randn(2, 2, 4, 4), NS_B, NS_C)
    with pytest.raises(ValueError, match=r"bm must be a batch of matrices"):
        K.ns_apply(torch.randn(2, 4, 6), torch.randn(4, 4), NS_A)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.complex64], ids=str)
def test_rejects_unsupported_dtype(dtype):
    bad = torch.ones(2, 3, 3, dtype=dtype)
    good = torch.randn(2, 3, 3)
    with pytest.raises(TypeError, match=rf"x has dtype {dtype}"):
        K.sym_gram(bad)
    with pytest.raises(TypeError, match=rf"a has dtype {dtype}"):
        K.sym_poly(bad, NS_B, NS_C)
    with pytest.raises(TypeError, match=rf"bm has dtype {dtype}"):
        K.ns_apply(good, bad, NS_A)


def test_rejects_mismatched_x_and_bm():
    x = torch.randn(2, 4, 6)
    with pytest.raises(ValueError, match=r"bm must have shape \(B, m, m\) = \(2, 4, 4\).*got \(2, 6, 6\)"):
        K.ns_apply(x, torch.randn(2, 6, 6), NS_A)
    with pytest.raises(ValueError, match=r"got \(3, 4, 4\)"):
        K.ns_apply(x, torch.randn(3, 4, 4), NS_A)
    with pytest.raises(TypeError, match=r"bm has dtype torch.bfloat16 but x has dtype torch.float32"):
        K.ns_apply(x, torch.randn(2, 4, 4, dtype=torch.bfloat16), NS_A)


def test_sym_cross_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match=r"b must have the shape of a \(2, 3, 5\), got \(2, 3, 4\)"):
        K.sym_cross(torch.randn(2, 3, 5), torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match=r"b has dtype torch.bfloat16 but a has dtype torch.float32"):
        K.sym_cross(torch.randn(2, 3, 5), torch.randn(2, 3, 5, dtype=torch.bfloat16))


def test_rejects_bad_scalars_and_non_square_a():
    with pytest.raises(ValueError, match=r"a must be a batch of square matrices"):
        K.sym_poly(torch.randn(2, 3, 4), NS_B, NS_C)
    with pytest.raises(ValueError, match=r"c must be finite, got nan"):
        K.sym_poly(torch.randn(2, 3, 3), NS_B, math.nan)
    with pytest.raises(ValueError, match=r"a must be finite, got inf"):
        K.ns_apply(torch.randn(2, 3, 5), torch.randn(2, 3, 3), math.inf)


def test_rejects_bad_per_matrix_scale():
    x, a = torch.randn(2, 3, 5), torch.randn(2, 3, 3)
    with pytest.raises(ValueError, match=r"scale must be a contiguous float32 tensor of shape \(2,\), one factor per matrix; got torch.float32 of shape \(3,\)"):
        K.sym_gram(x, torch.ones(3))
    with pytest.raises(ValueError, match=r"scale must be a contiguous float32 tensor of shape \(2,\).*got torch.float64 of shape \(2,\)"):
        K.sym_poly(a, NS_B, NS_C, NS_A, torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"not contiguous"):
        K.sym_gram(x, torch.ones(4)[::2])
    with pytest.raises(TypeError, match=r"scale must be a torch.Tensor or None, got float"):
        K.launch_sym_gram(x, torch.empty(2, 3, 3), scale=2.0)


def test_fake_tensor_path_validates_too():
    """Errors surface while tracing (fake tensors), not only when the op runs."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 4, 6)
        with pytest.raises(ValueError, match=r"bm must have shape"):
            K.ns_apply(x, torch.empty(2, 6, 6), NS_A)
        out = K.sym_gram(x)
        assert out.shape == (2, 4, 4)


def test_launcher_refuses_int32_overflowing_matrix():
    pytest.importorskip("triton")
    # One matrix whose second row starts 2**31 elements in: offsets would wrap in int32. Meta
    # tensors carry the strides without the memory; the check runs before any launch.
    huge = torch.empty_strided((1, 2, 2), (4, 2**31, 1), device="meta")
    with pytest.raises(ValueError, match=r"x has a single matrix of shape \(2, 2\) spanning"):
        K.launch_sym_gram(huge, torch.empty(1, 2, 2, device="meta"))


def test_tile_heuristic():
    small = K.symmetric_tile_config(40, torch.bfloat16)
    large = K.symmetric_tile_config(768, torch.bfloat16)
    assert (small.kwargs["BLOCK"], small.num_warps, small.num_stages) == (64, 4, 4)
    assert (large.kwargs["BLOCK"], large.num_warps, large.num_stages) == (128, 8, 3)
    assert large.kwargs["BLOCK_K"] == 64
    assert K.symmetric_tile_config(768, torch.float32).kwargs["BLOCK_K"] == 32
    # through TMA the 128-wide tile takes 4 warps (measured faster there), the rest unchanged
    tma = K.symmetric_tile_config(768, torch.bfloat16, tma=True)
    assert (tma.kwargs["BLOCK"], tma.kwargs["BLOCK_K"], tma.num_warps, tma.num_stages) == (128, 64, 4, 3)
    assert K.symmetric_tile_config(40, torch.bfloat16, tma=True).num_warps == 4
    wide = K.matmul_tile_config(768, 3072, torch.bfloat16)
    assert (wide.kwargs["BLOCK_M"], wide.kwargs["BLOCK_N"], wide.num_warps) == (128, 128, 8)
    assert K.matmul_tile_config(1, 4096, torch.bfloat16).kwargs["BLOCK_M"] == 64
