"""A small character-level language model trained with PolarGrad, Muon and AdamW, side by side.

    python benchmarks/lm.py [--json PATH] [--plot PATH.png]          # full size (GPU: a few minutes)
    python benchmarks/lm.py --quick --device cpu                      # smoke test, under a minute
    python benchmarks/lm.py --sweep [--quick --device cpu]            # learning-rate sweep

The corpus is generated here, deterministically (no download): stories from a small probabilistic
grammar with structure at several ranges — subject–verb number agreement across relative clauses,
characters introduced in a title and referred back to, a per-story setting that biases the vocabulary,
counting sequences, additions whose result must be computed, and a story number repeated at its end.

Model: a GPT (pre-LayerNorm, causal attention, GELU MLP, learned positions, untied head). Each run
starts from the same weights and sees the same batches; only the optimizer differs:

  polargrad  fpolar PolarGrad (nuclear-norm scale, EMA momentum) on the blocks' matrices + AdamW on the rest
  muon       fpolar Muon (shape scale √max(1, m/n), Nesterov) on the blocks' matrices + AdamW on the rest
  adamw      AdamW on everything
  torch_muon torch.optim.Muon on the blocks' matrices + AdamW on the rest (optional, --opts)

The embeddings, the output head and the LayerNorm gains always go to AdamW (at the AdamW lr). All runs
use the same schedule: linear warm-up over the first 5% of steps, then cosine decay to 10%.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: fpolar
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/: common

import fpolar  # noqa: E402
from common import environment, pick_device, print_header, print_table, save_json, sync  # noqa: E402

# --------------------------------------------------------------------------- the corpus

ADJECTIVES = ["brave", "old", "small", "quiet", "clever", "lazy", "red", "grey", "young", "proud", "shy", "wild"]
ANIMALS = [("fox", "foxes"), ("owl", "owls"), ("wolf", "wolves"), ("mouse", "mice"), ("bear", "bears"),
           ("crow", "crows"), ("deer", "deer"), ("hare", "hares"), ("goose", "geese"), ("cat", "cats")]
# Each setting has its own places, things (singular, plural) and verbs (3rd person singular, plural).
SETTINGS = {
    "forest": dict(places=["forest", "old oak", "dark wood", "mossy log"],
                   things=[("acorn", "acorns"), ("berry", "berries"), ("leaf", "leaves"), ("mushroom", "mushrooms")],
                   verbs=[("gathers", "gather"), ("hides", "hide"), ("finds", "find"), ("sniffs", "sniff")]),
    "sea": dict(places=["shore", "harbor", "rocky bay", "sand dune"],
                things=[("shell", "shells"), ("fish", "fish"), ("pebble", "pebbles"), ("boat", "boats")],
                verbs=[("watches", "watch"), ("catches", "catch"), ("carries", "carry"), ("counts", "count")]),
    "town": dict(places=["market", "bakery", "bridge", "clock tower"],
                 things=[("coin", "coins"), ("loaf", "loaves"), ("key", "keys"), ("lamp", "lamps")],
                 verbs=[("buys", "buy"), ("drops", "drop"), ("sells", "sell"), ("polishes", "polish")]),
    "mountain": dict(places=["peak", "cave", "cold ridge", "high pass"],
                     things=[("stone", "stones"), ("crystal", "crystals"), ("rope", "ropes"), ("nest", "nests")],
                     verbs=[("climbs to", "climb to"), ("guards", "guard"), ("breaks", "break"), ("stacks", "stack")]),
}
SEE = [("sees", "see"), ("follows", "follow"), ("helps", "help"), ("teases", "tease"), ("greets", "greet")]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


class StoryGrammar:
    """Generates the corpus, sentence by sentence, from one seeded ``random.Random``."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def noun_phrase(self, plural: bool, setting: dict, cast: List[Tuple[str, Tuple[str, str]]]) -> str:
        """A subject: one of the story's characters, or a group of animals, maybe with a relative clause."""
        r = self.r
        if not plural and r.random() < 0.6:
            adj, animal = r.choice(cast)
            head = f"the {adj} {animal[0]}" if r.random() < 0.4 else f"the {animal[0]}"
        else:
            animal = r.choice(ANIMALS)
            det = r.choice(["the", "some", NUMBERS[r.randint(2, 5)]]) if plural else r.choice(["the", "a"])
            adj = r.choice(ADJECTIVES) + " " if r.random() < 0.3 else ""
            head = f"{det} {adj}{animal[1] if plural else animal[0]}"
        if r.random() < 0.35:
            # The relative clause puts a noun of the other number between subject and verb.
            other = not plural if r.random() < 0.7 else plural
            obj = r.choice(ANIMALS)
            verb = r.choice(SEE)
            clause = f"that the {obj[1] if other else obj[0]} {verb[1] if other else verb[0]}"
            head = f"{head} {clause}"
        return head

    def sentence(self, setting: dict, cast, story_id: int) -> str:
        r = self.r
        kind = r.choices(["act", "see", "count", "add", "where"], weights=[5, 3, 1, 1.5, 2])[0]
        (a1, c1), (a2, c2) = cast
        if kind == "act":
            plural = r.random() < 0.4
            verb = r.choice(setting["verbs"])
            thing = r.choice(setting["things"])
            obj = f"the {thing[1]}" if r.random() < 0.5 else f"a {thing[0]}"
            return f"{self.noun_phrase(plural, setting, cast)} {verb[1] if plural else verb[0]} {obj} ."
        if kind == "see":
            plural = r.random() < 0.4
            verb = r.choice(SEE)
            target = r.choice([f"the {c1[0]}", f"the {c2[0]}"])
            return f"{self.noun_phrase(plural, setting, cast)} {verb[1] if plural else verb[0]} {target} ."
        if kind == "count":
            thing = r.choice(setting["things"])
            n = r.randint(2, 6)
            items = " , ".join(f"{NUMBERS[i]} {thing[0] if i == 1 else thing[1]}" for i in range(1, n + 1))
            return f"the {r.choice([c1, c2])[0]} counts : {items} ."
        if kind == "add":
            thing = r.choice(setting["things"])
            a, b = r.randint(1, 5), r.randint(1, 5)
            who = r.choice([c1, c2])[0]
            form = (lambda k: thing[0] if k == 1 else thing[1])
            return (f"the {who} has {NUMBERS[a]} {form(a)} and finds {NUMBERS[b]} more , "
                    f"so the {who} has {NUMBERS[a + b]} {form(a + b)} .")
        place = r.choice(setting["places"])
        return f"the {r.choice([c1, c2])[0]} walks to the {place} of story {story_id} ."

    def story(self) -> str:
        r = self.r
        story_id = r.randint(10, 999)
        setting = SETTINGS[r.choice(list(SETTINGS))]
        first, second = r.sample(ANIMALS, 2)
        cast = [(r.choice(ADJECTIVES), first), (r.choice(ADJECTIVES), second)]
        lines = [f"story {story_id} : the {cast[0][0]} {first[0]} and the {cast[1][0]} {second[0]}",
                 f"the {cast[0][0]} {first[0]} lives near the {r.choice(setting['places'])} ."]
        for _ in range(r.randint(2, 5)):
            lines.append(" ".join(self.sentence(setting, cast, story_id) for _ in range(r.randint(2, 4))))
        lines.append(f"the end of story {story_id} .")
        return "\n".join(lines) + "\n\n"


