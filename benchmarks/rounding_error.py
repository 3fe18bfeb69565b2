"""Rounding error of the ways the symmetric products can be formed, on the kernels' torch twins (CPU).

    python3 benchmarks/rounding_error.py [--trials 6] [--seed 0] [--json PATH]

Each row runs one formulation of Newton–Schulz with a bf16 iterate and reports its relative Frobenius
distance from the float64 iteration of the same schedule on the same input: rounding only, not the
schedule's own distance from the polar factor. The lower-tile kernels' twins (``sym_gram_reference``,
``sym_poly_reference``, ``sym_cross_reference``) compute what the kernels compute: an fp32 product
rounded once to the iterate's dtype, the lower triangle mirrored. So the table says which
formulation the kernels may use without losing accuracy; the GPU's accumulation order differs from
the CPU's only below bf16's rounding.

Inputs: "gauss" (i.i.d. normal) and "decay" (singular values from 1 down to 1e-4, log-spaced), a
batch of 4 per trial. Gram space on 128 × 512, the plain iteration on 192 × 192.

The Gram-space rows normalize in one rounding (``frobenius_normalize``) except the two "glue" rows,
which start the way the fused step does: V rounded to bf16, then either X = V·s rounded again (the
scale pass) or the scale s deferred into the first X Xᵀ and the first block's last polynomial.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Callable, Dict, List

import torch

from fpolar.coefficients import schedule_for
from fpolar.kernels import sym_cross_reference, sym_gram_reference, sym_poly_reference
from fpolar.polar.gram_newton_schulz import TORCH_GRAM_OPS, GramOps, gram_newton_schulz, times_per_matrix
from fpolar.polar.newton_schulz import TORCH_OPS, NSOps, newton_schulz

BATCH = 4
GRAM_SHAPE = (128, 512)
PLAIN_SHAPE = (192, 192)
SCHEDULES = ("muon", "polar_express")


def lower_tile_congruence(p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """P·R·P as U = P·R, then P·Uᵀ from its lower triangle (what the captured step runs)."""
    return sym_cross_reference(p, torch.bmm(p, r))


def identity_after_rounding(r: torch.Tensor, a: float, b: float, c: float) -> torch.Tensor:
    """b·R + c·R² from its lower tiles, rounded, then a·I added to the rounded result."""
    p = sym_poly_reference(r, b, c)
    p.diagonal(dim1=-2, dim2=-1).add_(a)
    return p


def identity_after_rounding_scaled(
    r: torch.Tensor, a: float, b: float, c: float, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """``identity_after_rounding`` as a ``GramOps.poly``: the rounded polynomial times ``scale`` if given."""
    return times_per_matrix(identity_after_rounding(r, a, b, c), scale)


def identity_inside(r: torch.Tensor, a: float, b: float, c: float, scale: torch.Tensor | None = None) -> torch.Tensor:
    """scale·(a·I + b·R + c·R²) in fp32, rounded once (``fpolar::sym_poly`` with its shift and scale)."""
    return sym_poly_reference(r, b, c, a, scale)



def shifted_product(x: torch.Tensor, bm: torch.Tensor, a: float) -> torch.Tensor:
    """a·X + B·X as (B + a·I)·X, B + a·I rounded to the iterate's dtype."""
    bm = bm.clone()
    bm.diagonal(dim1=-2, dim2=-1).add_(a)
    return torch.bmm(bm, x)


GRAM_VARIANTS: Dict[str, GramOps] = {
    "cuBLAS products (a·I added after rounding)": TORCH_GRAM_OPS,
    "lower tiles, a·I added after rounding": GramOps(
        identity_after_rounding_scaled, lower_tile_congruence, torch.bmm, sym_gram_reference
    ),
    "lower tiles, a·I inside sym_poly (the step's)": GramOps(
        identity_inside, lower_tile_congruence, torch.bmm, sym_gram_reference
    ),
    "the same, P·Q from its lower triangle": GramOps(
        identity_inside, lower_tile_congruence, sym_cross_reference, sym_gram_reference
    ),
}
STEP_GRAM_OPS = GRAM_VARIANTS["lower tiles, a·I inside sym_poly (the step's)"]
GLUE_SCALED = "glue: V rounded, X = V·s rounded (the scale pass)"
GLUE_DEFERRED = "glue: V rounded, s deferred into sym_gram/sym_poly"


