"""The optimizers of the paper reproductions, as data: one ``OptimizerSpec`` per curve.

Every spec drives fpolar's functional API on the single matrix parameter X: ``polargrad_step`` for
PolarGrad / PolarGradM / Muon (the hparams differ only in momentum, order, scale rule and polar
backend), ``adamw_step`` with weight_decay = 0 for Adam.

The "lr decay" variants follow the paper's code: ``torch.optim.lr_scheduler.StepLR(step_size=25,
gamma)`` stepped after every update, i.e. step k (1-based) uses lr₀·γ^⌊(k − 1)/25⌋. The lr is a 0-d
tensor updated with ``fill_``, the way fpolar schedules scalars.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Literal, Mapping, Optional

import torch
from torch import Tensor

import fpolar

Family = Literal["polargrad", "adam"]
# Update X in place given the gradient at X and the 1-based step number.
Stepper = Callable[[Tensor, Tensor, int], None]

DECAY_PERIOD = 25


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer configuration.

    Attributes:
        name: label in tables, JSON and plots.
        family: "polargrad" (``fpolar.polargrad_step``) or "adam" (``fpolar.adamw_step``, no decay).
        lr: the paper's step size at the paper's problem size.
        hparams: extra ``PolarGradHParams`` fields (momentum, order, scale, polar, ...).
        decay_gamma: StepLR factor every 25 steps, or None for a constant lr.
        nuclear_lr: True when the step is lr·‖·‖_*·O: its stable lr shrinks with the problem size, so
            a smaller problem scales it up (see ``fpolar.apps.experiments.paper``).
    """

    name: str
    family: Family
    lr: float
    hparams: Mapping[str, Any] = field(default_factory=dict)
    decay_gamma: Optional[float] = None
    nuclear_lr: bool = False

    def lr_at(self, step: int, lr0: float) -> float:
        """The lr of 1-based ``step`` under this spec's schedule, starting from ``lr0``."""
        if self.decay_gamma is None:
            return lr0
        return lr0 * self.decay_gamma ** ((step - 1) // DECAY_PERIOD)

    def describe(self) -> Dict[str, Any]:
        """JSON-friendly summary (dtype objects as strings)."""
        hp = {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in self.hparams.items()}
        return {"family": self.family, "lr": self.lr, "hparams": hp, "decay_gamma": self.decay_gamma}


def make_stepper(spec: OptimizerSpec, x: Tensor, lr_multiplier: float = 1.0) -> Stepper:
    """A fresh optimizer state for parameter ``x`` and a function doing one step of ``spec``.

    ``lr_multiplier`` rescales ``spec.lr`` (used only for the smaller ``--quick`` problems).
    """
    lr0 = spec.lr * lr_multiplier
    lr = torch.tensor(lr0, dtype=torch.float32, device=x.device)
    if spec.family == "adam":
        ahp = fpolar.AdamWHParams(lr=lr, weight_decay=0.0)
        astate = fpolar.init_adamw_state([x], ahp)

        def adam(param: Tensor, grad: Tensor, step: int) -> None:
            lr.fill_(spec.lr_at(step, lr0))
            fpolar.adamw_step([param], [grad], astate, ahp)

        return adam

    hp = fpolar.PolarGradHParams(lr=lr, **dict(spec.hparams))
    state = fpolar.init_state([x], hp)

    def polargrad(param: Tensor, grad: Tensor, step: int) -> None:
        lr.fill_(spec.lr_at(step, lr0))
        fpolar.polargrad_step([param], [grad], state, hp)

    return polargrad
