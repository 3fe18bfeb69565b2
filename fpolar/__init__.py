"""fpolar: polar-factor optimizers (PolarGrad, PolarGradM, Muon) for PyTorch.

Functional API (lists of tensors in, updated in place, no hidden state):

    hp = fpolar.PolarGradHParams(lr=torch.tensor(1e-3))
    state = fpolar.init_state(matrix_params, hp)
    fpolar.polargrad_step(matrix_params, grads, state, hp)

``fpolar.polar(x)`` is the batched polar factor on its own; ``fpolar.adamw_step`` handles the
non-matrix parameters with the same conventions; ``fpolar.optim`` holds the torch.optim classes.
"""

from .adamw import adamw_step
from .coefficients import SCHEDULES
from .describe import describe_plan
from .hparams import AdamWHParams, PolarGradHParams
from .polar import PolarSpec, polar
from .polargrad import polargrad_step
from .scale import SCALE_RULES
from .distributed.state import init_state
from .state import AdamWState, PolarGradState, init_adamw_state

__version__ = "0.1.0"

__all__ = [
    "AdamWHParams",
    "AdamWState",
    "PolarGradHParams",
    "PolarGradState",
    "PolarSpec",
    "SCALE_RULES",
    "SCHEDULES",
    "adamw_step",
    "describe_plan",
    "init_adamw_state",
    "init_state",
    "polar",
    "polargrad_step",
]
