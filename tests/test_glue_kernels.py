"""The fused glue ops (``fpolar::momentum_polar_input``, ``fpolar::scaled_update_``) on CPU.

- the Triton kernels under the interpreter (TRITON_INTERPRET=1 in a subprocess: this file run as a
  script) against the torch twins and float64 references: wide, tall and square groups, grads as 2-D
  and 3-D tensors, several tiles per matrix, Nesterov on/off, fp32 and bf16, the skip flag False and
  True (NaN grads: momentum and params bitwise unchanged, X zero);
- the CPU ops (the twins) against float64, opcheck, one node each in a fullgraph compiled graph;
- input checks that name the bad value, raised before anything is written;
- the step wired to the fused glue (twins on CPU) equals the torch glue, skip included;
- the dispatch: fused on CUDA for "auto"/"triton", torch for "torch", fp16 iteration and CPU.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import torch

if __name__ == "__main__":  # the interpreter subprocess runs this file: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fpolar.kernels as K  # noqa: E402
from triton_interpreter import interpreter_main, run_interpreted_file  # noqa: E402

SAFETY, EPS = 1.02, 1e-7
# X against float64: two roundings to bf16 (V, then V·scale); the interpreter rounds toward zero
# (one ulp, 2⁻⁷ relative, each), the GPU to nearest (half that). fp32: a few ulps of fp32 work.
X_TOL = {torch.bfloat16: 2.0**-6 + 1e-5, torch.float32: 1e-5}
# M and W: one rounding to their dtype (fp32 work in between), relative to |terms| (the dot-product bound).
STATE_TOL = {torch.float32: 1e-6, torch.bfloat16: 2.0**-7 + 1e-6}


def _random(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)


def _grads(batch: int, m: int, n: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    """B matrices as a mix of 2-D grads and one 3-D grad of 2 (offsets inside the group)."""
    out, left, k = [], batch, 0
    while left:
        if left >= 2 and k == 0:
            out.append(_random((2, m, n), dtype, seed + k))
            left -= 2
        else:
            out.append(_random((m, n), dtype, seed + k))
            left -= 1
        k += 1
    return out


def exact_polar_input(momentum, grads, beta, nesterov, found):
    """float64: M', X = V / (safety·‖V‖ + eps·max|V|) (tall transposed), scale."""
    _, m, n = momentum.shape
    m64 = momentum.double()
    g64 = torch.cat([g.reshape(-1, m, n) for g in grads]).to(momentum.dtype).double()
    new = beta * m64 + (1 - beta) * g64
    v = (beta * new + (1 - beta) * g64) if nesterov else new
    if found:
        new, v = m64, torch.zeros_like(v)
    bound = m64.abs() + g64.abs()
    if m > n:
        v = v.mT
    peak = v.abs().amax(dim=(-2, -1))
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    norm = (v / peak[:, None, None]).square().sum(dim=(-2, -1)).sqrt()
    scale = 1.0 / (peak * (SAFETY * norm + EPS))
    return new, bound, v * scale[:, None, None], scale


def _rel_err(out: torch.Tensor, exact: torch.Tensor, bound: torch.Tensor, tol: float) -> float:
    err = (out.double() - exact).abs() / (tol * bound + 1e-30)
    if torch.isnan(err).any():
        return float("inf")
    return err.max().item() if err.numel() else 0.0


def check_polar_input(case: dict, run) -> dict:
    """Runs ``run(momentum, grads, found) -> (x, scale)`` on a fresh case; errors against float64 (≤ 1
    passes) and, for the skip, bitwise checks."""
    batch, m, n = case["shape"]
    dtype, polar_dtype = case["dtype"], case["polar_dtype"]
    seed = case["seed"]
    momentum = _random((batch, m, n), dtype, seed)
    grads = _grads(batch, m, n, dtype, seed + 100)
    found = None
    if case["found"] is not None:
        found = torch.tensor(case["found"])
        if case["found"]:
            grads[-1].view(-1)[3] = float("nan")
    before = momentum.clone()
    new, bound, x64, scale64 = exact_polar_input(momentum, grads, case["beta"], case["nesterov"], bool(case["found"]))
    x, scale = run(momentum, grads, found)
    want = (batch, min(m, n), max(m, n))
    result = {"shape_ok": tuple(x.shape) == want and x.dtype == polar_dtype and x.is_contiguous()}
    if case["found"]:
        result["momentum_bitwise"] = bool(torch.equal(momentum.view(torch.uint8 if dtype != torch.float32 else torch.int32), before.view(torch.uint8 if dtype != torch.float32 else torch.int32)))
        result["x_zero"] = bool((x == 0).all())
        result["ok"] = result["shape_ok"] and result["momentum_bitwise"] and result["x_zero"]
        return result
    result["m_err"] = _rel_err(momentum, new, bound, STATE_TOL[dtype])
    # 16-bit momentum: M and the Nesterov blend are rounded to it (as the torch glue does) before X.
    low = dtype != torch.float32
    x_tol = max(X_TOL[polar_dtype], 2.0**-6 if low else 0.0)
    result["x_err"] = _rel_err(x, x64, x64.abs().amax(dim=(-2, -1), keepdim=True), x_tol)
    result["scale_err"] = _rel_err(scale, scale64, scale64.abs(), 2.0**-7 if low else 1e-5)
    result["ok"] = result["shape_ok"] and max(result["m_err"], result["x_err"], result["scale_err"]) <= 1.0
    return result