def make_corpus(n_chars: int, seed: int = 1234) -> str:
    """At least ``n_chars`` characters of stories; the same seed always gives the same text."""
    g = StoryGrammar(seed)
    parts, total = [], 0
    while total < n_chars:
        s = g.story()
        parts.append(s)
        total += len(s)
    return "".join(parts)


# --------------------------------------------------------------------------- the model


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d, bias=False)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.ln2 = nn.LayerNorm(d, bias=False)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.fc2 = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, ctx: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, bias=False)
        self.head = nn.Linear(d, vocab, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # GPT-2 init: residual-branch outputs scaled down with depth.
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "fc2.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx: Tensor, targets: Tensor) -> Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


def split_params(model: GPT) -> Tuple[List[Tensor], List[Tensor]]:
    """(the blocks' weight matrices, everything else: embeddings, head, LayerNorm gains)."""
    matrices, others = [], []
    for name, p in model.named_parameters():
        (matrices if p.dim() == 2 and name.startswith("blocks.") else others).append(p)
    return matrices, others


# --------------------------------------------------------------------------- optimizers

# Learning rates: the lowest final validation loss of this script's --sweep runs on a CPU, in two
# stages, with the hybrids' AdamW lr fixed at LR["adamw"]:
#   1. --quick (d=128, 2 layers, ctx 64, batch 16), 300 steps, each lr × 0.25…4 in factors of 2:
#      muon 0.02, adamw 6e-3, polargrad ≥ 0.02 (the grid's edge; re-centred: 0.08 ≈ 0.16 > 0.04).
#   2. The full model (d=256, 4 layers, ctx 128) at batch 16, 200 steps: adamw {7.5e-4: 1.47,
#      1.5e-3: 1.21, 3e-3: 1.55, 6e-3: 2.00}; muon {0.01: 0.487, 0.02: 0.411, 0.04: 0.419};
#      polargrad {0.04: 0.624, 0.08: 0.558, 0.16: 0.641} (val loss, nats/char).
# PolarGrad's lr is large because its step is lr·‖M‖_*·O and the momentum's nuclear norm shrinks as
# the loss falls. A full-size GPU check: `--sweep --steps 1000`; its last line names the best lrs.
LR: Dict[str, float] = {"polargrad": 0.08, "muon": 0.02, "adamw": 1.5e-3, "torch_muon": 0.02}
SWEEP_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
OPTIMIZERS = ("polargrad", "muon", "adamw", "torch_muon")


@dataclass
class Stepper:
    step: Callable[[], None]  # one optimizer step from the grads in .grad
    set_lr: Callable[[float], None]  # multiply every base lr by this schedule factor


def _adamw(params: List[Tensor], lr: float, device: torch.device) -> torch.optim.AdamW:
    kw = dict(lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    if device.type == "cuda":
        return torch.optim.AdamW(params, fused=True, **kw)
    return torch.optim.AdamW(params, foreach=True, **kw)


def make_stepper(name: str, model: GPT, lr: float, adamw_lr: float, device: torch.device) -> Stepper:
    matrices, others = split_params(model)
    if name == "adamw":
        opt = _adamw(list(model.parameters()), lr, device)
        return Stepper(opt.step, lambda f: [g.__setitem__("lr", lr * f) for g in opt.param_groups] and None)

    aux = _adamw(others, adamw_lr, device)
    if name == "torch_muon":
        muon = torch.optim.Muon(matrices, lr=lr, weight_decay=0.0, momentum=0.95, nesterov=True)

        def step_tm() -> None:
            muon.step()
            aux.step()

        def set_lr_tm(f: float) -> None:
            muon.param_groups[0]["lr"] = lr * f
            aux.param_groups[0]["lr"] = adamw_lr * f

        return Stepper(step_tm, set_lr_tm)

    if name == "polargrad":
        hp = fpolar.PolarGradHParams(lr=torch.tensor(lr, device=device))  # nuclear scale, EMA momentum 0.95
    elif name == "muon":
        hp = fpolar.PolarGradHParams(lr=torch.tensor(lr, device=device), scale="shape", nesterov=True)
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")
    state = fpolar.init_state(matrices, hp)

    def step_polar() -> None:
        with torch.no_grad():
            fpolar.polargrad_step(matrices, [p.grad for p in matrices], state, hp)
        aux.step()

    def set_lr_polar(f: float) -> None:
        hp.lr.fill_(lr * f)  # a 0-d tensor: scheduling it never rebuilds anything
        aux.param_groups[0]["lr"] = adamw_lr * f

    return Stepper(step_polar, set_lr_polar)


def schedule(step: int, total: int) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to 10%."""
    warm = max(1, total // 20)
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


# --------------------------------------------------------------------------- training


@dataclass
class Config:
    d: int
    layers: int
    heads: int
    ctx: int
    batch: int
    steps: int
    eval_every: int
    eval_batches: int
    corpus_chars: int


FULL = Config(d=256, layers=4, heads=4, ctx=128, batch=64, steps=2000, eval_every=100, eval_batches=20,
              corpus_chars=4_000_000)
QUICK = Config(d=128, layers=2, heads=4, ctx=64, batch=16, steps=120, eval_every=40, eval_batches=4,
               corpus_chars=400_000)


class Data:
    """The corpus as a uint8 tensor of character ids on the device; 90% train, 10% validation."""

    def __init__(self, text: str, device: torch.device) -> None:
        self.chars = sorted(set(text))
        lut = {c: i for i, c in enumerate(self.chars)}
        ids = torch.tensor([lut[c] for c in text], dtype=torch.uint8)
        cut = int(len(ids) * 0.9)
        self.train, self.val = ids[:cut].to(device), ids[cut:].to(device)

    def batch(self, split: str, batch: int, ctx: int, gen: torch.Generator) -> Tuple[Tensor, Tensor]:
        src = self.train if split == "train" else self.val
        starts = torch.randint(0, len(src) - ctx - 1, (batch,), generator=gen)
        idx = starts[:, None] + torch.arange(ctx + 1)[None, :]
        chunk = src[idx.to(src.device)].long()
        return chunk[:, :-1], chunk[:, 1:]


def train(name: str, lr: float, adamw_lr: float, cfg: Config, data: Data, device: torch.device,
          seed: int, compile_model: bool) -> Dict[str, object]:
    torch.manual_seed(seed)
    model = GPT(len(data.chars), cfg.d, cfg.layers, cfg.heads, cfg.ctx).to(device)
    stepper = make_stepper(name, model, lr, adamw_lr, device)
    fwd = torch.compile(model) if compile_model else model
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    train_gen = torch.Generator().manual_seed(seed + 1)  # same batches for every optimizer
    val_gen = torch.Generator().manual_seed(seed + 2)
    val_batches = [data.batch("val", cfg.batch, cfg.ctx, val_gen) for _ in range(cfg.eval_batches)]

    def evaluate() -> float:
        model.eval()
        with torch.no_grad(), amp:
            total = sum(float(fwd(x, y)) for x, y in val_batches)
        model.train()
        return total / len(val_batches)

    curve: List[Tuple[int, float]] = [(0, evaluate())]
    train_s, last_loss = 0.0, float("nan")
    sync(device)
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        stepper.set_lr(schedule(step, cfg.steps))
        x, y = data.batch("train", cfg.batch, cfg.ctx, train_gen)
        with amp:
            loss = fwd(x, y)
        loss.backward()
        stepper.step()
        model.zero_grad(set_to_none=True)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            sync(device)
            train_s += time.perf_counter() - t0  # evaluation time is not training time
            last_loss = float(loss.detach())
            val = evaluate()
            if not math.isfinite(val):
                curve.append((step + 1, val))
                break
            curve.append((step + 1, val))
            t0 = time.perf_counter()
    return {"optimizer": name, "lr": lr, "adamw_lr": adamw_lr, "final_val": curve[-1][1], "final_train": last_loss,
            "train_s": train_s, "steps": curve[-1][0], "curve": curve}


# --------------------------------------------------------------------------- main


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--quick", action="store_true", help="small model, few steps: a smoke test")
    ap.add_argument("--opts", default="polargrad,muon,adamw", help=f"comma-separated, from {list(OPTIMIZERS)}")
    ap.add_argument("--steps", type=int, default=None, help="override the config's step count")
    ap.add_argument("--batch", type=int, default=None, help="override the config's batch size")
    ap.add_argument("--lr", action="append", default=[], metavar="OPT=LR", help="override a tuned lr, e.g. muon=0.03")
    ap.add_argument("--sweep", action="store_true",
                    help=f"train each optimizer at its lr × {SWEEP_FACTORS} and report the best")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (not the optimizer)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (default: torch's, but 1 with --quick on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write results (with loss curves) to this JSON file")
    ap.add_argument("--plot", default=None, help="write validation-loss curves to this PNG (needs matplotlib)")
    return ap.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.threads or (args.quick and device.type == "cpu"):
        # The quick model's matrices are too small to gain from threads, and on a busy CPU the
        # threads' spin-waits cost more than they save: one thread is faster and steadier there.
        torch.set_num_threads(args.threads or 1)
    cfg = QUICK if args.quick else FULL
    if args.steps:
        cfg = Config(**{**cfg.__dict__, "steps": args.steps, "eval_every": max(1, min(cfg.eval_every, args.steps))})
    if args.batch:
        cfg = Config(**{**cfg.__dict__, "batch": args.batch})
    lrs = dict(LR)
    for item in args.lr:
        k, v = item.split("=")
        lrs[k.strip()] = float(v)
    names = [n.strip() for n in args.opts.split(",") if n.strip()]
    bad = [n for n in names if n not in OPTIMIZERS]
    if bad:
        print(f"unknown optimizer(s) {bad}; choose from {list(OPTIMIZERS)}")
        return 2
    if "torch_muon" in names and not hasattr(torch.optim, "Muon"):
        print(f"torch {torch.__version__} has no torch.optim.Muon: dropping torch_muon")
        names.remove("torch_muon")

    env = environment(device)
    print_header(env)
    t0 = time.perf_counter()
    text = make_corpus(cfg.corpus_chars)
    data = Data(text, device)
    print(f"corpus: {len(text):,} chars, vocab {len(data.chars)}, generated in {time.perf_counter() - t0:.1f} s")
    n_params = sum(p.numel() for p in GPT(len(data.chars), cfg.d, cfg.layers, cfg.heads, cfg.ctx).parameters())
    print(f"model: d={cfg.d}, {cfg.layers} layers, {cfg.heads} heads, ctx {cfg.ctx}, {n_params / 1e6:.2f}M params; "
          f"batch {cfg.batch}, {cfg.steps} steps, eval every {cfg.eval_every} on {cfg.eval_batches} batches")

    runs: List[Dict[str, object]] = []
    adamw_lr = lrs["adamw"]
    for name in names:
        grid = [lrs[name] * f for f in SWEEP_FACTORS] if args.sweep else [lrs[name]]
        for lr in grid:
            r = train(name, lr, adamw_lr, cfg, data, device, args.seed, args.compile)
            runs.append(r)
            print(f"  {name:<10} lr {lr:<9.3g} val {r['final_val']:.4f}  train {r['final_train']:.4f}  "
                  f"{r['train_s']:.1f} s", flush=True)

    rows = []
    for r in runs:
        rows.append([r["optimizer"], f"{r['lr']:.3g}", f"{r['adamw_lr']:.3g}" if r["optimizer"] != "adamw" else "—",
                     str(r["steps"]), f"{r['final_val']:.4f}", f"{r['final_train']:.4f}", f"{r['train_s']:.1f}",
                     f"{1e3 * r['train_s'] / max(1, r['steps']):.1f}"])
    print()
    print_table(["optimizer", "lr", "AdamW lr", "steps", "val loss", "train loss", "train s", "ms/step"], rows)
    best: Dict[str, Dict[str, object]] = {}
    for r in runs:
        if math.isfinite(r["final_val"]) and (r["optimizer"] not in best or r["final_val"] < best[r["optimizer"]]["final_val"]):
            best[r["optimizer"]] = r
    if args.sweep:
        print("best lr: " + ", ".join(f"{k}={v['lr']:.3g} (val {v['final_val']:.4f})" for k, v in best.items()))
    print(f"total {time.perf_counter() - t0:.0f} s")

    save_json(args.json, {"env": env, "config": cfg.__dict__, "lrs": lrs, "sweep": args.sweep, "runs": runs,
                          "best": {k: v["lr"] for k, v in best.items()}})
    if args.plot:
        plot(runs, args.plot, sweep=args.sweep)
    return 0


def plot(runs: List[Dict[str, object]], path: str, sweep: bool) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not importable: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        steps, vals = zip(*r["curve"])
        label = f"{r['optimizer']} lr={r['lr']:.3g}" if sweep else f"{r['optimizer']} (lr {r['lr']:.3g})"
        ax.plot(steps, vals, marker="o", ms=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title("char-level GPT on the generated story corpus")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
