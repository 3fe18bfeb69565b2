"""Newton–Schulz coefficient schedules.

One NS step on a wide matrix X (m ≤ n) applies the odd polynomial
``X ← a·X + b·(XXᵀ)X + c·(XXᵀ)²X``; a schedule is the list of (a, b, c) per step. Each named schedule
also fixes how the input is normalized before the first step (``safety``: X / (safety·‖X‖_F + eps))
and how many steps a user gets by default.

Sources of the numbers: "muon" is Keller Jordan's Muon; "quintic" the 5-step list of modded-nanogpt /
Emerging-Optimizers; "polar_express" Amsel et al. (2025) in modded-nanogpt's 5-step form with the 1.02
safety factor; "aol" Turbo-Muon's 4 steps after AOL preconditioning (row scaling applied after the
Frobenius normalization, see ``fpolar.polar.newton_schulz``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence, Tuple, Union

Coefficient = Tuple[float, float, float]
ScheduleName = Literal["polar_express", "muon", "quintic", "aol"]
CoefficientSpec = Union[ScheduleName, Sequence[Sequence[float]]]
Overflow = Literal["repeat_last", "cycle"]


@dataclass(frozen=True)
class NamedSchedule:
    coefficients: Tuple[Coefficient, ...]
    default_steps: int
    # X is divided by (safety·‖X‖_F + eps) so that σ_max(X) ≤ 1/safety; polar_express's first
    # coefficients assume a margin below 1.
    safety: float
    # "frobenius": divide by the Frobenius norm; "aol": the same, then AOL row scaling (Turbo-Muon).
    normalization: Literal["frobenius", "aol"]


SCHEDULES: dict[str, NamedSchedule] = {
    "muon": NamedSchedule(((3.4445, -4.7750, 2.0315),), 5, 1.0, "frobenius"),
    "quintic": NamedSchedule(
        (
            (4.0848, -6.8946, 2.9270),
            (3.9505, -6.3029, 2.6377),
            (3.7418, -5.5913, 2.3037),
            (2.8769, -3.1427, 1.2046),
            (2.8366, -3.0525, 1.2012),
        ),
        5,
        1.0,
        "frobenius",
    ),
    "polar_express": NamedSchedule(
        (
            (8.156554524902461, -22.48329292557795, 15.878769915207462),
            (4.042929935166739, -2.808917465908714, 0.5000178451051316),
            (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
            (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
            (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
        ),
        5,
        1.02,
        "frobenius",
    ),
    "aol": NamedSchedule(
        (
            # Turbo-Muon's current set (thib-s/flash-newton-schulz, also in microsoft/dion). On AOL-scaled
            # inputs with κ = 10 it leaves σ(O) in [0.941, 1.050]; an older tuple list circulating with
            # (4.4404, −7.4606, 3.0283) first left [0.762, 1.141] (measured in float64, 2026-11-22).
            (4.6051, -9.6552, 5.6769),
            (4.7505, -6.0861, 2.1790),
            (2.7763, -2.3190, 0.5523),
            (2.4231, -2.2861, 0.8193),
        ),
        4,
        1.0,
        "aol",
    ),
}


def resolve_named(spec: CoefficientSpec) -> NamedSchedule:
    """The schedule behind ``spec``: a name from ``SCHEDULES`` or an explicit list of (a, b, c).

    An explicit list gets Frobenius normalization with no safety margin and defaults to its own length.
    Raises ValueError/TypeError naming the bad entry.
    """
    if isinstance(spec, str):
        if spec not in SCHEDULES:
            raise ValueError(
                f"unknown coefficients {spec!r}; expected one of {sorted(SCHEDULES)} "
                "or a sequence of (a, b, c) triples"
            )
        return SCHEDULES[spec]
    try:
        triples = tuple(tuple(float(v) for v in t) for t in spec)
    except TypeError as e:
        raise TypeError(
            f"coefficients must be a schedule name or a sequence of (a, b, c) triples, got {spec!r}"
        ) from e
    if len(triples) == 0:
        raise ValueError("coefficients: an explicit schedule needs at least one (a, b, c) triple")
    for i, t in enumerate(triples):
        if len(t) != 3:
            raise ValueError(f"coefficients[{i}] = {t!r} is not an (a, b, c) triple")
        if any(v != v or v in (float("inf"), float("-inf")) for v in t):
            raise ValueError(f"coefficients[{i}] = {t!r} is not finite")
    return NamedSchedule(triples, len(triples), 1.0, "frobenius")


def expand_schedule(
    coefficients: Sequence[Coefficient], steps: int, overflow: Overflow = "repeat_last"
) -> Tuple[Coefficient, ...]:
    """The (a, b, c) used at each of ``steps`` steps.

    When ``steps`` exceeds the list, ``"repeat_last"`` repeats the final triple (the tuned tail of
    polar_express and quintic converges there) and ``"cycle"`` restarts the list.
    """
    n = len(coefficients)
    if overflow == "repeat_last":
        return tuple(coefficients[min(i, n - 1)] for i in range(steps))
    if overflow == "cycle":
        return tuple(coefficients[i % n] for i in range(steps))
    raise ValueError(f"unknown schedule overflow {overflow!r}; expected 'repeat_last' or 'cycle'")
