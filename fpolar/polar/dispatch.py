"""Which implementation computes the polar factor of a shape group: one decision, made once.

``PolarSpec.impl_for`` takes it when the plan is built (``fpolar.init_state``; ``fpolar.polar`` once
per call) and stores it as a ``PolarImpl``: the method after the Gram-space choice, who runs the
products that touch the m×n matrix (cuBLAS batched matmul or fpolar's Triton kernels), and the
iteration dtype. ``polar_wide`` runs it; ``describe_plan`` prints it. The rules read shapes, dtypes,
the device type and options only, never tensor values, so a compiled step never recompiles on them.

``kernels="auto"`` for Newton–Schulz on CUDA:

1. **Gram space** (Gram Newton–Schulz on cuBLAS) for n ≥ ``GRAM_MIN_ASPECT``·m with Frobenius
   normalization: it iterates on the m×m Gram matrix and wins once n is a few times m; square loses.
   Measured: BENCHMARKS.md, "Polar step and whole optimizer step on the H100" (the Gram-NS5 rows) and
   "Single large matrices and the crossovers behind kernels="auto"".
2. **Triton** for the three NS lines where the Gram side m ≥ ``TRITON_MIN_SIDE`` in bf16/fp16: the
   kernels compute only the lower triangle of the symmetric products. Measured: the same sections,
   and "Each NS line alone, cuBLAS vs Triton".
3. **Symmetric products on Triton inside a CUDA graph, the rest on cuBLAS** (``PolarImpl.kernels``
   "symmetric_in_graphs", in Gram space too) on Hopper (sm90, where tiles load through TMA), the
   iteration is bf16/fp16 and SYMMETRIC_MIN_SIDE ≤ m: while a CUDA graph is captured (the drop-in's
   graph, ``capture_cuda_graph``), the products whose result is symmetric come from their lower tiles:
   X Xᵀ (``fpolar::sym_gram``), b·A + c·A² (``fpolar::sym_poly``) and, in Gram space, the second half
   of the congruence P·R·P (``fpolar::sym_cross``); every full product (a·X + B·X, Q·X, P·Q, the
   congruence's P·R), and every product outside a capture, runs on cuBLAS. On the H200 the TMA
   lower-tile X Xᵀ took 0.63–0.69× cuBLAS's time from m = 768 to 1024
   (``benchmarks/tma_gram_probe.py``), and b·A + c·A² needs no copy of A (cuBLAS's ``baddbmm`` copies
   its β operand into the output first): the captured GPT-2-small Muon step went from 2.95 to
   2.48 ms. Outside a graph each Triton launch costs the host several times a cuBLAS call (a custom
   op's dispatch, the descriptors), and the same step, eager, took 16.0 ms against 8.6
   (``benchmarks/launch_overhead.py``); a torch.compile trace cannot tell whether its graph will be
   replayed as a CUDA graph, so it keeps cuBLAS too. A user who replays the compiled step as a graph
   (``torch.compile(mode="reduce-overhead")``) asks for the kernels on every launch with
   ``kernels="symmetric"``. Measured: BENCHMARKS.md, "Symmetric products through TMA".
4. cuBLAS otherwise.

The other choices: ``kernels="torch"``: every product on cuBLAS. ``kernels="triton"``: every product on
the Triton kernels, the full ones too (in Gram space they lost on the GPT-2-small step: the "Gram-NS5
Triton X-lines" rows), Gram space only when asked for. ``kernels="symmetric"``: "auto"'s Gram-space
rule, then the symmetric products on the lower-tile kernels on every launch (eagerly, under
torch.compile and in graphs alike) and the full ones on cuBLAS, at any size and on any CUDA device:
for a step replayed as a graph that the plan cannot see being captured (``mode="reduce-overhead"``).

CPU always gets the torch path (the Triton kernels run on CPU only in the interpreter, for tests).

**Measured** (``measured_auto_impl``): on CUDA with kernel tuning on (``fpolar.kernels.tuning``; off
by default, on with ``FPOLAR_TUNE=1``), ``auto`` for the Newton–Schulz family does not stop at the rules above: when
the plan is built it times the group's whole polar step on random data of the group's (B, m, n) and
dtype through each candidate — NS on cuBLAS, NS on the Triton kernels, and with Frobenius
normalization Gram NS on cuBLAS and on the Triton kernels (the tuned configs are chosen on the way) —
and keeps the fastest. The decision is cached per (device, triton version, method, m, n, batch
bucket, dtype, steps, restart, normalization) in memory and in the tuning cache file, and recorded
in ``PolarImpl.reason`` with every candidate's µs (``describe_plan`` shows it). It never reads the
values of a tensor, and it is not taken while torch.compile traces or a CUDA graph is captured: then
an already measured decision is used, else the rules above.

**Glue** (``PolarImpl.glue``): the memory-bound work around the polar factor — momentum update,
Nesterov blend, Frobenius normalization, cast, transpose of tall groups, and the scaled apply.
``"fused"`` runs it as the two one-pass ops ``fpolar::momentum_polar_input`` and
``fpolar::scaled_update_``; ``"torch"`` as torch ops (the slow, obviously-correct twin). Fused for
the Newton–Schulz family on CUDA with ``kernels`` "auto" or "triton", params in bf16/fp16/fp32 and a
bf16 or fp32 iteration dtype (the unnormalized blend is stored in it before the scale: fp16's range
is too small). The step uses it where it applies (momentum-first, every param of the group live).
``FPOLAR_GLUE=torch`` in the environment turns the fused glue off.
"""