def check_scaled_update(case: dict, run) -> dict:
    """Runs ``run(params, o, step, decay, found)`` on fresh params; error against float64, or bitwise."""
    batch, m, n = case["shape"]
    dtype, seed = case["dtype"], case["seed"]
    params = _grads(batch, m, n, dtype, seed)
    wide = (batch, min(m, n), max(m, n))
    o = _random(wide, torch.bfloat16, seed + 7)
    step = (torch.rand(batch, generator=torch.Generator().manual_seed(seed)) * 0.1) if case["per_matrix"] else torch.tensor(0.03)
    decay = torch.tensor(0.995)
    found = None if case["found"] is None else torch.tensor(case["found"])
    before = [p.clone() for p in params]
    o_param = o.mT if m > n else o
    s64 = step.double().reshape(-1)
    s64 = s64[:, None, None] if s64.numel() > 1 else s64.reshape(())
    w64 = torch.cat([p.reshape(-1, m, n) for p in params]).double()
    exact = 0.995 * w64 - s64 * o_param.double()
    bound = 0.995 * w64.abs() + (s64 * o_param.double()).abs()
    run(params, o, step, decay, found)
    if case["found"]:
        same = all(torch.equal(a.view(torch.int16 if dtype != torch.float32 else torch.int32), b.view(torch.int16 if dtype != torch.float32 else torch.int32)) for a, b in zip(params, before))
        return {"params_bitwise": same, "ok": same}
    out = torch.cat([p.reshape(-1, m, n) for p in params])
    err = _rel_err(out, exact, bound, STATE_TOL[dtype])
    return {"w_err": err, "ok": err <= 1.0}


# --------------------------------------------------------------------------------------------------
# Triton kernels under the interpreter. Run in a subprocess (this file as a script).
# --------------------------------------------------------------------------------------------------

# wide, tall, square; with 16-wide tiles each has several tiles per matrix (partial edge tiles too)
INTERPRETER_SHAPES = [(3, 20, 37), (3, 40, 17), (1, 24, 24)]


def _interpreter_cases() -> list[str]:
    cases = []
    for shape in INTERPRETER_SHAPES:
        s = "x".join(map(str, shape))
        for nesterov in (0, 1):
            for found in ("none", "false", "true"):
                cases.append(f"input-{s}-float32-bfloat16-nest{nesterov}-found{found}")
        cases.append(f"update-{s}-float32-per1-foundnone")
        cases.append(f"update-{s}-float32-per0-foundfalse")
        cases.append(f"update-{s}-float32-per1-foundtrue")
    # bf16 momentum/params, fp32 iteration dtype
    cases += ["input-2x20x37-bfloat16-float32-nest1-foundnone", "update-2x40x17-bfloat16-per1-foundnone"]
    cases += ["frobenius_scale-2500_tiles"]  # more tiles than one chunk of the combine kernel
    cases += ["frobenius_scale-deferred"]  # defer_scale: in range left and owed, out of range applied
    # The cases above run one launch per group (the offsets table, required); these one launch per
    # tensor: forced ("percall"), or chosen because the list's strides differ ("mixed").
    cases += ["input-3x40x17-float32-bfloat16-nest1-foundfalse-percall", "input-3x20x37-float32-bfloat16-nest0-foundnone-mixed",
              "update-3x40x17-float32-per1-foundfalse-percall", "update-3x20x37-float32-per0-foundnone-mixed"]
    return cases


class _PoisonedEmpty:
    """Inside the block, ``torch.empty`` of a floating dtype returns NaNs: a buffer a launcher allocates
    and a kernel leaves partly unwritten shows as NaN downstream."""

    def __enter__(self):
        real = self.real = torch.empty

        def empty(*args, **kwargs):
            t = real(*args, **kwargs)
            return t.fill_(float("nan")) if t.is_floating_point() else t

        torch.empty = empty
        return self

    def __exit__(self, *exc):
        torch.empty = self.real


def _parse(case: str) -> dict:
    parts = case.split("-")
    launch = parts.pop() if parts[-1] in ("percall", "mixed") else "single"
    shape = tuple(int(v) for v in parts[1].split("x"))
    out = {"op": parts[0], "shape": shape, "dtype": getattr(torch, parts[2]), "seed": zlib.crc32(case.encode()) % 10_000}
    out["launch"] = launch
    found = parts[-1].removeprefix("found")
    out["found"] = None if found == "none" else found == "true"
    if parts[0] == "input":
        out.update(polar_dtype=getattr(torch, parts[3]), nesterov=parts[4] == "nest1", beta=0.9)
    else:
        out["per_matrix"] = parts[3] == "per1"
    return out


