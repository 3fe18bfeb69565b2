"""§6.1 of the PolarGrad paper: matrix quadratic regression, min_X f(X) = ½‖A X B − C‖_F².

A ∈ ℝ^{p×m}, B ∈ ℝ^{n×q}, C ∈ ℝ^{p×q} are N(0, 1) and X₀ ~ U(−1, 1)^{m×n}; the paper's sizes are
(p, m, n, q) = (1000, 500, 100, 250). The data is float32, as in the paper; the optimum is computed in
float64, X* = A⁺ C B⁺ by two least-squares solves, so the reported gap f(X) − f* is not limited by
float32 rounding of two numbers near f* ≈ 10⁵.

Every tensor is drawn on the CPU from one seeded ``torch.Generator`` and then moved, so the problem is
the same on every device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
from torch import Tensor


@dataclass(frozen=True)
class QuadraticConfig:
    """Sizes, step count and checkpoints of one §6.1 run (defaults: the paper's)."""

    p: int = 1000
    m: int = 500
    n: int = 100
    q: int = 250
    steps: int = 4000
    checkpoints: Tuple[int, ...] = (500, 1000, 2000, 4000)
    record_every: int = 10
    seed: int = 42


def quadratic_loss(x: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """½‖A X B − C‖_F² in the dtype of the inputs."""
    return 0.5 * (a @ x @ b - c).square().sum()


def quadratic_grad(x: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """∇f(X) = Aᵀ (A X B − C) Bᵀ, the closed form (no autograd graph in the training loop)."""
    return a.mT @ ((a @ x @ b - c) @ b.mT)


def least_squares_solution(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """X* = A⁺ C B⁺ (the minimizer of ½‖A X B − C‖²), by lstsq on A then on Bᵀ; use float64 inputs.

    Two solves instead of forming (AᵀA)⁻¹ and (BBᵀ)⁻¹: squaring the condition numbers would cost
    digits the gap near 1 needs.
    """
    y = torch.linalg.lstsq(a, c).solution  # A⁺ C, (m, q)
    return torch.linalg.lstsq(b.mT, y.mT).solution.mT  # (A⁺ C) B⁺, (m, n)


class QuadraticProblem:
    """The §6.1 problem on one device: float32 data for training, float64 copies for the gap.

    Attributes:
        a, b, c: float32 data on ``device``.
        x0: float32 initial iterate, shape (m, n).
        x_star: float64 minimizer; f_star: f(X*) in float64.
    """

    name = "quadratic"
    metric_name = "f(X) − f*"

    def __init__(self, config: QuadraticConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        gen = torch.Generator().manual_seed(config.seed)
        a = torch.randn(config.p, config.m, generator=gen)
        b = torch.randn(config.n, config.q, generator=gen)
        c = torch.randn(config.p, config.q, generator=gen)
        x0 = torch.rand(config.m, config.n, generator=gen) * 2 - 1
        a64, b64, c64 = a.double(), b.double(), c.double()
        # Solved on the CPU: CUDA's lstsq has only the QR driver; the CPU result is the same everywhere.
        x_star = least_squares_solution(a64, b64, c64)
        self.device = torch.device(device)
        self.a, self.b, self.c, self.x0 = (t.to(self.device) for t in (a, b, c, x0))
        self.a64, self.b64, self.c64 = (t.to(self.device) for t in (a64, b64, c64))
        self.x_star = x_star.to(self.device)
        self.f_star = float(quadratic_loss(self.x_star, self.a64, self.b64, self.c64))

    def gradient(self, x: Tensor, step: int) -> Tensor:
        """Full-batch gradient at ``x`` (``step`` is unused: the problem is deterministic)."""
        del step
        return quadratic_grad(x, self.a, self.b, self.c)

    def loss64(self, x: Tensor) -> float:
        """f(X) in float64 (host sync: evaluation only)."""
        return float(quadratic_loss(x.double(), self.a64, self.b64, self.c64))

    def metric(self, x: Tensor) -> float:
        """The paper's y-axis: f(X) − f*, both in float64."""
        return self.loss64(x) - self.f_star