from __future__ import annotations

import os
from typing import Callable, List, Literal, NamedTuple, Optional

import torch

from .gram_newton_schulz import TORCH_GRAM_OPS, GramOps, torch_congruence, torch_polynomial, torch_scaled_gram
from .newton_schulz import TORCH_OPS, NSOps

GRAM_MIN_ASPECT = 2.0
TRITON_MIN_SIDE = 4096
SYMMETRIC_MIN_SIDE = 512  # measured from 768 up; below it cuBLAS keeps every product

# "symmetric": the symmetric products on fpolar's lower-tile kernels at every launch, the full ones on
# cuBLAS (the user's kernels="symmetric"); "symmetric_in_graphs": the same while a CUDA graph is
# captured, every product on cuBLAS elsewhere (rule 3 above, "auto"'s choice).
NSKernels = Literal["torch", "triton", "symmetric", "symmetric_in_graphs"]
GlueChoice = Literal["torch", "fused"]
GLUE_INPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
GLUE_POLAR_DTYPES = (torch.bfloat16, torch.float32)


class PolarImpl(NamedTuple):
    """What computes the polar factor of one wide (B, m, n) batch: decided once per shape group.

    Attributes:
        method: "newton_schulz", "gram_newton_schulz", "qdwh" or "svd" (``kernels="auto"`` may have
            turned "newton_schulz" into "gram_newton_schulz").
        kernels: for the Newton–Schulz family "torch" (batched matmul), "triton" (``torch.ops.fpolar``),
            "symmetric" (the symmetric products on ``torch.ops.fpolar``, every other product on
            batched matmul) or "symmetric_in_graphs" (the same while a CUDA graph is captured, all
            on batched matmul elsewhere); "torch" for QDWH and SVD.
        polar_dtype: the dtype the iteration runs in (and of its result).
        reason: why, when it was measured (every candidate's µs); "" for a fixed rule.
        glue: "fused" (the one-pass Triton ops around the polar factor) or "torch"; see module docstring.
    """

    method: str
    kernels: NSKernels
    polar_dtype: torch.dtype
    reason: str = ""
    glue: GlueChoice = "torch"

    @property
    def label(self) -> str:
        """Human-readable name, as ``describe_plan`` shows it."""
        names = {
            "triton": "triton kernels",
            "symmetric": "symmetric products on triton",
            "symmetric_in_graphs": "symmetric products on triton in CUDA graphs",
            "torch": "torch matmul",
        }
        if self.method == "newton_schulz":
            return f"newton_schulz [{names[self.kernels]}]"
        if self.method == "gram_newton_schulz" and self.kernels != "torch":
            return f"gram_newton_schulz [{names[self.kernels]}]"
        return self.method


def ns_implementation(
    m: int, n: int, on_cuda: bool, dtype: torch.dtype, kernels: str, normalization: str, tma: bool = False
) -> str:
    """"gram", "triton", "symmetric", "symmetric_in_graphs" or "torch": what runs NS on a wide (·, m, n)
    batch (m ≤ n) iterated in ``dtype``; ``tma``: a Hopper GPU with TMA (``hopper_with_tma``)."""
    if kernels in ("torch", "triton"):
        return kernels
    if on_cuda and normalization == "frobenius" and n >= GRAM_MIN_ASPECT * m:
        return "gram"
    if kernels == "symmetric":
        return "symmetric"
    if on_cuda and dtype in (torch.bfloat16, torch.float16) and m >= TRITON_MIN_SIDE:
        return "triton"
    return symmetric_or_torch(m, on_cuda, dtype, tma)