def _run_deferred_scale_case(case_name: str) -> dict:
    """The scale pass with ``defer_scale`` on four matrices: an ordinary one and a zero one (scales
    in range: X left bit for bit, deferred = scale), one whose ‖V‖ ≈ 1e12 and one whose ‖V‖ ≈ 1e-12
    (out of range: scaled, deferred = 1). Outputs are poisoned: every entry must be written."""
    from fpolar.kernels.momentum_polar_input import (
        DEFER_MAX_SCALE,
        DEFER_MIN_SCALE,
        frobenius_scale_from_tiles,
        launch_scale_polar_input,
    )

    gen = torch.Generator().manual_seed(7)
    tmax, tsum = torch.rand(4, 300, generator=gen), torch.rand(4, 300, generator=gen) * 10
    tmax[1], tsum[1] = 0, 0
    tmax[2] *= 1e12
    tmax[3] *= 1e-12
    v = _random((4, 40, 75), torch.bfloat16, 8)
    x = v.clone()
    with _PoisonedEmpty():
        got, deferred = launch_scale_polar_input(x, tmax, tsum, SAFETY, EPS, block=64, part_len=700, defer_scale=True)
    want = frobenius_scale_from_tiles(tmax, tsum, SAFETY, EPS)
    in_range = (want >= DEFER_MIN_SCALE) & (want <= DEFER_MAX_SCALE)
    result = {
        "case": case_name,
        "in_range": in_range.tolist(),
        "scale_ok": bool(torch.allclose(got, want, rtol=1e-6, atol=0)),
        "deferred_ok": bool(torch.equal(deferred, torch.where(in_range, got, torch.ones_like(got)))),
        "left_bitwise": bool(torch.equal(x[:2].view(torch.int16), v[:2].view(torch.int16))),
    }
    x_want = v[2:].mul(want[2:, None, None])
    result["applied_ok"] = bool(((x[2:].float() - x_want.float()).abs() <= 2.0**-7 * x_want.float().abs()).all())
    result["ok"] = in_range.tolist() == [True, True, False, False] and all(
        result[k] for k in ("scale_ok", "deferred_ok", "left_bitwise", "applied_ok")
    )
    return result


def _run_interpreted(case_name: str) -> dict:
    import triton

    from fpolar.kernels._glue_common import matrix_offsets, matrix_view
    from fpolar.kernels.momentum_polar_input import frobenius_scale_from_tiles, launch_scale_polar_input

    if case_name == "frobenius_scale-deferred":
        return _run_deferred_scale_case(case_name)
    if case_name.startswith("frobenius_scale"):
        gen = torch.Generator().manual_seed(5)
        tmax, tsum = torch.rand(3, 2500, generator=gen), torch.rand(3, 2500, generator=gen) * 100
        tmax[1] = 0  # a zero matrix: peak 1, scale 1/eps
        tsum[1] = 0
        # X of 3 × 40×75 (several parts of the scale pass per matrix with 2500 tiles' statistics)
        v = _random((3, 40, 75), torch.bfloat16, 6)
        x = v.clone()
        got, _ = launch_scale_polar_input(x, tmax, tsum, SAFETY, EPS, block=64, part_len=700)  # 5 parts, the last partial
        want = frobenius_scale_from_tiles(tmax, tsum, SAFETY, EPS)
        x_want = v.mul(want[:, None, None])  # torch's rounding of V·scale to bf16 (the interpreter: toward 0)
        x_ok = bool(((x.float() - x_want.float()).abs() <= 2.0**-7 * x_want.float().abs()).all())
        return {"case": case_name, "ok": bool(torch.allclose(got, want, rtol=1e-6, atol=0)) and x_ok,
                "got": got.tolist(), "want": want.tolist(), "x_ok": x_ok}
    case = _parse(case_name)
    config = triton.Config({"BLOCK_R": 16, "BLOCK_C": 16}, num_warps=4, num_stages=1)
    single = {"single": True, "percall": False, "mixed": None}[case["launch"]]

    def restride(tensors):
        """"mixed": the first tensor with column-major matrices (same values), so the list's strides
        differ and the launcher must choose one launch per tensor."""
        if case["launch"] != "mixed":
            return tensors
        out = [tensors[0].mT.contiguous().mT] + list(tensors[1:])
        _, m, n = case["shape"]
        if matrix_offsets([matrix_view(t, m, n, writable=False) for t in out]) is not None:
            raise AssertionError("mixed strides got an offsets table")
        return out

    if case["op"] == "input":

        def kernel(momentum, grads, found):
            b, m, n = momentum.shape
            x = torch.full((b, min(m, n), max(m, n)), float("nan"), dtype=case["polar_dtype"])  # poisoned
            with _PoisonedEmpty():  # every tile statistic must be written by its program
                tmax, tsum = K.launch_momentum_polar_input(
                    momentum, restride(grads), x, case["beta"], case["nesterov"], found, config, single_launch=single
                )
            finite = bool(torch.isfinite(momentum).all()) and all(bool(torch.isfinite(g).all()) for g in grads)
            if finite and (torch.isnan(tmax).any() or torch.isnan(tsum).any()):
                raise AssertionError("a tile statistic was left unwritten")
            v = x.clone()
            scale, _ = launch_scale_polar_input(x, tmax, tsum, SAFETY, EPS, block=64, part_len=256)  # several parts
            # the Triton combine of the tile statistics against its torch twin, and the scale pass
            # against torch's multiply of the same V by it
            twin_scale = frobenius_scale_from_tiles(tmax, tsum, SAFETY, EPS)
            if not torch.allclose(scale, twin_scale, rtol=1e-6, atol=0):
                raise AssertionError(f"launch_scale_polar_input {scale} != frobenius_scale_from_tiles {twin_scale}")
            x_twin = v.mul_(scale[:, None, None])
            if not bool((x.float() - x_twin.float()).abs().le(2.0**-7 * x_twin.float().abs()).all()):
                raise AssertionError("the scale pass differs from V·scale beyond one rounding")
            return x, scale

        def twin(momentum, grads, found):
            return K.momentum_polar_input_reference(
                momentum, grads, case["beta"], case["nesterov"], case["polar_dtype"], SAFETY, EPS, found
            )[:2]

        result = check_polar_input(case, kernel)
        twin_result = check_polar_input(case, twin)
        # the kernel against the twin, on the same fresh inputs
        mom = _random(case["shape"], case["dtype"], 1)
        grads = _grads(*case["shape"], case["dtype"], 2)
        found = None if case["found"] is None else torch.tensor(case["found"])
        m1, m2 = mom.clone(), mom.clone()
        x1, s1 = kernel(m1, grads, found)
        x2, s2 = twin(m2, grads, found)
        result["twin_m_maxdiff"] = (m1.float() - m2.float()).abs().max().item()
        result["twin_x_maxdiff"] = (x1.float() - x2.float()).abs().max().item()
        low = case["dtype"] != torch.float32
        x_tol = max(X_TOL[case["polar_dtype"]], 2.0**-6 if low else 0.0)
        twin_ok = (
            result["twin_m_maxdiff"] <= STATE_TOL[case["dtype"]] * (1 + m2.float().abs().max().item())
            and result["twin_x_maxdiff"] <= x_tol * x2.float().abs().max().item() + 1e-30
        )
        result["ok"] = result["ok"] and twin_result["ok"] and twin_ok
    else:

        def kernel(params, o, step, decay, found):
            written = restride(params)
            K.launch_scaled_update(written, o, step, decay, found, config, single_launch=single)
            params[0].copy_(written[0])  # "mixed" wrote a column-major copy of the first

        result = check_scaled_update(case, kernel)
        twin_result = check_scaled_update(case, K.scaled_update_reference)
        result["ok"] = result["ok"] and twin_result["ok"]
    result["case"] = case_name
    return result


