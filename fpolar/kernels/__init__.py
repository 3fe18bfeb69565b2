"""Newton–Schulz kernels: Triton on CUDA, registered as ``torch.library`` ops in namespace ``fpolar``.

One Newton–Schulz step on a batch of wide matrices X (B, m, n), m ≤ n, is three ops:

    A  = X Xᵀ                 fpolar::sym_gram(Tensor x, Tensor? scale=None) -> Tensor        (B, m, m)
    Bm = b·A + c·A·A          fpolar::sym_poly(Tensor a, float b, float c, float shift=0,
                                               Tensor? scale=None) -> Tensor              (B, m, m)
    X  ← a·X + Bm·X           fpolar::ns_apply(Tensor x, Tensor bm, float a) -> Tensor (B, m, n)

The AOL ("Turbo-Muon") row scaling of the "aol" schedule runs in torch
(``fpolar.polar.newton_schulz.aol_precondition``), its Gram product through ``sym_gram`` when the
Triton ops are selected.

Every op: inputs bf16, fp16 or fp32 (for ns_apply x and bm of one dtype); products accumulate in
fp32; outputs have the input dtype and are contiguous; any m, n (edges are masked, m = 1 works);
inputs of any strides (the CUDA path makes them contiguous first).

Implementations of each op:
- CUDA: a Triton kernel (``launch_*`` below). fp32 inputs use TF32 tensor cores only when
  ``torch.backends.cuda.matmul.allow_tf32`` is on (torch's own switch for fp32 matmuls), else exact
  fp32 dots.
- Every other device (CPU): the op's torch twin, ``*_reference``: an fp32 matmul cast to the output
  dtype. The twins are public because the tests compare the kernels against them.
- Fake (meta): shapes and dtypes only, so the ops trace under torch.compile.
The ops are ``torch.library.custom_op``, opaque to the compiler: each is one node in a compiled
graph, on every device. (A ``triton_op`` would let Inductor inline the Triton kernel, but Inductor
then does so for CPU tensors too, where no Triton driver exists.) Shape, dtype and scalar errors are
raised as ValueError / TypeError naming the bad argument, eagerly and while tracing.

What each kernel computes and fuses:
- sym_gram: only the lower-triangle tiles (tile_i ≥ tile_j) of the symmetric A; each tile is stored
  in place and transposed into its mirror. Half the FLOPs of ``x @ x.mT``; the result is exactly
  symmetric (a diagonal tile is stored once, its lower triangle reflected onto the upper one).
- sym_gram and sym_poly take an optional per-matrix ``scale`` (B,) fp32, applied in fp32 before the one
  rounding (s²·X Xᵀ; s·(shift·I + b·A + c·A²)): Gram Newton–Schulz's deferred input scale.
- sym_poly: A symmetric means A·A = A·Aᵀ, a Gram product of A's rows: the same lower-tile kernel,
  with b·A (and shift·I: Gram Newton–Schulz's a·I) added in the epilogue before the mirrored store.
  Half the FLOPs, exactly symmetric output.
  The kernel assumes A symmetric (the twin computes A·A as written).
- ns_apply: one batched matmul Bm·X with a·X added in the epilogue (no separate pass over X);
  output tiles visited in groups of 8 tile-rows for L2 reuse.

The step's memory-bound glue, around the polar factor of one shape group (see each file):

    fpolar::momentum_polar_input(momentum, grads, beta, nesterov, polar_dtype, safety, eps, found)
        -> (X, scale)   M ← β·M + (1−β)·G in place; X = the Frobenius-normalized Nesterov blend or M,
                        wide, in the polar dtype; one pass over G and M
    fpolar::scaled_update_(params, o, step, decay, found)
                        W ← decay·W − s·O in place; one pass over O and W

Both take the group's per-param tensors as a list (no stack copy; one launch for the list through a
table of matrix offsets, else one per tensor), transpose a tall group's tiles in registers, and write
nothing of M / W when the 0-d ``found`` is True.

PolarGrad's nuclear scale s_b = ⟨O_b, X_b⟩_F (``fpolar.scale.nuclear_scale``):

    fpolar::batched_inner(Tensor o, Tensor x) -> Tensor   (B,) fp32; o, x (B, m, n), any strides
                        one read of O and X, per-chunk fp32 partials summed in a fixed order (no
                        atomics: the same bits every run)

Gram Newton–Schulz adds one op on the m×m side:

    R' = P·(P·R)ᵀ = P·R·P     fpolar::sym_cross(Tensor a, Tensor b) -> Tensor        (B, m, m)

the lower triangle of A·Bᵀ, reflected (``sym_cross``; same lower-tile kernel with two inputs).

Configurations (``tuning``): on CUDA each launcher without an explicit ``config`` asks the
process-wide ``KernelTuner``, which times a handful of candidates once per (device, triton version,
kernel, dtype, shape bucket), caches the fastest in memory and in a JSON file, and falls back to the
fixed heuristic below when tuning is off (the default; ``FPOLAR_TUNE=1`` turns it on), off CUDA, or while a CUDA graph is
captured / torch.compile traces and the key is not tuned yet.

Tile heuristic (instant, from (m, n, dtype) and whether the tiles load through TMA;
``symmetric_tile_config`` and ``matmul_tile_config``): 128-wide output tiles (128×128 for ns_apply)
with 8 warps (4 for the lower-tile kernels' TMA variants) and 3 pipeline stages; a side of 64 with 4
warps and 4 stages only where the matrix is at most 64 on that side.
K steps of 64 for 16-bit inputs and 32 for fp32 (same shared memory per stage). Every ``launch_*``
takes ``config=triton.Config(...)`` to override it. Through the op, eager, each call adds Python
dispatch (custom_op + Triton launch); CUDA graphs remove it. Row strides that are not multiples of 16
elements (e.g. m = 1000) cost the loads their 16-byte vectorization: correct, but slower than cuBLAS
there. Measured: see BENCHMARKS.md, "Each NS line alone, cuBLAS vs Triton" and "Triton kernels alone,
launcher only".

Addressing: the batch offset is int64 (batch · stride can pass 2**31 elements); inside one matrix
offsets are int32, so a single matrix must span fewer than 2**31 elements (checked). The grid is one
flat axis of batch × tiles, so the batch size has no 65535 grid limit.

Launchers (``launch_sym_gram(x, out)``, ``launch_sym_poly(a, out, b, c)``,
``launch_ns_apply(x, bm, out, a)``) run the Triton kernels on caller-provided outputs. They accept
CUDA tensors, and CPU tensors when the Triton interpreter is on (``TRITON_INTERPRET=1`` set before triton is imported), which is how CI checks the
kernels' logic without a GPU.

The non-finite skip's detection (``fpolar.nonfinite``) has one op here too,
``fpolar::max_abs(Tensor[] tensors) -> Tensor`` (``max_abs``): max |t| over a whole list of
tensors, one launch over all of them through a cached (start, length) table of their chunks, plus
one tiny combine. An integer max of the sign-cleared bits, with no atomics: the twin's value
(``max_abs_reference``) bit for bit where it is finite, NaN or +inf where the twin's is.
"""

