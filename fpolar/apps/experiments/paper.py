"""Reproductions of the PolarGrad paper's §6.1 (matrix quadratic regression) and §6.2 (matrix logistic
regression) with fpolar's functional API, and the ``python -m fpolar paper`` command (``main``).

Step sizes and the optimizer forms follow the paper's public code (timlautk/polargrad,
``mat_quad_reg.py``, ``mat_log_reg.py`` and their ``_mom`` variants):

- PolarGrad / PolarSGD: momentum 0, nuclear-norm scale, polar factor by QDWH with the paper's settings
  (2 iterations in float32 from l₀ = machine eps, 1 Newton–Schulz polish: fpolar's qdwh defaults). The
  same lr is also run with polar_express Newton–Schulz (float32) and with the exact polar factor (SVD):
  the paper tuned its lr with the inexact QDWH, whose singular values lie in about [0.73, 1].
- PolarGradM: momentum-first with β = 0.9, polar-first with β = 0.95 (the paper code's values), QDWH.
- Muon as in the paper code: EMA momentum β = 0.95 with Nesterov, Keller Jordan's quintic ("muon")
  coefficients for 5 steps, no shape factor (its √max(1, m/n) line is commented out there), polar dtype
  fpolar's default (bfloat16 on CUDA as in the paper code; float32 on CPU, where bfloat16 matmuls are
  slow). Also run with ``scale="shape"`` (√max(1, m/n) = √5 in §6.1, √10 in §6.2).
- Adam: ``fpolar.adamw_step`` with weight_decay = 0 (= torch.optim.Adam), betas (0.9, 0.999).
- "lr decay": the paper's StepLR, ×γ every 25 steps (γ = 0.99 in §6.1, 0.95 in §6.2).

``--quick`` shrinks every dimension 5× (same aspect ratios, so the same condition numbers) and runs fewer
steps. For the nuclear-scaled methods the update is lr·‖G‖_*·O; descent needs roughly
lr ≲ 2 / (L·rank) with L = ‖A‖₂²‖B‖₂², and L·rank scales as d³ when every size shrinks by d, so their
lrs are multiplied by d³ = 125. Muon's and Adam's lrs are per-entry step lengths and stay as they are.
Quick numbers are not comparable with the paper's.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..args import positive_int, usable_device
from .logistic_regression import LogisticConfig, LogisticProblem
from .optimizers import OptimizerSpec
from .plot import matplotlib_available, plot_curves
from .quadratic_regression import QuadraticConfig, QuadraticProblem
from .report import Reference, checkpoint_table, fmt, reference_table
from .runner import Curve, cpu_threads, record_steps, run_optimizer

QDWH = {"momentum": 0.0, "polar": "qdwh"}  # PolarGrad as the paper ran it (fpolar's qdwh defaults)
POLAR_EXPRESS = {"momentum": 0.0, "polar": "newton_schulz", "coefficients": "polar_express", "polar_dtype": torch.float32}
EXACT = {"momentum": 0.0, "polar": "svd"}
MOMENTUM_FIRST = {"momentum": 0.9, "order": "momentum_first", "polar": "qdwh"}
POLAR_FIRST = {"momentum": 0.95, "order": "polar_first", "polar": "qdwh"}
MUON = {"momentum": 0.95, "nesterov": True, "polar": "newton_schulz", "coefficients": "muon", "scale": "none"}
MUON_SHAPE = {**MUON, "scale": "shape"}


def _polargrad(name: str, lr: float, hparams: Dict[str, Any], decay: Optional[float] = None) -> OptimizerSpec:
    return OptimizerSpec(name, "polargrad", lr, hparams, decay_gamma=decay, nuclear_lr=hparams.get("scale", "nuclear") == "nuclear")


QUADRATIC_OPTIMIZERS: Tuple[OptimizerSpec, ...] = (
    _polargrad("PolarGrad (QDWH)", 4e-8, QDWH),
    _polargrad("PolarGrad (QDWH; lr decay)", 4.75e-8, QDWH, decay=0.99),
    _polargrad("PolarGrad (NS polar_express)", 4e-8, POLAR_EXPRESS),
    _polargrad("PolarGrad (exact SVD)", 4e-8, EXACT),
    # Where the exact polar factor stops diverging: half the paper's lr (found on the quick problem).
    _polargrad("PolarGrad (exact SVD; ½ lr)", 2e-8, EXACT),
    _polargrad("PolarGradM (momentum-first)", 2e-7, MOMENTUM_FIRST),
    _polargrad("PolarGradM (polar-first)", 4e-7, POLAR_FIRST),
    _polargrad("Muon (NS)", 0.1, MUON),
    _polargrad("Muon (NS; shape scale)", 0.1, MUON_SHAPE),
    OptimizerSpec("Adam", "adam", 5e-2),
    OptimizerSpec("Adam (lr decay)", "adam", 5e-2, decay_gamma=0.99),
)

LOGISTIC_OPTIMIZERS: Tuple[OptimizerSpec, ...] = (
    _polargrad("PolarSGD (QDWH)", 1.5e-7, QDWH),
    _polargrad("PolarSGD (QDWH; lr decay)", 2.5e-7, QDWH, decay=0.95),
    _polargrad("PolarSGD (NS polar_express)", 1.5e-7, POLAR_EXPRESS),
    _polargrad("PolarSGD (exact SVD)", 1.5e-7, EXACT),
    _polargrad("PolarSGDM (momentum-first)", 2.5e-7, MOMENTUM_FIRST),
    _polargrad("PolarSGDM (polar-first)", 2.5e-7, POLAR_FIRST),
    _polargrad("Muon (NS)", 0.1, MUON),
    _polargrad("Muon (NS; shape scale)", 0.1, MUON_SHAPE),
    OptimizerSpec("Adam", "adam", 5e-3),
    OptimizerSpec("Adam (lr decay)", "adam", 1e-2, decay_gamma=0.95),
)

# The paper's figures, as recorded in the design notes (docs: "Reproductions from the PolarGrad paper").
QUADRATIC_REFERENCES: Tuple[Reference, ...] = (
    Reference("PolarGrad (QDWH)", 1000, 24.0),
    Reference("PolarGrad (QDWH)", 2000, 0.8),
    Reference("Muon (NS)", 4000, 7.5e4, "plateau near 7.5e4"),
    Reference("Adam", 500, 16.0, "best gap ≈ 16 near step 500, then drifts up"),
    Reference("PolarGrad (exact SVD)", 0, None, "the exact polar factor diverged at the paper's lr where QDWH converged"),
)

LOGISTIC_REFERENCES: Tuple[Reference, ...] = (
    Reference("PolarSGD (QDWH)", 1500, 1.016),
    Reference("PolarSGD (QDWH; lr decay)", 1500, 0.687),
    Reference("Muon (NS)", 1500, 0.950),
    Reference("Adam", 1500, 0.803),
    Reference("Adam (lr decay)", 1500, 0.688),
)


@dataclass(frozen=True)
class Reproduction:
    """One paper experiment: how to build it, at full and quick size, and what to compare with."""

    key: str
    title: str
    metric: str
    full: Any  # QuadraticConfig | LogisticConfig
    quick: Any
    quick_shrink: int  # every dimension of ``quick`` is the full one divided by this
    build: Callable[[Any, torch.device], Any]
    optimizers: Tuple[OptimizerSpec, ...]
    references: Tuple[Reference, ...]


QUADRATIC = Reproduction(
    key="quadratic",
    title="§6.1 matrix quadratic regression, f(X) = ½‖AXB − C‖²",
    metric="f(X_k) − f*",
    full=QuadraticConfig(),
    quick=QuadraticConfig(p=200, m=100, n=20, q=50, steps=1000, checkpoints=(125, 250, 500, 1000), record_every=5),
    quick_shrink=5,
    build=QuadraticProblem,
    optimizers=QUADRATIC_OPTIMIZERS,
    references=QUADRATIC_REFERENCES,
)

LOGISTIC = Reproduction(
    key="logistic",
    title="§6.2 matrix logistic regression, minibatch Σ softplus(−C ⊙ A_b X B)",
    metric="full-data loss per entry",
    full=LogisticConfig(),
    quick=LogisticConfig(rows=2000, m=200, n=20, q=80, batch=200, steps=600, checkpoints=(100, 200, 400, 600), record_every=20),
    quick_shrink=5,
    build=LogisticProblem,
    optimizers=LOGISTIC_OPTIMIZERS,
    references=LOGISTIC_REFERENCES,
)

REPRODUCTIONS: Dict[str, Reproduction] = {r.key: r for r in (QUADRATIC, LOGISTIC)}


@dataclass
class ReproductionResult:
    """Curves of one experiment plus what is needed to read them."""

    reproduction: Reproduction
    config: Any
    lr_multiplier: float
    curves: Dict[str, Curve] = field(default_factory=dict)
    extra: Dict[str, float] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        rep = self.reproduction
        return {
            "title": rep.title,
            "metric": rep.metric,
            "config": asdict(self.config),
            "nuclear_lr_multiplier": self.lr_multiplier,
            **self.extra,
            "optimizers": {
                spec.name: {**spec.describe(), **self.curves[spec.name].to_json()}
                for spec in rep.optimizers
                if spec.name in self.curves
            },
        }


def select(specs: Sequence[OptimizerSpec], only: Optional[Sequence[str]]) -> List[OptimizerSpec]:
    """The specs whose name contains any of ``only`` (case-insensitive); all of them for None."""
    if not only:
        return list(specs)
    keys = [k.lower() for k in only]
    return [s for s in specs if any(k in s.name.lower() for k in keys)]


def run_reproduction(
    rep: Reproduction,
    config: Any,
    *,
    lr_multiplier: float = 1.0,
    device: torch.device | str = "cpu",
    only: Optional[Sequence[str]] = None,
    log: Callable[[str], None] = print,
) -> ReproductionResult:
    """Build the problem from ``config`` and run every selected optimizer on it from the same X₀."""
    problem = rep.build(config, torch.device(device))
    result = ReproductionResult(rep, config, lr_multiplier)
    if isinstance(problem, QuadraticProblem):
        result.extra = {"f_star": problem.f_star}
    marks = record_steps(config.steps, config.record_every, config.checkpoints)
    for spec in select(rep.optimizers, only):
        curve = run_optimizer(problem, spec, config.steps, marks, lr_multiplier if spec.nuclear_lr else 1.0)
        result.curves[spec.name] = curve
        status = f"diverged at step {curve.diverged_at}" if curve.diverged_at is not None else f"final {fmt(curve.values[-1])}"
        log(f"  {spec.name:<32} {status:<28} {curve.seconds:6.1f} s")
        if curve.diverged_at is not None and spec.nuclear_lr and spec.hparams.get("polar") != "qdwh":
            log(
                f"    {spec.name}: the paper's lr was tuned for its QDWH polar factor, whose singular values in "
                "about [0.73, 1] damp the step; this more exact polar factor takes a longer step at that lr "
                "(compare the QDWH row)"
            )
    return result


def _config_for(rep: Reproduction, quick: bool, steps: Optional[int]) -> Any:
    config = rep.quick if quick else rep.full
    if steps is not None:
        config = replace(config, steps=steps, checkpoints=tuple(s for s in config.checkpoints if s <= steps) or (steps,))
    return config


def _sizes(config: Any) -> str:
    if isinstance(config, QuadraticConfig):
        return f"A {config.p}×{config.m}, X {config.m}×{config.n}, B {config.n}×{config.q}"
    return f"A {config.rows}×{config.m}, X {config.m}×{config.n}, B {config.n}×{config.q}, batch {config.batch}"


def report(result: ReproductionResult, quick: bool) -> str:
    """The markdown section for one experiment: sizes, checkpoint table, reference table."""
    rep, config = result.reproduction, result.config
    lines = [f"### {rep.title}", "", f"{_sizes(config)}, {config.steps} steps, seed {config.seed}; metric: {rep.metric}."]
    if "f_star" in result.extra:
        lines.append(f"f* = {result.extra['f_star']:.6f} (float64, X* = A⁺CB⁺ by lstsq).")
    if quick:
        lines.append(
            f"Quick size (every dimension /{rep.quick_shrink}; nuclear-scaled lrs ×{result.lr_multiplier:g}): "
            "not comparable with the paper's figures."
        )
    lines += ["", checkpoint_table(rep.optimizers, result.curves, config.checkpoints, result.lr_multiplier), ""]
    if not quick:
        lines += ["Against the paper's figures:", "", reference_table(rep.references, result.curves), ""]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fpolar paper",
        description="Reproduce the PolarGrad paper's §6.1 (matrix quadratic regression) and §6.2 (matrix "
        "logistic regression) with PolarGrad, PolarGradM, Muon and Adam, and print tables beside the paper's figures.",
    )
    parser.add_argument("--quick", action="store_true", help="5× smaller problems, fewer steps (about a minute on a 2-core CPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--problem", choices=("quadratic", "logistic", "all"), default="all")
    parser.add_argument("--out", default=None, metavar="PATH", help="write the curves as JSON")
    parser.add_argument("--plot", default=None, metavar="PATH.png", help="plot the curves (needs matplotlib)")
    parser.add_argument("--only", default=None, metavar="A,B", help="run only optimizers whose name contains one of these")
    parser.add_argument("--steps", type=positive_int, default=None, help="override the number of steps")
    parser.add_argument("--seed", type=int, default=None, help="override the data seed (default 42)")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: 1 with --quick, else torch's)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m fpolar paper [--quick] [--device D] [--problem P] [--out PATH] [--plot PATH.png]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    plot_path = args.plot
    if plot_path and not matplotlib_available():
        # The curves (tables, --out) are the result; a missing plotting library should not cost the run.
        print(f"warning: matplotlib is not importable, so --plot {plot_path} is skipped (pip install 'fpolar[bench]')", file=sys.stderr)
        plot_path = None
    device = usable_device(args.device, parser.prog)
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    keys = list(REPRODUCTIONS) if args.problem == "all" else [args.problem]
    if args.only is not None:
        names = [spec.name for key in keys for spec in REPRODUCTIONS[key].optimizers]
        if not only or not any(select(REPRODUCTIONS[key].optimizers, only) for key in keys):
            parser.error(f"--only {args.only!r} matches no optimizer; names: {', '.join(dict.fromkeys(names))}")
    threads = args.threads if args.threads is not None else (1 if args.quick and device.type == "cpu" else None)

    print(f"fpolar paper reproductions on {device} ({'quick' if args.quick else 'full size'}); "
          f"command: python -m fpolar paper {shlex.join(argv)}".rstrip())
    results: Dict[str, ReproductionResult] = {}
    with cpu_threads(threads):
        for key in keys:
            rep = REPRODUCTIONS[key]
            config = _config_for(rep, args.quick, args.steps)
            if args.seed is not None:
                config = replace(config, seed=args.seed)
            multiplier = float(rep.quick_shrink**3) if args.quick else 1.0
            print(f"\n{rep.title}")
            results[key] = run_reproduction(rep, config, lr_multiplier=multiplier, device=device, only=only)

    print()
    for key, result in results.items():
        print(report(result, args.quick))
    if args.out:
        payload = {
            "argv": argv,
            "device": str(device),
            "quick": args.quick,
            "torch": torch.__version__,
            "problems": {k: r.to_json() for k, r in results.items()},
        }
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=1, allow_nan=False)
        print(f"curves written to {args.out}")
    if plot_path:
        panels = [(r.reproduction.title, r.reproduction.metric, r.curves) for r in results.values()]
        plot_curves(panels, plot_path)
        print(f"plot written to {plot_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