if __name__ == "__main__":
    sys.exit(interpreter_main(_interpreter_cases(), _run_interpreted))


# --------------------------------------------------------------------------------------------------
# pytest part
# --------------------------------------------------------------------------------------------------

import pytest  # noqa: E402

from fpolar import PolarGradHParams, init_state, polargrad_step  # noqa: E402
from fpolar.polar import PolarSpec  # noqa: E402


@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    return run_interpreted_file(__file__)


@pytest.mark.parametrize("case", _interpreter_cases())
def test_triton_kernel_under_interpreter(interpreter_results, case):
    assert case in interpreter_results, interpreter_results["__stderr__"]
    assert interpreter_results[case]["ok"], interpreter_results[case]


def test_interpreter_subprocess_exit_status(interpreter_results):
    assert interpreter_results["__returncode__"] == 0, interpreter_results["__stderr__"]


# ------------------------------------ the CPU ops (twins) ---------------------------------------

CPU_CASES = ["input-3x20x37-float32-bfloat16-nest1-foundfalse", "input-3x40x17-float32-float32-nest0-foundnone",
             "input-2x24x24-bfloat16-bfloat16-nest1-foundtrue", "input-3x40x17-float32-bfloat16-nest0-foundtrue",
             "update-3x20x37-float32-per1-foundnone", "update-3x40x17-bfloat16-per0-foundfalse",
             "update-3x40x17-float32-per1-foundtrue"]


@pytest.mark.parametrize("name", CPU_CASES)
def test_cpu_op_matches_float64(name):
    case = _parse(name)
    if case["op"] == "input":
        def run(momentum, grads, found):
            return K.momentum_polar_input(momentum, grads, case["beta"], case["nesterov"], case["polar_dtype"], SAFETY, EPS, found)[:2]
        result = check_polar_input(case, run)
    else:
        result = check_scaled_update(case, K.scaled_update_)
    assert result["ok"], result


def test_opcheck():
    mom = _random((3, 20, 12), torch.float32, 1)
    grads = _grads(3, 20, 12, torch.float32, 2)
    torch.library.opcheck(K.momentum_polar_input, (mom, grads, 0.9, True, torch.bfloat16, SAFETY, EPS, torch.tensor(False)))
    torch.library.opcheck(K.momentum_polar_input, (mom, grads, 0.9, False, torch.float32, SAFETY, EPS, None))
    params = _grads(3, 20, 12, torch.float32, 3)
    o = _random((3, 12, 20), torch.bfloat16, 4)
    torch.library.opcheck(K.scaled_update_, (params, o, torch.rand(3), torch.tensor(0.99), torch.tensor(False)))
    torch.library.opcheck(K.scaled_update_, (params, o, torch.tensor(0.1), torch.tensor(1.0), None))


