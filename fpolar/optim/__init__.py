"""torch.optim drop-ins over fpolar's functional steps.

    import fpolar.optim
    opt = fpolar.optim.Muon(fpolar.optim.param_groups(model), lr=0.02)   # was torch.optim.Muon(...)

``PolarGrad`` and ``Muon`` are ``torch.optim.Optimizer`` subclasses: param groups, ``state_dict`` /
``load_state_dict``, LR schedulers, closures, hooks and ``torch.compile(opt.step)`` work as with
torch.optim. Each param group runs one algorithm: "polargrad" (the polar step on matrices) or "adamw";
``param_groups(model)`` builds the usual split (matrices vs. biases, norms, embeddings, head).

From torch.optim: ``Muon.load_state_dict`` takes a ``torch.optim.Muon`` checkpoint, and
``Muon.from_torch(muon, adamw)`` continues a torch.optim.Muon + torch.optim.AdamW pair as one optimizer;
``Muon.torch_state_dicts`` goes back (see ``fpolar.optim.torch_migration``).
"""

from .base import PolarOptimizer
from .group_state import ALGORITHMS
from ..routing import is_matrix
from .groups import HEAD_NAMES, param_groups
from .muon import Muon
from .polargrad import PolarGrad

__all__ = ["ALGORITHMS", "HEAD_NAMES", "Muon", "PolarGrad", "PolarOptimizer", "is_matrix", "param_groups"]