def symmetric_or_torch(m: int, on_cuda: bool, dtype: torch.dtype, tma: bool) -> NSKernels:
    """Rule 3 of the module doc: "symmetric_in_graphs" where the lower-tile kernels beat cuBLAS, else "torch"."""
    if on_cuda and tma and dtype in (torch.bfloat16, torch.float16) and m >= SYMMETRIC_MIN_SIDE:
        return "symmetric_in_graphs"
    return "torch"


def gram_space_kernels(kernels: str, m: int, on_cuda: bool, dtype: torch.dtype, tma: bool) -> NSKernels:
    """Who runs Gram Newton–Schulz's products for the user's ``kernels``: that choice, or for "auto" rule 3."""
    if kernels in ("torch", "triton", "symmetric"):
        return kernels  # type: ignore[return-value]
    return symmetric_or_torch(m, on_cuda, dtype, tma)


def hopper_with_tma(device: torch.device) -> bool:
    """Whether ``device`` is a Hopper GPU (sm90: tiles copied through TMA, and where the symmetric
    products were measured to beat cuBLAS) and triton can describe tiles. Later architectures have
    TMA too (the kernels use it there), but rule 3 waits for a measurement on them."""
    from ..kernels._tma import HAS_TENSOR_DESCRIPTOR

    if device.type != "cuda" or not HAS_TENSOR_DESCRIPTOR:
        return False
    try:
        return torch.cuda.get_device_capability(device)[0] == 9
    except (RuntimeError, AssertionError, AttributeError):  # no driver to ask (a test's stand-in device)
        return False


def glue_implementation(
    method: str, kernels: str, on_cuda: bool, input_dtype: torch.dtype, polar_dtype: torch.dtype
) -> GlueChoice:
    """"fused" or "torch": what runs the glue around the polar factor (see the module docstring).
    ``FPOLAR_GLUE=torch`` in the environment keeps the torch glue everywhere (read when a plan is built):
    the switch the benchmarks compare the two with."""
    if os.environ.get("FPOLAR_GLUE", "auto").strip().lower() == "torch":
        return "torch"
    fused = (
        on_cuda
        and kernels in ("auto", "triton", "symmetric")
        and method in ("newton_schulz", "gram_newton_schulz")
        and input_dtype in GLUE_INPUT_DTYPES
        and polar_dtype in GLUE_POLAR_DTYPES
    )
    return "fused" if fused else "torch"


def decide_polar_impl(
    method: str,
    kernels: str,
    normalization: str,
    m: int,
    n: int,
    on_cuda: bool,
    polar_dtype: torch.dtype,
    input_dtype: Optional[torch.dtype] = None,
    tma: bool = False,
) -> PolarImpl:
    """The ``PolarImpl`` for a wide (·, m, n) batch (m ≤ n);
    ``kernels`` is the user's "auto"/"torch"/"triton"/"symmetric".
    ``input_dtype``: the params' dtype (None: the glue stays torch); ``tma``: the device loads tiles
    through TMA on Hopper (``hopper_with_tma``), where "auto" may choose the symmetric products on Triton."""
    glue = "torch" if input_dtype is None else glue_implementation(method, kernels, on_cuda, input_dtype, polar_dtype)
    if method == "newton_schulz":
        impl = ns_implementation(m, n, on_cuda, polar_dtype, kernels, normalization, tma)
        if impl == "gram":
            return PolarImpl("gram_newton_schulz", gram_space_kernels(kernels, m, on_cuda, polar_dtype, tma), polar_dtype, glue=glue)
        return PolarImpl("newton_schulz", impl, polar_dtype, glue=glue)  # type: ignore[arg-type]
    if method == "gram_newton_schulz":
        return PolarImpl(method, gram_space_kernels(kernels, m, on_cuda, polar_dtype, tma), polar_dtype, glue=glue)
    return PolarImpl(method, "torch", polar_dtype)


def triton_ops() -> NSOps:
    """fpolar's Triton kernels behind the ``NSOps`` interface (CUDA tensors; registers ``torch.ops.fpolar``)."""
    from .. import kernels  # noqa: F401  (registers torch.ops.fpolar.*)

    ops = torch.ops.fpolar
    return NSOps(ops.sym_gram, ops.sym_poly, ops.ns_apply)