def test_ops_are_one_node_each_in_a_fullgraph_compile():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    mom = _random((3, 20, 12), torch.float32, 1)
    grads = _grads(3, 20, 12, torch.float32, 2)
    params = _grads(3, 20, 12, torch.float32, 3)

    def fn(mom, grads, params, found):
        x, scale, _ = torch.ops.fpolar.momentum_polar_input(mom, grads, 0.9, True, torch.bfloat16, SAFETY, EPS, found)
        torch.ops.fpolar.scaled_update_(params, x, scale * 0.01, torch.ones(()), found)
        return x

    counter = CompileCounterWithBackend("aot_eager")
    found = torch.tensor(False)
    mom_e, params_e = mom.clone(), [p.clone() for p in params]
    compiled = torch.compile(fn, fullgraph=True, backend=counter)
    x_c = compiled(mom, grads, params, found)
    x_e = fn(mom_e, grads, params_e, found)
    assert torch.equal(x_c, x_e) and torch.equal(mom, mom_e) and all(torch.equal(a, b) for a, b in zip(params, params_e))
    assert counter.frame_count == 1
    nodes = [str(n.target) for n in counter.graphs[0].graph.nodes if n.op == "call_function"]
    assert sum("momentum_polar_input" in t for t in nodes) == 1
    assert sum("scaled_update_" in t for t in nodes) == 1


# ------------------------------- the offsets table (one launch) ---------------------------------


def test_matrix_offsets_address_every_matrix_of_the_list():
    from fpolar.kernels._glue_common import matrix_offsets

    stack = _random((4, 8, 6), torch.float32, 1)
    views = [_random((2, 8, 6), torch.float32, 2), stack[1:3], _random((1, 8, 6), torch.float32, 3), stack[3:]]
    table = matrix_offsets(views)
    assert table is not None and table.base is views[0] and table.offsets.dtype == torch.int64
    assert (table.stride_r, table.stride_c) == (6, 1)
    want = [v.data_ptr() + j * v.stride(0) * 4 for v in views for j in range(v.shape[0])]
    assert [views[0].data_ptr() + 4 * int(o) for o in table.offsets] == want
    # offsets of 16-element multiples only where every matrix lies so (stack[1:3] starts 48 elements in)
    assert table.aligned == all((a - want[0]) % 64 == 0 for a in want)
    assert matrix_offsets([stack[:1], _random((1, 8, 12), torch.float32, 4)[:, :, :6]]) is None  # row strides 6, 12
    assert matrix_offsets([stack[:1], stack[1:].to(torch.bfloat16)]) is None  # mixed dtypes
    assert matrix_offsets([stack[:1], stack[1:2].mT.contiguous().mT]) is None  # column-major beside row-major
    small = torch.zeros(4, 5, 3)
    packed = matrix_offsets([small[i : i + 1] for i in range(4)])  # 15 elements apart: not 16-aligned
    assert packed is not None and not packed.aligned and packed.offsets.tolist() == [0, 15, 30, 45]
    wide = torch.zeros(3, 16, 32)
    assert matrix_offsets([wide[i : i + 1] for i in range(3)]).aligned


def test_matrix_offsets_cached_and_found_again_while_a_graph_is_captured(monkeypatch):
    """Eagerly a table is built once per list of addresses and reused; while a CUDA graph is captured
    (simulated) an unseen list gets None (the launchers fall back to one launch per tensor) and a seen
    one its table, kept from then on whatever else is built."""
    from fpolar.kernels import _glue_common as G

    monkeypatch.setattr(G, "_TABLES", G.OrderedDict())
    monkeypatch.setattr(G, "_CAPTURED_TABLES", {})
    views = [_random((1, 4, 4), torch.float32, k) for k in range(3)]
    first = G.matrix_offsets(views)
    assert G.matrix_offsets(views).offsets is first.offsets  # no second copy
    unseen = [_random((1, 4, 4), torch.float32, 10 + k) for k in range(2)]
    monkeypatch.setattr(G, "capturing", lambda device: True)
    assert G.matrix_offsets(unseen) is None
    captured = G.matrix_offsets(views)
    assert captured is not None and captured.offsets is first.offsets
    monkeypatch.setattr(G, "capturing", lambda device: False)
    many = [_random((2, 4, 4), torch.float32, 20 + k) for k in range(G._TABLES_KEPT + 5)]
    for t in many:
        G.matrix_offsets([t, views[0]])
    assert len(G._TABLES) == G._TABLES_KEPT  # bounded
    G.clear_matrix_offsets()
    assert G.matrix_offsets(views).offsets is first.offsets  # the captured graph's table is never dropped


def test_tables_are_freed_at_exit_before_their_pools(monkeypatch):
    """The exit hook frees every table, eager and captured, so none outlives the tables' MemPool when
    the interpreter clears the modules; the pools themselves are left to the interpreter."""
    from fpolar.kernels import _glue_common as G

    monkeypatch.setattr(G, "_TABLES", G.OrderedDict())
    monkeypatch.setattr(G, "_CAPTURED_TABLES", {})
    pools = {"cuda:0": object()}
    monkeypatch.setattr(G, "_TABLE_POOLS", pools)
    views = [_random((1, 4, 4), torch.float32, k) for k in range(3)]
    G.matrix_offsets(views)
    monkeypatch.setattr(G, "capturing", lambda device: True)
    G.matrix_offsets(views)  # now a captured graph's table
    G.matrix_offsets([_random((1, 4, 4), torch.float32, 9)])
    monkeypatch.setattr(G, "capturing", lambda device: False)
    G.matrix_offsets([_random((2, 4, 4), torch.float32, 7)])
    assert G._CAPTURED_TABLES and G._TABLES
    G._free_tables_before_their_pools()
    assert not G._CAPTURED_TABLES and not G._TABLES and G._TABLE_POOLS is pools and len(pools) == 1


