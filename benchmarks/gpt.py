"""A GPT-2-style language model for the end-to-end benchmarks and compile tests.

GPT-2's layout: token and learned position embeddings, pre-LayerNorm blocks of causal self-attention
(``F.scaled_dot_product_attention``, ``is_causal=True``) and a GELU MLP with 4× width, a final
LayerNorm and an output head, tied to the token embedding or not. No dropout, so a compiled forward
equals an eager one. Parameter names follow GPT-2's (``wte``, ``wpe``, ``h.{i}.attn.c_attn``, ...,
``lm_head``) so that ``fpolar.optim.param_groups`` sends the embeddings and the head to AdamW.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class GPTConfig:
    layers: int = 12
    d_model: int = 768
    heads: int = 12
    vocab: int = 50304  # GPT-2's 50257 padded to a multiple of 128
    block: int = 1024  # longest sequence (rows of the position embedding)
    tied_head: bool = False


GPT2_SMALL = GPTConfig()
GPT2_MEDIUM = GPTConfig(layers=24, d_model=1024, heads=16)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if cfg.d_model % cfg.heads:
            raise ValueError(f"d_model {cfg.d_model} is not a multiple of heads {cfg.heads}")
        self.heads = cfg.heads
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.c_proj = nn.Linear(4 * cfg.d_model, cfg.d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """``model(idx) -> logits``: idx (batch, seq) int64 token ids, seq ≤ cfg.block; logits
    (batch, seq, vocab) in the compute dtype (bf16 under autocast)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab, cfg.d_model)
        self.wpe = nn.Embedding(cfg.block, cfg.d_model)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        if cfg.tied_head:
            self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                # GPT-2's init; residual projections scaled by 1/√(2·layers)
                std = 0.02 / (2 * cfg.layers) ** 0.5 if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: Tensor) -> Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def lm_loss(model: nn.Module, idx: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy in fp32 (``loss_fn(model, *batch)`` for ``make_train_step``)."""
    logits = model(idx)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def is_hidden_matrix(name: str, p: Tensor) -> bool:
    """The Muon split: ≥ 2-D weights of the blocks; embeddings and head (and 0-/1-D params) go to AdamW."""
    return p.dim() >= 2 and name.startswith("h.")


def random_batch(cfg: GPTConfig, batch: int, seq: int, device: torch.device, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """Uniform random token ids and their one-position shift as targets (timing does not need text)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab, (batch, seq + 1), generator=gen).to(device)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
