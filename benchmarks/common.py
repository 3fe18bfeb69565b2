"""Timing, memory and reporting helpers shared by the benchmark scripts.

Everything here works on CUDA and on CPU, so each script's ``--quick --device cpu`` smoke mode runs
the same code path as the GPU run, only with host timers instead of CUDA events.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import platform
import shlex
import statistics
import sys
import time
import warnings
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import torch


def pick_device(name: Optional[str]) -> torch.device:
    """``name`` if given, else CUDA when available, else CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception as e:  # noqa: BLE001 - any import failure just means "not available"
        return f"n/a ({type(e).__name__})"


def environment(device: torch.device) -> Dict[str, str]:
    """What a reader needs to reproduce or compare a run."""
    if device.type == "cuda":
        dev = torch.cuda.get_device_name(device)
    else:
        dev = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {
        "command": " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1]] + sys.argv),
        "device": dev,
        "torch": torch.__version__,
        "triton": triton_version(),
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def print_header(env: Dict[str, str]) -> None:
    print(f"command: {env['command']}")
    print(f"device: {env['device']} | torch {env['torch']} | triton {env['triton']} | python {env['python']}")
    print(f"date: {env['date']}")


def bench_ms(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
    max_reps: int = 1000,
) -> float:
    """Median milliseconds per call of ``fn``, warm-up excluded.

    CUDA: ``triton.testing.do_bench`` (CUDA events, L2 flushed between calls), or a CUDA-event loop
    when Triton is missing. CPU: ``time.perf_counter`` around each call. The call count adapts to
    the function's speed (about ``rep_ms`` of timed calls, at least 3), so slow steps stay cheap.
    """
    if device.type == "cuda":
        try:
            import triton.testing

            return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
        except ImportError:
            return _cuda_event_bench(fn, warmup_ms, rep_ms, max_reps)
    return _host_bench(fn, warmup_ms, rep_ms, max_reps)


def cuda_graph_ms(fn: Callable[[], object], rep_ms: int) -> float:
    """Median device ms of ``fn`` on CUDA: captured in a CUDA graph and replayed (triton's
    ``do_bench_cudagraph``), the way a captured or compiled step runs it; a sequence of small launches
    timed eagerly would measure the host's launch cost instead. Eager ``do_bench`` (CUDA events, L2
    flushed) where ``fn`` cannot be captured. ``fn`` runs once first, outside any capture (compiles)."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"))
    except Exception:  # noqa: BLE001 - not capturable: time it eagerly
        torch.cuda.synchronize()
        return float(triton.testing.do_bench(fn, warmup=20, rep=rep_ms, return_mode="median"))


def _estimate_ms(fn: Callable[[], object], device: torch.device, calls: int = 3) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3 / calls


def _cuda_event_bench(fn: Callable[[], object], warmup_ms: float, rep_ms: float, max_reps: int) -> float:
    dev = torch.device("cuda")
    est = max(_estimate_ms(fn, dev), 1e-3)
    for _ in range(max(1, int(warmup_ms / est))):
        fn()
    n = min(max_reps, max(3, int(rep_ms / est)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def _host_bench(fn: Callable[[], object], warmup_ms: float, rep_ms: float, max_reps: int) -> float:
    cpu = torch.device("cpu")
    est = max(_estimate_ms(fn, cpu, calls=1), 1e-3)
    for _ in range(max(1, int(warmup_ms / est))):
        fn()
    n = min(max_reps, max(3, int(rep_ms / est)))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def first_call_s(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call, synchronized: the first step, where compilation and autotuning land."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def memory_allocated(device: torch.device) -> Optional[int]:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def peak_bytes_over(fn: Callable[[], object], device: torch.device, base: Optional[int]) -> Optional[int]:
    """Peak allocated bytes during one call of ``fn``, above ``base`` (None on CPU).

    With ``base`` = the allocation before the optimizer existed, this is the optimizer's whole cost:
    its state plus the step's temporary workspace.
    """
    if device.type != "cuda" or base is None:
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def matmul_ceiling_tflops(device: torch.device, n: int = 8192) -> float:
    """TFLOP/s of an n³ matrix product on random data: bf16 on CUDA (the tensor-core ceiling), fp32 on CPU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = bench_ms(lambda: a @ b, device, warmup_ms=100, rep_ms=400)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def ns_flops(m: int, n: int, steps: int = 5) -> float:
    """Dense Newton–Schulz FLOPs for one m×n matrix, run on its wide side (m ≤ n after transposing).

    Per step: 2·m²·n for A = X Xᵀ, 2·m³ for A·A, 2·m²·n for B·X.
    """
    m, n = min(m, n), max(m, n)
    return steps * (2 * m * m * n + 2 * m**3 + 2 * m * m * n)


def mib(nbytes: Optional[int]) -> Optional[float]:
    return None if nbytes is None else nbytes / 2**20


def fmt(x: Any, spec: str = ".2f", width: int = 8, na: str = "—") -> str:
    """Right-aligned number, or ``na`` for None/NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return f"{na:>{width}}"
    return f"{x:>{width}{spec}}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, note_last: bool = False) -> None:
    """Plain-text table: the first ``left`` columns left-aligned, the rest right-aligned; with
    ``note_last`` the last column is free text (left-aligned, not padded)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    last = len(headers) - 1

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, (c, w) in enumerate(zip(cells, widths)):
            if note_last and i == last:
                out.append(c)
            else:
                out.append(c.ljust(w) if i < left else c.rjust(w))
        return "  ".join(out).rstrip()

    print(line(headers))
    print("  ".join("-" * (len(headers[-1]) if note_last and i == last else w) for i, w in enumerate(widths)))
    for r in rows:
        print(line(r))


def settle_compiler_for_peers() -> None:
    """The compiler settings of a run that compiles the peer optimizers' code next to ours.

    Compiler chatter from inside the peers' code (untraceable builtins, deprecations) is not ours to fix,
    so Dynamo / Inductor warnings and FutureWarnings are hidden. heavyball compiles one graph per matrix
    shape, dion and the compiled rows add more: Dynamo's default of 8 recompiles per function would
    silently fall back to eager, so the limits are raised (under either name this torch uses)."""
    warnings.filterwarnings("ignore", module=r"torch\._(dynamo|inductor)")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 256)
    if hasattr(torch._dynamo.config, "accumulated_recompile_limit"):
        torch._dynamo.config.accumulated_recompile_limit = 4096


@contextlib.contextmanager
def products_on_cublas() -> Iterator[None]:
    """Inside the block, plans are made as on a device without TMA: ``kernels="auto"`` keeps every
    product of the polar step on cuBLAS instead of the symmetric ones on fpolar's kernels (the rules
    before that choice, for a same-run comparison; a plan is made at ``init_state`` or a drop-in's
    first step)."""
    import fpolar.polar  # noqa: F401  (the package; ``fpolar.polar`` the attribute is a function)

    plan_module = sys.modules["fpolar.polar"]
    saved = plan_module.hopper_with_tma
    plan_module.hopper_with_tma = lambda device: False
    try:
        yield
    finally:
        plan_module.hopper_with_tma = saved


def save_json(path: Optional[str], payload: Dict[str, Any]) -> None:
    if not path:
        return
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=str)
    print(f"wrote {path}")