def test_elementwise_tile_is_32_by_64_narrowed_for_small_matrices():
    pytest.importorskip("triton")
    from fpolar.kernels._glue_common import elementwise_tile_config

    for (rows, cols), want in {(768, 3072): (32, 64), (3072, 768): (32, 64), (20, 37): (32, 64), (5, 20): (16, 32)}.items():
        config = elementwise_tile_config(rows, cols)
        assert (config.kwargs["BLOCK_R"], config.kwargs["BLOCK_C"], config.num_warps) == (*want, 4)


# ---------------------------------------- validation --------------------------------------------


def test_momentum_polar_input_rejects_bad_inputs_before_writing():
    mom = _random((2, 8, 6), torch.float32, 1)
    before = mom.clone()
    good = [_random((8, 6), torch.float32, 2), _random((8, 6), torch.float32, 3)]
    call = lambda **kw: K.momentum_polar_input(  # noqa: E731
        kw.get("mom", mom), kw.get("grads", good), kw.get("beta", 0.9), True, kw.get("pd", torch.bfloat16),
        SAFETY, kw.get("eps", EPS), kw.get("found"),
    )
    with pytest.raises(ValueError, match=r"grads\[1\] of shape \(6, 8\) holds 6×8 matrices, expected 8×6"):
        call(grads=[good[0], good[1].mT])
    with pytest.raises(ValueError, match=r"grads hold 3 matrices in all, expected 2"):
        call(grads=good + [good[0]])
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\), got 1.5"):
        call(beta=1.5)
    with pytest.raises(TypeError, match=r"polar_dtype must be torch.bfloat16 or torch.float32, got torch.float16"):
        call(pd=torch.float16)
    with pytest.raises(ValueError, match=r"eps must be > 0, got 0.0"):
        call(eps=0.0)
    with pytest.raises(ValueError, match=r"found must be a one-element bool tensor, got torch.float32"):
        call(found=torch.tensor(0.0))
    with pytest.raises(ValueError, match=r"momentum must be contiguous"):
        call(mom=_random((2, 6, 8), torch.float32, 4).mT)
    assert torch.equal(mom, before)


def test_scaled_update_rejects_bad_inputs_before_writing():
    params = [_random((8, 6), torch.float32, 2), _random((8, 6), torch.float32, 3)]
    before = [p.clone() for p in params]
    o = _random((2, 6, 8), torch.bfloat16, 4)
    with pytest.raises(ValueError, match=r"o holds 5×8 matrices, expected 8×6 or its transpose"):
        K.scaled_update_(params, _random((2, 5, 8), torch.bfloat16, 1), torch.tensor(0.1), torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"step must have 1 or 2 elements, got shape \(3,\)"):
        K.scaled_update_(params, o, torch.ones(3), torch.tensor(1.0))
    conv_like = torch.zeros(8, 3, 2, 1).transpose(1, 2)  # one 8×6 matrix, no (1, 8, 6) view
    with pytest.raises(ValueError, match=r"params\[1\] of shape \(8, 2, 3, 1\) is written in place and must be contiguous"):
        K.scaled_update_([params[0], conv_like], o, torch.tensor(0.1), torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"params hold 1 matrices in all, expected 2"):
        K.scaled_update_(params[:1], o, torch.tensor(0.1), torch.tensor(1.0))
    assert all(torch.equal(a, b) for a, b in zip(params, before))


# ------------------------------------ the step, wired ------------------------------------------

STEP_SHAPES = [(24, 40), (24, 40), (40, 24), (2, 40, 24), (16, 16)]


