"""PyTorch Lightning with fpolar.optim.Muon returned from ``configure_optimizers``.

    pip install lightning   # not a dependency of fpolar
    python examples/lightning_module.py

Lightning steps any torch.optim optimizer it is given, with its scheduler: one fpolar.optim.Muon holds
the Muon step for the hidden matrices and AdamW for the rest (``fpolar.optim.param_groups``), so the
module needs no second optimizer and no manual optimization.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import fpolar.optim


def make_module(lr: float = 0.02, adamw_lr: float = 3e-3, steps: int = 30):
    import lightning as L

    class TinyLM(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(32, 32)
            self.mlp = nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
            self.lm_head = nn.Linear(32, 32, bias=False)
            self.losses: list = []

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            x = self.embed(idx)
            return self.lm_head(x + self.mlp(x))

        def training_step(self, batch, batch_idx):
            idx, target = batch
            loss = nn.functional.cross_entropy(self(idx).flatten(0, 1), target.flatten())
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            optimizer = fpolar.optim.Muon(fpolar.optim.param_groups(self, adamw={"lr": adamw_lr}), lr=lr)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / max(steps, 1))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    return TinyLM()


def synthetic_loader(n: int = 256, seq: int = 12, vocab: int = 32, batch: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (n, seq), generator=g)
    data = torch.utils.data.TensorDataset(idx, (7 * idx + 3) % vocab)
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False)


def train(steps: int = 30):
    """Fit the module for ``steps`` steps on CPU; returns (module, trainer)."""
    import lightning as L

    torch.manual_seed(0)
    module = make_module(steps=steps)
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, synthetic_loader())
    return module, trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    module, _ = train(args.steps)
    for i in range(0, len(module.losses), max(len(module.losses) // 5, 1)):
        print(f"step {i + 1:>4}  loss {module.losses[i]:.4f}")
    print(f"step {len(module.losses):>4}  loss {module.losses[-1]:.4f}")


if __name__ == "__main__":
    main()