def when_captured(kernel: Callable[..., torch.Tensor], cublas: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A product that runs ``kernel`` while a CUDA graph is captured on its first argument's device and
    ``cublas`` everywhere else (rule 3 of the module doc: a Triton launch is cheap only in a graph).
    Both compute the same product; they may round differently."""
    from ..side_streams import being_captured

    def product(first: torch.Tensor, *rest):
        return (kernel if being_captured(first.device) else cublas)(first, *rest)

    return product


def _lower_tiles_where(in_graphs_only: bool) -> Callable[[Callable[..., torch.Tensor], Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """How a symmetric product picks between its lower-tile kernel and cuBLAS: ``when_captured``
    ("symmetric_in_graphs") or the kernel at every call ("symmetric")."""
    return when_captured if in_graphs_only else (lambda kernel, cublas: kernel)


def symmetric_ops(in_graphs_only: bool) -> NSOps:
    """X Xᵀ and b·A + c·A² on fpolar's lower-tile kernels (``in_graphs_only``: only while a CUDA graph is
    captured, else on cuBLAS); a·X + B·X on cuBLAS (``kernels`` "symmetric" / "symmetric_in_graphs")."""
    from .. import kernels  # noqa: F401  (registers torch.ops.fpolar.*)

    ops = torch.ops.fpolar
    lower_tiles = _lower_tiles_where(in_graphs_only)
    return NSOps(lower_tiles(ops.sym_gram, TORCH_OPS.gram), lower_tiles(ops.sym_poly, TORCH_OPS.poly), TORCH_OPS.apply)


KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def auto_candidates(method: str, normalization: str, polar_dtype: torch.dtype, tma: bool = False) -> List[PolarImpl]:
    """What ``kernels="auto"`` may choose between for a Newton–Schulz-family ``method`` (the symmetric
    products on Triton only where the device has TMA)."""
    kernels: List[NSKernels] = ["torch", "triton"] if polar_dtype in KERNEL_DTYPES else ["torch"]
    if tma and polar_dtype in KERNEL_DTYPES:
        kernels.append("symmetric_in_graphs")
    methods = ["gram_newton_schulz"] if method == "gram_newton_schulz" else ["newton_schulz"]
    if method == "newton_schulz" and normalization == "frobenius":
        methods.append("gram_newton_schulz")  # the AOL start has no Gram-space form here
    return [PolarImpl(mt, k, polar_dtype) for mt in methods for k in kernels]


def measured_auto_impl(
    method: str,
    fixed: PolarImpl,
    key: tuple,
    batch: int,
    m: int,
    n: int,
    input_dtype: torch.dtype,
    device: torch.device,
    normalization: str,
    run: Callable[[PolarImpl, torch.Tensor], torch.Tensor],
) -> PolarImpl:
    """The ``auto`` decision for a wide (batch, m, n) group from timings on ``device`` (module doc).

    ``method`` is the user's; ``fixed`` the rules' decision (kept when nothing can be measured);
    ``key`` the options that change the timing besides the shape (method, steps, restart);
    ``run(impl, x)`` runs the polar step through ``impl``.
    """
    from ..kernels.tuning import get_tuner, shape_bucket

    candidates = auto_candidates(method, normalization, fixed.polar_dtype, hopper_with_tma(device))
    tuner = get_tuner()
    if len(candidates) < 2 or not tuner.enabled or device.type != "cuda":
        return fixed
    full_key = (
        tuner.device_key(device), "polar", *key, normalization, m, n, shape_bucket(batch),
        str(fixed.polar_dtype).removeprefix("torch."),
    )
    by_label = {c.label: c for c in candidates}
    if tuner.can_measure(device):
        inputs: List[torch.Tensor] = []  # random data of the group's shape, made when first timed

        def timed(impl: PolarImpl) -> torch.Tensor:
            if not inputs:
                inputs.append(torch.randn(batch, m, n, device=device, dtype=input_dtype))
            return run(impl, inputs[0])

        options = {label: (lambda impl=impl: timed(impl)) for label, impl in by_label.items()}
        choice, us = tuner.measured_choice(full_key, options)
        inputs.clear()
    else:
        cached = tuner.cached_choice(full_key)
        if cached is None:
            return fixed
        choice, us = cached
    if choice not in by_label:  # a cache written by another version of the candidate list
        return fixed
    timings = ", ".join(f"{label} {t:.1f} µs" for label, t in sorted(us.items(), key=lambda kv: kv[1]))
    return by_label[choice]._replace(reason=f"measured on {full_key[0]}: {timings}", glue=fixed.glue)


def tune_before_use(key: tuple, device: torch.device, run_once: Callable[[], object]) -> bool:
    """For ``kernels="triton"``: runs the group's polar step once at plan time (``run_once``, on random
    data of its shape), so every kernel config it needs is tuned before a step is traced or captured.
    Once per key per process, only where tuning may time (CUDA, tuning on, not tracing/capturing).
    Returns whether it ran."""
    from ..kernels.tuning import get_tuner

    tuner = get_tuner()
    if not tuner.can_measure(device):
        return False
    full_key = (tuner.device_key(device),) + key
    if full_key in tuner.prepared:
        return False
    run_once()
    tuner.prepared.add(full_key)
    return True


def lower_tile_polynomial(
    r: torch.Tensor, a: float, b: float, c: float, scale: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """scale·(a·I + b·R + c·R²) on ``fpolar::sym_poly`` (a as its shift, and the per-matrix scale,
    applied in fp32 before the one rounding)."""
    return torch.ops.fpolar.sym_poly(r, b, c, a, scale)


def lower_tile_scaled_gram(v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """s²·V Vᵀ on ``fpolar::sym_gram`` (the scale applied in fp32 before the one rounding)."""
    return torch.ops.fpolar.sym_gram(v, scale)


def defers_input_scale(impl: PolarImpl, device: torch.device) -> bool:
    """Whether the fused glue leaves the polar input's Frobenius scale to the iteration
    (``gram_newton_schulz``'s ``input_scale``): Gram space whose first X Xᵀ and last polynomial run
    on the lower-tile kernels at this launch, which apply the scale in their epilogues for free. On
    cuBLAS the scale would cost two passes over m×m matrices, about the bytes of the pass over the
    m×n input it replaces, so the glue applies it there as before."""
    if impl.method != "gram_newton_schulz":
        return False
    if impl.kernels in ("triton", "symmetric"):
        return True
    if impl.kernels == "symmetric_in_graphs":
        from ..side_streams import being_captured

        return being_captured(device)
    return False


def triton_gram_ops() -> GramOps:
    """fpolar's Triton kernels for the m×m products of Gram Newton–Schulz: a·I + b·R + c·R² and P·R·P
    from their lower triangles (``sym_poly``; ``ns_apply`` for U = P·R then ``sym_cross`` for P·Uᵀ),
    P·Q as a full product (``ns_apply`` with a = 0)."""
    from .. import kernels  # noqa: F401  (registers torch.ops.fpolar.*)

    ops = torch.ops.fpolar

    def congruence(p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return ops.sym_cross(p, ops.ns_apply(r, p, 0.0))

    def product(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return ops.ns_apply(q, p, 0.0)

    return GramOps(lower_tile_polynomial, congruence, product, lower_tile_scaled_gram)


def symmetric_gram_ops(in_graphs_only: bool) -> GramOps:
    """a·I + b·R + c·R² on ``fpolar::sym_poly`` and the congruence P·R·P as U = P·R on cuBLAS, then P·Uᵀ
    from its lower tiles on ``fpolar::sym_cross`` (``in_graphs_only``: only while a CUDA graph is
    captured, else both on cuBLAS); P·Q on cuBLAS (``kernels`` "symmetric" / "symmetric_in_graphs")."""
    from .. import kernels  # noqa: F401  (registers torch.ops.fpolar.*)

    ops = torch.ops.fpolar

    def lower_tile_congruence(p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return ops.sym_cross(p, torch.bmm(p, r))

    lower_tiles = _lower_tiles_where(in_graphs_only)
    return GramOps(
        lower_tiles(lower_tile_polynomial, torch_polynomial),
        lower_tiles(lower_tile_congruence, torch_congruence),
        torch.bmm,
        lower_tiles(lower_tile_scaled_gram, torch_scaled_gram),
    )


def gram_ops_for(kernels: NSKernels) -> GramOps:
    """The m×m products of Gram Newton–Schulz for a ``PolarImpl.kernels`` choice."""
    if kernels == "triton":
        return triton_gram_ops()
    if kernels in ("symmetric", "symmetric_in_graphs"):
        return symmetric_gram_ops(in_graphs_only=kernels == "symmetric_in_graphs")
    return TORCH_GRAM_OPS


def check_kernels_device(kernels: str, device: torch.device) -> None:
    """Raise ValueError if ``kernels`` cannot run on ``device`` (the Triton kernels need CUDA)."""
    if kernels in ("triton", "symmetric", "symmetric_in_graphs") and device.type != "cuda":
        raise ValueError(f"kernels={kernels!r} needs CUDA tensors, got a tensor on {device}; use 'auto' or 'torch'")


def ns_ops(kernels: NSKernels, device: torch.device) -> NSOps:
    """The ``NSOps`` for a ``PolarImpl.kernels`` choice on ``device``."""
    check_kernels_device(kernels, device)
    if kernels == "triton":
        return triton_ops()
    if kernels in ("symmetric", "symmetric_in_graphs"):
        return symmetric_ops(in_graphs_only=kernels == "symmetric_in_graphs")
    return TORCH_OPS