def _three_steps_one_skipped(shapes, hp, ps, state, ps_fused, state_fused, nan_in: int, grad_size=lambda k: 1.0):
    """Three steps of both (params, state) pairs on the same fresh grads (times ``grad_size(k)``), the
    second with a NaN in grad ``nan_in``: the fused side's params and momentum keep their bits there."""
    for k in range(3):
        gs = [torch.randn(s) * grad_size(k) for s in shapes]
        if k == 1:
            gs[nan_in][0, 0] = float("nan")
            skipped = [p.clone() for p in ps_fused], [b.clone() for b in state_fused.buffers]
        polargrad_step(ps, gs, state, hp)
        polargrad_step(ps_fused, [g.clone() for g in gs], state_fused, hp)
        if k == 1:
            assert all(torch.equal(a, b) for a, b in zip(ps_fused, skipped[0]))
            assert all(torch.equal(a, b) for a, b in zip(state_fused.buffers, skipped[1]))


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("scale", ["nuclear", "shape"])
def test_step_on_fused_glue_equals_torch_glue(nesterov, scale):
    """The step through the fused ops (their CPU twins here) against the torch glue over 3 steps, one of
    them skipped for a NaN grad. The shape rule matches to fp32 rounding (the momentum and X bitwise,
    the apply rounded once instead of per product); nuclear reads ⟨O, X⟩
    from the normalized bf16 X, so it agrees to bf16's rounding of X averaged over the matrix."""
    torch.manual_seed(0)
    hp = PolarGradHParams(lr=0.02, momentum=0.9, nesterov=nesterov, scale=scale, weight_decay=0.1, polar_dtype=torch.bfloat16)
    ps = [torch.randn(s) for s in STEP_SHAPES]
    ps_fused = [p.clone() for p in ps]
    state, state_fused = init_state(ps, hp), init_state(ps_fused, hp)
    state_fused.polar_impls = tuple(i._replace(glue="fused") for i in state_fused.polar_impls)
    _three_steps_one_skipped(STEP_SHAPES, hp, ps, state, ps_fused, state_fused, nan_in=2)
    assert state.skipped.item() == state_fused.skipped.item() == 1
    for a, b in zip(state.buffers, state_fused.buffers):
        assert torch.equal(a, b)
    for a, b in zip(ps, ps_fused):
        if scale == "shape":
            # same X bit for bit; W ← decay·W − s·O rounded once (fused) or per product (torch):
            # a few fp32 ulps of W, against updates of lr·scale·|O| ≈ 1e-2 each step
            torch.testing.assert_close(b, a, rtol=2e-6, atol=1e-7)
        else:
            torch.testing.assert_close(b, a, rtol=0, atol=1e-3 * 0.02 * a.numel() ** 0.5)


def test_dispatch_chooses_the_fused_glue_on_cuda_only():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    auto = PolarSpec.build(kernels="auto")
    assert auto.impl_for(768, 3072, torch.float32, cuda).glue == "fused"
    assert auto.impl_for(3072, 768, torch.bfloat16, cuda).glue == "fused"
    assert PolarSpec.build(kernels="triton").impl_for(768, 768, torch.float32, cuda).glue == "fused"
    assert PolarSpec.build(kernels="torch").impl_for(768, 768, torch.float32, cuda).glue == "torch"
    assert PolarSpec.build(polar_dtype=torch.float16).impl_for(768, 768, torch.float32, cuda).glue == "torch"
    assert auto.impl_for(768, 768, torch.float64, cuda).glue == "torch"
    assert PolarSpec.build("qdwh").impl_for(768, 768, torch.float32, cuda).glue == "torch"
    assert auto.impl_for(768, 768, torch.float32, cpu).glue == "torch"


def test_tables_leave_the_cuda_graph_trees_pool_alone(monkeypatch):
    """While torch.compile's CUDA-graph trees warm up or record, this thread's allocations land in
    their pool, so a cached table must be made elsewhere: ``cudagraph_trees_pool_active`` says when,
    from the trees' manager (a stand-in here: the trees need a GPU), and never for a CPU tensor."""
    import types

    from fpolar.kernels import _glue_common as G

    class Manager:
        in_warmup = False
        in_recording = False

    manager = Manager()
    trees = types.SimpleNamespace(get_manager=lambda index, create_if_none_exists=True: manager)
    cuda = torch.device("cuda", 0)
    monkeypatch.delitem(sys.modules, "torch._inductor.cudagraph_trees", raising=False)
    assert not G.cudagraph_trees_pool_active(cuda)  # torch.compile never loaded the trees
    monkeypatch.setitem(sys.modules, "torch._inductor.cudagraph_trees", trees)
    assert not G.cudagraph_trees_pool_active(cuda)  # loaded, idle
    manager.in_warmup = True
    assert G.cudagraph_trees_pool_active(cuda) and not G.cudagraph_trees_pool_active(torch.device("cpu"))
    manager.in_warmup, manager.in_recording = False, True
    assert G.cudagraph_trees_pool_active(cuda)
    trees.get_manager = lambda index, create_if_none_exists=True: None  # no manager for this device yet
    assert not G.cudagraph_trees_pool_active(cuda)
    # the CPU table is the offsets themselves
    assert G._device_table([0, 15, 30], torch.device("cpu")).tolist() == [0, 15, 30]


def test_deferred_scale_leaves_x_unscaled_in_range_only():
    """``defer_scale`` on the CPU op: matrices whose scale is in [2⁻³⁰, 2³⁰] keep X = V rounded once
    (deferred = scale), the others (‖V‖ ≈ 1e12 and 1e-12 here) get the same X and scale as without
    it (deferred = 1); the momentum update is the same bit for bit."""
    from fpolar.kernels.momentum_polar_input import DEFER_MAX_SCALE, DEFER_MIN_SCALE

    sizes = torch.tensor([1.0, 1e12, 3e-3, 1e-12])[:, None, None]
    mom = _random((4, 20, 12), torch.float32, 1) * sizes
    grads = list(_random((4, 20, 12), torch.float32, 2) * sizes)
    m1, m2 = mom.clone(), mom.clone()
    x, scale, ones = K.momentum_polar_input(m1, grads, 0.9, True, torch.bfloat16, SAFETY, EPS, None)
    xd, scale_d, deferred = K.momentum_polar_input(m2, grads, 0.9, True, torch.bfloat16, SAFETY, EPS, None, True)
    assert torch.equal(m1, m2) and torch.equal(scale, scale_d) and torch.equal(ones, torch.ones(4))
    in_range = (scale >= DEFER_MIN_SCALE) & (scale <= DEFER_MAX_SCALE)
    assert in_range.tolist() == [True, False, True, False]
    assert torch.equal(deferred, torch.where(in_range, scale, torch.ones(4)))
    # V (tall: transposed), rounded once to bf16, where deferred; X bit for bit elsewhere
    v = torch.stack(grads).lerp(m1, 0.9).mT.to(torch.bfloat16)
    assert torch.equal(xd[in_range], v[in_range]) and torch.equal(xd[~in_range], x[~in_range])
    # deferred·X is the normalized input up to bf16 rounding
    torch.testing.assert_close((xd.float() * deferred[:, None, None]), x.float(), rtol=2.0**-7, atol=1e-6)


