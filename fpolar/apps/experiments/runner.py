"""Run one optimizer on one problem and record its curve; the loop every reproduction shares.

A problem is anything with ``x0``, ``gradient(x, step)`` and ``metric(x)`` (see
``quadratic_regression`` and ``logistic_regression``). The metric is evaluated (with a host sync) at
step 0, every ``record_every`` steps, at the checkpoints and at the end; the steps in between never
leave the device.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Protocol

import torch
from torch import Tensor

from .optimizers import OptimizerSpec, make_stepper

# A run is stopped, and reported as diverged, once its metric is not finite or exceeds this multiple
# of its starting value: nothing is learned from the remaining steps and on a CPU they cost minutes.
DIVERGENCE_FACTOR = 1e3


class Problem(Protocol):
    x0: Tensor

    def gradient(self, x: Tensor, step: int) -> Tensor: ...

    def metric(self, x: Tensor) -> float: ...


@dataclass
class Curve:
    """The recorded metric of one run. ``diverged_at`` is the step where the run was stopped, if any."""

    name: str
    steps: List[int] = field(default_factory=list)
    values: List[float] = field(default_factory=list)
    diverged_at: Optional[int] = None
    seconds: float = 0.0

    def at(self, step: int) -> Optional[float]:
        """The value recorded at ``step``; None if the run was stopped before it."""
        try:
            return self.values[self.steps.index(step)]
        except ValueError:
            return None

    def best(self) -> tuple[int, float]:
        """(step, value) of the smallest finite recorded value."""
        finite = [(v, s) for s, v in zip(self.steps, self.values) if math.isfinite(v)]
        v, s = min(finite)
        return s, v

    def to_json(self) -> Dict[str, object]:
        # JSON has no inf/nan; those are exactly the diverged values, so they become None.
        return {
            "steps": self.steps,
            "values": [v if math.isfinite(v) else None for v in self.values],
            "diverged_at": self.diverged_at,
            "seconds": self.seconds,
        }


def record_steps(steps: int, record_every: int, checkpoints: Iterable[int]) -> List[int]:
    """Sorted steps (0 … steps) at which the metric is recorded."""
    marks = set(range(0, steps + 1, record_every)) | {s for s in checkpoints if s <= steps} | {0, steps}
    return sorted(marks)


def run_optimizer(
    problem: Problem,
    spec: OptimizerSpec,
    steps: int,
    record_at: List[int],
    lr_multiplier: float = 1.0,
) -> Curve:
    """Train a copy of ``problem.x0`` with ``spec`` for ``steps`` steps; the original is not modified."""
    x = problem.x0.clone()
    step_fn = make_stepper(spec, x, lr_multiplier)
    curve = Curve(spec.name)
    marks = set(record_at)
    start = time.perf_counter()
    with torch.no_grad():
        first = problem.metric(x)
        curve.steps.append(0)
        curve.values.append(first)
        for k in range(1, steps + 1):
            step_fn(x, problem.gradient(x, k), k)
            if k in marks:
                value = problem.metric(x)
                curve.steps.append(k)
                curve.values.append(value)
                if not math.isfinite(value) or abs(value) > DIVERGENCE_FACTOR * abs(first):
                    curve.diverged_at = k
                    break
    curve.seconds = time.perf_counter() - start
    return curve


@contextmanager
def cpu_threads(count: Optional[int]) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)`` (None: leave it), then restore the old value.

    For the small ``--quick`` matrices (≤ 200 on a side) a second thread costs more than it saves; on a
    busy 2-core machine, waiting OpenMP threads made each small op about 10× slower (measured: a
    20×200 Newton–Schulz polar 0.28 ms on one thread, 1.8 ms on two).
    """
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
