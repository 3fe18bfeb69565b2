"""What a Newton–Schulz schedule does past the end of its list: a tail that converges, and a check that
cycling the list stays bounded.

Each step maps every singular value σ by the odd quintic p(σ) = aσ + bσ³ + cσ⁵. The tuned lists
(muon, quintic, polar_express, aol) push [0, 1] into a band around 1 in few steps, but none has 1 as
a fixed point: repeating polar_express's last triple (a + b + c ≈ 1.06) settles σ near 1.035, and
PolarGrad's scale ⟨O, X⟩ then overstates ‖X‖_* by as much.

``STABLE_TAIL`` is the classic quintic Newton–Schulz step (15/8, −5/4, 3/8): a + b + c = 1 makes 1 a
fixed point, and p'(1) = p''(1) = 0 make it super-attracting (the error is cubed at each step). p is
increasing on [0, 1] with p(σ) ≥ σ there, and σ up to 1.5 converges to 1 (1.6 diverges; both pinned
in tests/test_numerics.py), so the band a tuned list leaves converges to 1 in a few more steps.

Cycling a list restarts it from its first triple, which expects σ near 0, with σ already near 1:
polar_express's first step maps 1 to 1.55 and diverges. ``cycle_is_bounded`` iterates the scalar map on
a grid of σ and says whether cycling stays within the range one pass of the list reaches.
"""

from __future__ import annotations

from typing import Sequence, Tuple

Coefficient = Tuple[float, float, float]

STABLE_TAIL: Coefficient = (15.0 / 8.0, -10.0 / 8.0, 3.0 / 8.0)

# A cycled schedule whose scalar orbits exceed this has left the region where NS converges.
BOUND = 1.5


def with_tail(listed: Sequence[Coefficient], steps: int) -> Tuple[Coefficient, ...]:
    """The first ``steps`` triples of ``listed`` followed by ``STABLE_TAIL``."""
    n = len(listed)
    return tuple(listed[i] if i < n else STABLE_TAIL for i in range(steps))


def scalar_map(schedule: Sequence[Coefficient], sigma: float) -> float:
    """σ after the whole schedule, in float64 arithmetic (inf if it overflows)."""
    for a, b, c in schedule:
        s2 = sigma * sigma
        sigma = sigma * (a + s2 * (b + c * s2))
        if not abs(sigma) <= 1e30:
            return float("inf")
    return sigma


def _orbit_peak(schedule: Sequence[Coefficient], top: float, points: int) -> float:
    """The largest |σ| reached at any step of ``schedule`` from σ ∈ [0, top] (inf once past 1e30)."""
    peak = 0.0
    for i in range(points):
        sigma = top * i / (points - 1)
        for a, b, c in schedule:
            s2 = sigma * sigma
            sigma = sigma * (a + s2 * (b + c * s2))
            if not abs(sigma) <= 1e30:
                return float("inf")
            peak = max(peak, abs(sigma))
    return peak


def cycle_is_bounded(listed: Sequence[Coefficient], steps: int, top: float, points: int = 257) -> bool:
    """Whether cycling ``listed`` for ``steps`` steps keeps every σ ∈ [0, top] within the range one pass
    of the list reaches (or ``BOUND``, whichever is larger), up to 5%.

    ``top`` is the largest singular value after the input normalization (1/safety)."""
    one_pass = _orbit_peak(listed, top, points)
    cycled = tuple(listed[i % len(listed)] for i in range(steps))
    return _orbit_peak(cycled, top, points) <= 1.05 * max(BOUND, one_pass)