# ‖W_deferred − W‖ / ‖W − W₀‖ after 3 steps. fp32: roundings of fp32 (measured 1e-6 – 3e-6). bf16: X
# is rounded once instead of twice and s is applied to R₀ and P instead of X, and five NS steps
# amplify those half-ulp differences (2⁻⁹) to 1.2–2.6% of the update (measured), as any change of
# rounding order does; a scale missing, doubled or misplaced changes the update by O(1).
DEFERRED_STEP_TOL = {torch.float32: 1e-4, torch.bfloat16: 0.05}


@pytest.mark.parametrize("polar_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("scale", ["nuclear", "shape"])
def test_step_with_the_deferred_scale_equals_the_step_without(scale, polar_dtype, monkeypatch):
    """Gram space with the scale deferred into the iteration (``defers_input_scale`` forced on: on CPU
    the torch Gram ops carry it) against the torch glue: 3 steps, one skipped for a NaN grad."""
    import fpolar.fused_glue

    torch.manual_seed(1)
    hp = PolarGradHParams(lr=0.02, momentum=0.9, nesterov=True, scale=scale, weight_decay=0.1, polar_dtype=polar_dtype)
    shapes = [(24, 80), (24, 80), (80, 24), (2, 24, 80)]
    ps = [torch.randn(s) for s in shapes]
    ps_fused = [p.clone() for p in ps]
    start = [p.clone() for p in ps]
    state, state_fused = init_state(ps, hp), init_state(ps_fused, hp)
    gram = lambda impl: impl._replace(method="gram_newton_schulz", kernels="torch")  # noqa: E731
    state.polar_impls = tuple(gram(i) for i in state.polar_impls)
    state_fused.polar_impls = tuple(gram(i)._replace(glue="fused") for i in state_fused.polar_impls)
    calls = []

    def deferring(impl, device):
        calls.append(impl.method)
        return True

    monkeypatch.setattr(fpolar.fused_glue, "defers_input_scale", deferring)
    # grad norms from ~40 to ~4000
    _three_steps_one_skipped(shapes, hp, ps, state, ps_fused, state_fused, nan_in=0, grad_size=lambda k: 10.0**k)
    assert calls and set(calls) == {"gram_newton_schulz"}
    for a, b in zip(state.buffers, state_fused.buffers):
        assert torch.equal(a, b)
    for a, b, w0 in zip(ps, ps_fused, start):
        update = (a - w0).norm()
        assert ((b - a).norm() / update).item() < DEFERRED_STEP_TOL[polar_dtype]


def test_deferred_scale_step_compiles_in_one_graph_and_matches_eager(monkeypatch):
    """The deferred-scale step under ``torch.compile(fullgraph=True)``: the op's third output and the
    scaled Gram products trace without a break, and the compiled step equals the eager one."""
    import fpolar.fused_glue
    from torch._dynamo.testing import CompileCounterWithBackend

    monkeypatch.setattr(fpolar.fused_glue, "defers_input_scale", lambda impl, device: impl.method == "gram_newton_schulz")
    torch._dynamo.reset()
    torch.manual_seed(2)
    hp = PolarGradHParams(lr=0.02, momentum=0.9, nesterov=True, scale="nuclear", polar_dtype=torch.float32)
    shapes = [(24, 80), (80, 24)]
    ps = [torch.randn(s) for s in shapes]
    ps_eager = [p.clone() for p in ps]
    states = [init_state(p, hp) for p in (ps, ps_eager)]
    for st in states:
        st.polar_impls = tuple(i._replace(method="gram_newton_schulz", kernels="torch", glue="fused") for i in st.polar_impls)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda p, g: polargrad_step(p, g, states[0], hp), fullgraph=True, backend=counter)
    for _ in range(2):
        gs = [torch.randn(s) for s in shapes]
        compiled(ps, gs)
        polargrad_step(ps_eager, [g.clone() for g in gs], states[1], hp)
    assert counter.frame_count == 1
    # the traced graph asks the op to defer (its last argument) in both groups
    op = torch.ops.fpolar.momentum_polar_input
    calls = [n for n in counter.graphs[0].graph.nodes if n.target in (op, op.default)]
    assert len(calls) == 2 and all(n.args[-1] is True for n in calls), [n.args[-1] for n in calls]
    for a, b in zip(ps, ps_eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
