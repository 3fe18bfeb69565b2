"""A Hugging Face ``transformers`` model trained by its ``Trainer`` with fpolar.optim.Muon.

    pip install transformers   # not a dependency of fpolar
    python examples/hf_trainer.py

``Trainer(optimizers=(optimizer, scheduler))`` takes any torch.optim optimizer: fpolar.optim.Muon runs
the Muon step on the hidden matrices (GPT-2's attention and MLP ``Conv1D`` weights) and AdamW on the
embeddings, the tied head, biases and LayerNorms, in one ``step()`` that the Trainer calls like
AdamW's (gradient clipping, LR scheduler, ``zero_grad`` included). The model here is a tiny GPT-2 built
from a config (no download) on a synthetic next-token task, so it runs on a CPU in seconds.
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Dict, List

import torch

import fpolar.optim


def synthetic_dataset(n: int, seq: int, vocab: int, seed: int = 0) -> List[Dict[str, torch.Tensor]]:
    """Sequences following a fixed token-to-token map, as ``{"input_ids", "labels"}`` examples."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = [int(torch.randint(0, vocab, (1,), generator=g))]
        for _ in range(seq - 1):
            ids.append((5 * ids[-1] + 3) % vocab)
        t = torch.tensor(ids)
        rows.append({"input_ids": t, "labels": t.clone()})
    return rows


def train(steps: int = 30, lr: float = 0.02, adamw_lr: float = 3e-3, output_dir: str | None = None) -> dict:
    """Train a tiny GPT-2 for ``steps`` steps; returns the Trainer's log history and the optimizer."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=32, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    # param_groups: matrices → Muon; embeddings, the (tied) head, biases, norms → AdamW.
    optimizer = fpolar.optim.Muon(fpolar.optim.param_groups(model, adamw={"lr": adamw_lr}), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / max(steps, 1))
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=output_dir or tmp,
            max_steps=steps,
            per_device_train_batch_size=8,
            logging_steps=max(steps // 5, 1),
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=synthetic_dataset(64, 16, config.vocab_size),
            optimizers=(optimizer, scheduler),
        )
        trainer.train()
    return {"log": trainer.state.log_history, "optimizer": optimizer, "model": model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    result = train(args.steps)
    for entry in result["log"]:
        if "loss" in entry:
            print(f"step {entry['step']:>4}  loss {entry['loss']:.4f}  lr {entry.get('learning_rate', float('nan')):.4g}")


if __name__ == "__main__":
    main()