def glue_input(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """V rounded to bf16 and its scale s = 1/(‖V‖_F + eps), as the fused glue forms them."""
    v = x.to(torch.bfloat16)
    return v, (1.0 / (x.double().norm(dim=(-2, -1)) + 1e-7)).float()


def glue_scaled(x: torch.Tensor, schedule) -> torch.Tensor:
    v, s = glue_input(x)
    return gram_newton_schulz(times_per_matrix(v, s), schedule, polar_dtype=torch.bfloat16, gram_ops=STEP_GRAM_OPS, normalized=True)


def glue_deferred(x: torch.Tensor, schedule) -> torch.Tensor:
    v, s = glue_input(x)
    return gram_newton_schulz(v, schedule, polar_dtype=torch.bfloat16, gram_ops=STEP_GRAM_OPS, normalized=True, input_scale=s)

PLAIN_VARIANTS: Dict[str, NSOps] = {
    "lower tiles, a·X + B·X (the step's)": NSOps(sym_gram_reference, sym_poly_reference, TORCH_OPS.apply),
    "lower tiles, (B + a·I)·X": NSOps(sym_gram_reference, sym_poly_reference, shifted_product),
}


def make_input(kind: str, m: int, n: int, g: torch.Generator) -> torch.Tensor:
    if kind == "gauss":
        return torch.randn(BATCH, m, n, generator=g)
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(BATCH, m, k, generator=g))
    v, _ = torch.linalg.qr(torch.randn(BATCH, n, k, generator=g))
    sigma = torch.logspace(0, -4, k).expand(BATCH, k)
    return u @ torch.diag_embed(sigma) @ v.mT


def relative_error(out: torch.Tensor, exact: torch.Tensor) -> float:
    return ((out.double() - exact).norm() / exact.norm()).item()


def rows(trials: int, seed: int) -> List[Dict[str, object]]:
    out: List[Dict[str, object]] = []
    cases: List[tuple[str, tuple[int, int], Dict[str, Callable[[torch.Tensor, tuple], torch.Tensor]]]] = [
        ("Gram space", GRAM_SHAPE, {
            name: (lambda x, s, ops=ops: gram_newton_schulz(x, s, polar_dtype=torch.bfloat16, gram_ops=ops))
            for name, ops in GRAM_VARIANTS.items()
        } | {GLUE_SCALED: glue_scaled, GLUE_DEFERRED: glue_deferred}),
        ("plain", PLAIN_SHAPE, {
            name: (lambda x, s, ops=ops: newton_schulz(x, s, polar_dtype=torch.bfloat16, ops=ops))
            for name, ops in PLAIN_VARIANTS.items()
        }),
    ]
    for iteration, (m, n), variants in cases:
        for schedule_name in SCHEDULES:
            schedule = schedule_for(schedule_name, 5, "repeat_last")
            for kind in ("gauss", "decay"):
                g = torch.Generator().manual_seed(seed)
                errors: Dict[str, List[float]] = {name: [] for name in variants}
                for _ in range(trials):
                    x = make_input(kind, m, n, g)
                    exact = newton_schulz(x.double(), schedule, polar_dtype=torch.float64)
                    for name, run in variants.items():
                        errors[name].append(relative_error(run(x, schedule), exact))
                for name, errs in errors.items():
                    out.append({"iteration": iteration, "shape": f"{BATCH}×{m}×{n}", "schedule": schedule_name,
                                "input": kind, "variant": name, "error": statistics.mean(errs)})
    return out


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=6, help="inputs per row (each a batch of 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the rows to this JSON file")
    args = ap.parse_args(argv)
    table = rows(args.trials, args.seed)
    print(f"relative error against the float64 iteration of the same schedule, mean of {args.trials} "
          f"batches of {BATCH}, bf16 iterate, torch {torch.__version__}")
    for r in table:
        print(f"  {r['iteration']:<10} {r['shape']:<10} {r['schedule']:<13} {r['input']:<5} "
              f"{r['variant']:<46} {r['error']:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