from __future__ import annotations

from ._common import HAS_TRITON, SUPPORTED_DTYPES, matmul_tile_config, symmetric_tile_config
from .batched_inner import batched_inner, batched_inner_reference, inner_tile_config, launch_batched_inner
from .momentum_polar_input import (
    launch_momentum_polar_input,
    momentum_polar_input,
    momentum_polar_input_reference,
)
from .max_abs import launch_max_abs, max_abs, max_abs_reference
from .ns_apply import launch_ns_apply, ns_apply, ns_apply_reference
from .scaled_update import launch_scaled_update, scaled_update_, scaled_update_reference
from .sym_gram import launch_sym_gram, sym_gram, sym_gram_reference
from .sym_cross import launch_sym_cross, sym_cross, sym_cross_reference
from .sym_poly import launch_sym_poly, sym_poly, sym_poly_reference
from .tuning import KernelTuner, candidate_configs, get_tuner, set_tuning

__all__ = [
    "HAS_TRITON",
    "KernelTuner",
    "batched_inner",
    "batched_inner_reference",
    "inner_tile_config",
    "launch_batched_inner",
    "SUPPORTED_DTYPES",
    "candidate_configs",
    "get_tuner",
    "launch_max_abs",
    "launch_momentum_polar_input",
    "launch_ns_apply",
    "launch_scaled_update",
    "launch_sym_cross",
    "launch_sym_gram",
    "launch_sym_poly",
    "matmul_tile_config",
    "max_abs",
    "max_abs_reference",
    "momentum_polar_input",
    "momentum_polar_input_reference",
    "ns_apply",
    "ns_apply_reference",
    "scaled_update_",
    "scaled_update_reference",
    "sym_gram",
    "sym_gram_reference",
    "set_tuning",
    "sym_cross",
    "sym_cross_reference",
    "sym_poly",
    "sym_poly_reference",
    "symmetric_tile_config",
]
