"""Which rank orthogonalizes which matrix: longest-processing-time-first over shape groups.

Every rank runs this on the same inputs (shapes only, no communication) and gets the same answer, so
the exchange layout needs no agreement step.

Within one shape group every matrix costs the same, and the exchange sends each rank the same number
of slots, ⌈B/W⌉ (the count padded to a multiple of the world size W, so one ``all_to_all`` with equal
splits carries the whole group). What is left to choose is which ranks take the B mod W matrices of
the last, partial round. Groups are visited in order of falling per-matrix Newton–Schulz cost
(max·min² of the shape: the Gram product and the polynomial apply are both that order) and the
partial round goes to the least-loaded ranks so far (ties to the lower rank). That is LPT scheduling
under the equal-slot constraint: the heaviest matrices are spread first, the cheap ones fill the gaps.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple


def newton_schulz_cost(m: int, n: int) -> int:
    """Per-matrix cost of one NS iteration, up to a constant: max(m, n)·min(m, n)²."""
    lo, hi = min(m, n), max(m, n)
    return hi * lo * lo


def assign_owners(counts: Sequence[int], costs: Sequence[int], world_size: int) -> List[List[List[int]]]:
    """Owner slots per group: ``result[g][d]`` lists the indices (within group g) of the matrices rank d
    orthogonalizes, in slot order; every rank gets at most ⌈counts[g] / world_size⌉ of them.

    Args:
        counts: matrices per group (≥ 0).
        costs: per-matrix cost of each group (e.g. ``newton_schulz_cost``).
        world_size: W ≥ 1.

    Deterministic: a function of its arguments only. Matrices are dealt to ranks in rank order, so rank d
    takes a contiguous run of the group's matrices.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be ≥ 1, got {world_size}")
    if len(counts) != len(costs):
        raise ValueError(f"got {len(counts)} counts but {len(costs)} costs")
    load = [0] * world_size
    order = sorted(range(len(counts)), key=lambda g: (-costs[g], g))
    result: List[List[List[int]]] = [[] for _ in counts]
    for g in order:
        base, extra = divmod(counts[g], world_size)
        lightest = sorted(range(world_size), key=lambda d: (load[d], d))[:extra]
        per_rank = [base + (1 if d in lightest else 0) for d in range(world_size)]
        slots, start = [], 0
        for d, k in enumerate(per_rank):
            slots.append(list(range(start, start + k)))
            start += k
            load[d] += k * costs[g]
        result[g] = slots
    return result


def rank_loads(assignment: Sequence[Sequence[Sequence[int]]], costs: Sequence[int], world_size: int) -> Tuple[int, ...]:
    """Total cost per rank of an ``assign_owners`` result."""
    load = [0] * world_size
    for g, slots in enumerate(assignment):
        for d, owned in enumerate(slots):
            load[d] += len(owned) * costs[g]
    return tuple(load)
