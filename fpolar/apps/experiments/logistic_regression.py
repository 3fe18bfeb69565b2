"""§6.2 of the PolarGrad paper: matrix logistic regression with minibatches.

    f(X) = Σ_{i,j} softplus(−C_ij · (A X B)_ij),   C_ij ∈ {−1, +1}

A ∈ ℝ^{N×m} and B ∈ ℝ^{n×q} are N(0, 1), labels C = 2·1[N(0, 1) > 0.5] − 1 (about 31% positive,
independent of A: the model can only fit them by memorizing), X₀ ~ U(−1, 1)^{m×n}. The paper's sizes
are N = 10000, (m, n) = (1000, 100), q = 400, and each step uses the summed loss of 1000 rows of A and
C drawn with replacement. The reported number is the full-data loss divided by the number of entries
of C, so it reads in nats per label.

All draws, including the row indices of every step, come from one seeded CPU ``torch.Generator``:
every optimizer sees the same batches, on every device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class LogisticConfig:
    """Sizes, step count and checkpoints of one §6.2 run (defaults: the paper's)."""

    rows: int = 10000
    m: int = 1000
    n: int = 100
    q: int = 400
    batch: int = 1000
    steps: int = 1500
    checkpoints: Tuple[int, ...] = (250, 500, 1000, 1500)
    record_every: int = 50
    seed: int = 42


def logistic_loss(x: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Σ softplus(−C ⊙ A X B), in the dtype of the inputs."""
    return F.softplus(-c * (a @ x @ b)).sum()


def logistic_grad(x: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """∇f(X) = Aᵀ D Bᵀ with D = −C ⊙ σ(−C ⊙ A X B), the closed form of ``logistic_loss``'s gradient."""
    d = -c * torch.sigmoid(-c * (a @ x @ b))
    return a.mT @ (d @ b.mT)


class LogisticProblem:
    """The §6.2 problem on one device (float32 data).

    Attributes:
        a, b, c: float32 data on ``device``; x0: float32 initial iterate (m, n).
        batch_rows: (steps, batch) int64 row indices, one row of indices per step.
    """

    name = "logistic"
    metric_name = "full-data loss per entry"

    def __init__(self, config: LogisticConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        gen = torch.Generator().manual_seed(config.seed)
        a = torch.randn(config.rows, config.m, generator=gen)
        b = torch.randn(config.n, config.q, generator=gen)
        c = 2.0 * (torch.randn(config.rows, config.q, generator=gen) > 0.5).float() - 1.0
        x0 = torch.rand(config.m, config.n, generator=gen) * 2 - 1
        rows = torch.randint(0, config.rows, (config.steps, config.batch), generator=gen)
        self.device = torch.device(device)
        self.a, self.b, self.c, self.x0, self.batch_rows = (t.to(self.device) for t in (a, b, c, x0, rows))

    def gradient(self, x: Tensor, step: int) -> Tensor:
        """Gradient of the summed loss over the rows drawn for ``step`` (1-based)."""
        idx = self.batch_rows[(step - 1) % self.batch_rows.shape[0]]
        return logistic_grad(x, self.a[idx], self.b, self.c[idx])

    def metric(self, x: Tensor) -> float:
        """Full-data loss / number of labels; logits in float32 as trained, the sum in float64."""
        z = self.a @ x @ self.b
        return float(F.softplus(-self.c * z).sum(dtype=torch.float64)) / self.c.numel()
