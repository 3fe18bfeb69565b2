"""Switching from torch.optim.Muon (+ a second AdamW optimizer) to fpolar.optim.Muon.

    python examples/switch_from_torch_muon.py

Trains the same small language-model-shaped network three ways for a few steps on CPU and prints the
losses:

1. torch.optim.Muon on the 2-D hidden matrices plus torch.optim.AdamW on everything else (the
   recipe in torch.optim.Muon's docs: two optimizers, two step() calls);
2. the one-line switch: fpolar.optim.Muon with the same arguments, the rest routed to AdamW inside
   the same optimizer by fpolar.optim.param_groups;
3. fpolar.optim.PolarGrad (nuclear-norm scaling) with the same grouping.

(1) and (2) follow the same trajectory up to Newton–Schulz rounding (torch iterates in bf16, fpolar in
fp32 on CPU).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import fpolar.optim


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 64, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        x = x + self.down(torch.relu(self.up(self.norm(x))))
        return self.lm_head(x)


def batches(n: int, vocab: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        idx = torch.randint(0, vocab, (8, 16), generator=g)
        yield idx, (7 * idx + 3) % vocab  # a fixed token-to-token map the model can learn


def train(model: nn.Module, optimizers, steps: int = 30) -> float:
    for idx, target in batches(steps):
        for opt in optimizers:
            opt.zero_grad()
        loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), target.flatten())
        loss.backward()
        for opt in optimizers:
            opt.step()
    return loss.item()


def main() -> None:
    torch.manual_seed(0)
    base = TinyLM()

    # 1. torch.optim: Muon only takes 2-D params, so hidden matrices and the rest need two optimizers.
    model = copy.deepcopy(base)
    hidden = [model.up.weight, model.down.weight]
    rest = [p for p in model.parameters() if all(p is not h for h in hidden)]
    torch_opts = [
        torch.optim.Muon(hidden, lr=0.02, weight_decay=0.1),
        torch.optim.AdamW(rest, lr=3e-3, weight_decay=0.0),
    ]
    print(f"torch.optim.Muon + AdamW   final loss {train(model, torch_opts):.4f}")

    # 2. fpolar: the same Muon arguments, one optimizer; param_groups sends vectors, the embedding and
    #    the lm_head to AdamW (with the AdamW settings given here), everything else to Muon.
    model = copy.deepcopy(base)
    groups = fpolar.optim.param_groups(model, adamw={"lr": 3e-3, "weight_decay": 0.0})
    opt = fpolar.optim.Muon(groups, lr=0.02, weight_decay=0.1)
    print(f"fpolar.optim.Muon          final loss {train(model, [opt]):.4f}")

    # 3. PolarGrad: the polar factor scaled by the nuclear norm of the momentum, so the step length
    #    follows the gradient's size; its lr is tuned separately from Muon's.
    model = copy.deepcopy(base)
    groups = fpolar.optim.param_groups(model, adamw={"lr": 3e-3, "weight_decay": 0.0})
    opt = fpolar.optim.PolarGrad(groups, lr=1e-1)
    print(f"fpolar.optim.PolarGrad     final loss {train(model, [opt]):.4f}")


if __name__ == "__main__":
    main()
