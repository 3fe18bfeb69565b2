"""Does it train better? PolarGrad vs Muon vs AdamW on real text, each tuned the same way.

    python3 benchmarks/lm_text.py --out DIR                  # GPU: the whole tuning plan, one call
    python3 benchmarks/lm_text.py --quick --device cpu --out DIR   # smoke test of the pipeline, < 1 min
    python3 benchmarks/lm_text.py --runs polargrad:0.004:0.002,adamw:0.002:0.002 --steps 5 --device cpu

Corpus: the Python standard library's own source (``text_corpus.py``), byte-level, train/validation
split by file. Model: ``lm.GPT`` (pre-LayerNorm, learned positions, untied head) at 8 layers, d = 384,
ctx 256 (14.5M params), batch 32 × 256 bytes, bf16 autocast on CUDA, weights fp32, no weight decay.

Optimizer families (matrices = the blocks' 2-D weights, via ``fpolar.optim.param_groups``; the
embeddings, head and LayerNorm gains always run AdamW at the "aux" lr, betas (0.9, 0.95)):

  adamw       torch.optim.AdamW on everything (matrices at lr, the rest at aux lr)
  muon_rms    fpolar.optim.Muon, adjust_lr_fn="match_rms_adamw" (step lr·0.2·√max(m, n)·O), Nesterov
  muon_shape  fpolar.optim.Muon, adjust_lr_fn="original" (step lr·√max(1, m/n)·O), Nesterov
  polargrad   fpolar.optim.PolarGrad, nuclear scale (step lr·⟨O, M⟩·O), EMA momentum, no Nesterov

Fair tuning (``TuningPlan``), per family, all with the same warm-up + cosine schedule (``lm.schedule``),
the same steps and the same data order (a seed fixes the init and every batch):
  1. "lr":   the matrix lr on a log grid (factor 2, 4 points around the family's known good range),
             extended by one point at a time while the best is at the grid's edge (twice at most);
             aux lr tied to lr for adamw / muon_rms (the intent of match_rms_adamw), fixed otherwise.
  2. "aux":  at the best matrix lr, the aux lr × 0.5 and × 2 (once more outwards if best at an edge).
  3. "seed": the best (lr, aux lr) again with seed 1.
  4. "variant": at stage 1's best: coefficients polar_express vs muon, QDWH; compared with that base run.

Runs go to a pool of worker processes sharing the one GPU (a small model leaves it mostly idle, so
several runs at once finish sooner than one after another). Each finished run is a JSON file in
``--run-dir``; a run still going at the ``--budget-s`` deadline is checkpointed there, and the next
invocation with the same ``--run-dir`` continues it (``--resume-json`` imports the runs of an earlier
``lm_text.json`` instead, on a machine without the run dir). Wall-clock comparisons use each
configuration's ms/step measured ALONE on the device at the start (``time_steps``), since the runs
share the device and their own wall time says more about their neighbours than about themselves.

Writes ``lm_text.json`` (everything, with curves), ``lm_text.md`` (tables to paste) and ``lm_text.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import queue
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: fpolar
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/: common, lm, text_corpus

import fpolar.optim  # noqa: E402
from common import environment, pick_device, sync  # noqa: E402
from lm import GPT, schedule  # noqa: E402
from text_corpus import Corpus, load_corpus  # noqa: E402

VOCAB = 256  # byte-level
BETAS = (0.9, 0.95)

FAMILIES: Dict[str, str] = {
    "adamw": "torch.optim.AdamW on everything",
    "muon_rms": "fpolar.optim.Muon(adjust_lr_fn='match_rms_adamw'), Nesterov, momentum 0.95",
    "muon_shape": "fpolar.optim.Muon(adjust_lr_fn='original'), Nesterov, momentum 0.95",
    "polargrad": "fpolar.optim.PolarGrad (nuclear scale), EMA momentum 0.95",
}
# Options added to the family's optimizer for a variant run. Muon's default coefficients are muon's
# (3.4445, -4.7750, 2.0315) ×5, PolarGrad's polar_express: each family tries the other's.
VARIANTS: Dict[str, Dict[str, Any]] = {
    "polar_express": {"coefficients": "polar_express"},
    "muon_coefs": {"coefficients": "muon"},
    "qdwh": {"polar": "qdwh"},
}


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Config:
    d: int
    layers: int
    heads: int
    ctx: int
    batch: int
    steps: int
    eval_every: int
    eval_batches: int  # fixed random validation batches for the curve
    final_windows: Optional[int]  # validation windows for the final loss; None = the whole split


# 1200 steps × 8192 bytes ≈ 1.1 passes over the train split (Python 3.11: 9.1 MB): AdamW's loss is still
# falling there. Estimate on the H200 (to be checked by the ms/step line that each run prints first):
# ≈ 0.75 TFLOP per step → ≈ 5 ms of GPU time, ≈ 8–10 ms/step alone (eager launches), ≈ 5–7 ms/step of
# the device per run when 8 runs share it; ~35 runs × 1200 steps × 6 ms ≈ 250 s.
FULL = Config(d=384, layers=8, heads=6, ctx=256, batch=32, steps=1200, eval_every=100, eval_batches=16,
              final_windows=None)
QUICK = Config(d=32, layers=1, heads=2, ctx=32, batch=4, steps=12, eval_every=6, eval_batches=2,
               final_windows=16)


@dataclass(frozen=True)
class RunSpec:
    """One training run. Two specs with the same ``run_id`` are the same run."""

    family: str
    lr: float  # the matrices' lr (all params' for adamw's matrices)
    aux_lr: float  # AdamW lr of the embeddings, head and LayerNorm gains
    seed: int = 0
    variant: str = ""  # "" or a key of VARIANTS

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; expected one of {list(FAMILIES)}")
        if self.variant and self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; expected one of {list(VARIANTS)}")
        if not (self.lr > 0 and self.aux_lr > 0):
            raise ValueError(f"lr and aux_lr must be > 0, got lr={self.lr!r}, aux_lr={self.aux_lr!r}")

    @property
    def config_name(self) -> str:
        return self.family + (f"+{self.variant}" if self.variant else "")

    @property
    def run_id(self) -> str:
        return f"{self.config_name}_lr{self.lr:.4g}_aux{self.aux_lr:.4g}_s{self.seed}"


def parse_runs(text: str) -> List[RunSpec]:
    """``family:lr:aux_lr[:variant[:seed]]``, comma-separated."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.split(":")
        if not 3 <= len(parts) <= 5:
            raise ValueError(f"run {item!r}: expected family:lr:aux_lr[:variant[:seed]]")
        variant = parts[3] if len(parts) > 3 else ""
        seed = int(parts[4]) if len(parts) > 4 else 0
        out.append(RunSpec(parts[0], float(parts[1]), float(parts[2]), seed, variant))
    return out


# --------------------------------------------------------------------------- optimizers


def make_optimizer(spec: RunSpec, model: GPT, device: torch.device) -> torch.optim.Optimizer:
    """The spec's optimizer over ``model``: the blocks' matrices at ``spec.lr``, the rest on AdamW at
    ``spec.aux_lr``. No weight decay anywhere (the runs are about one epoch; decoupled decay would
    also mean different things under the different scale rules)."""
    groups = fpolar.optim.param_groups(model)
    mats = next(g["params"] for g in groups if g["algorithm"] == "polargrad")
    rest = next(g["params"] for g in groups if g["algorithm"] == "adamw")
    extra = VARIANTS[spec.variant] if spec.variant else {}
    if spec.family == "adamw":
        if extra:
            raise ValueError(f"variant {spec.variant!r} does not apply to adamw")
        kw = dict(betas=BETAS, weight_decay=0.0, **({"fused": True} if device.type == "cuda" else {"foreach": True}))
        return torch.optim.AdamW([{"params": mats, "lr": spec.lr}, {"params": rest, "lr": spec.aux_lr}], **kw)
    polar_groups = [{"params": mats, "algorithm": "polargrad"}, {"params": rest, "algorithm": "adamw", "lr": spec.aux_lr}]
    common = dict(weight_decay=0.0, momentum=0.95, adamw_betas=BETAS, adamw_weight_decay=0.0)
    if spec.family == "polargrad":
        return fpolar.optim.PolarGrad(polar_groups, lr=spec.lr, **common, **extra)
    adjust = "match_rms_adamw" if spec.family == "muon_rms" else "original"
    return fpolar.optim.Muon(polar_groups, lr=spec.lr, nesterov=True, adjust_lr_fn=adjust, **common, **extra)


# --------------------------------------------------------------------------- one run


def batch_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of training batch ``step`` for ``seed``: the data order depends on the seed and
    the step alone, so every optimizer sees the same batches and a resumed run continues the order."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def val_batches(corpus: Corpus, cfg: Config) -> List[Tuple[Tensor, Tensor]]:
    """The fixed validation batches of the curve: the same for every run and every seed."""
    gen = torch.Generator().manual_seed(20_261_201)
    return [corpus.batch("val", cfg.batch, cfg.ctx, gen) for _ in range(cfg.eval_batches)]


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


@torch.no_grad()
def mean_loss(model: GPT, batches: Iterable[Tuple[Tensor, Tensor]], device: torch.device) -> float:
    model.eval()
    total, n = 0.0, 0
    with _autocast(device):
        for x, y in batches:
            total += float(model(x, y)) * x.shape[0]
            n += x.shape[0]
    model.train()
    return total / max(1, n)


def final_val_loss(model: GPT, corpus: Corpus, cfg: Config, device: torch.device) -> float:
    """Mean loss over the validation split cut into consecutive ctx windows (nats/byte)."""
    x, y = corpus.windows("val", cfg.ctx)
    if cfg.final_windows is not None:
        x, y = x[: cfg.final_windows], y[: cfg.final_windows]
    chunk = 4 * cfg.batch
    return mean_loss(model, ((x[i : i + chunk], y[i : i + chunk]) for i in range(0, len(x), chunk)), device)


def set_lr(opt: torch.optim.Optimizer, base: Sequence[float], factor: float) -> None:
    for g, b in zip(opt.param_groups, base):
        g["lr"] = b * factor


def train_run(spec: RunSpec, cfg: Config, corpus: Corpus, device: torch.device, *, run_dir: Optional[str] = None,
              deadline: Optional[float] = None, stop_after: Optional[int] = None) -> Dict[str, Any]:
    """Train one run to ``cfg.steps``, or until ``deadline`` (a ``time.time()``) passes or ``stop_after``
    steps were taken in this call: then checkpoint into ``run_dir`` and return status "incomplete".
    ``corpus`` must already be on ``device``. Resumes from ``run_dir``'s checkpoint of the same run when
    there is one; a resumed run ends exactly where an uninterrupted one does (same batches, same
    schedule, optimizer state restored)."""
    torch.manual_seed(spec.seed)
    model = GPT(VOCAB, cfg.d, cfg.layers, cfg.heads, cfg.ctx).to(device)
    opt = make_optimizer(spec, model, device)
    base = [g["lr"] for g in opt.param_groups]
    vb = val_batches(corpus, cfg)
    ckpt = os.path.join(run_dir, spec.run_id + ".ckpt") if run_dir else None
    start, curve, train_curve, train_s = 0, [], [], 0.0
    if ckpt and os.path.exists(ckpt):
        saved = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        start, curve, train_curve, train_s = saved["step"], saved["curve"], saved["train_curve"], saved["train_s"]
    if not curve:
        curve.append((0, mean_loss(model, vb, device)))
    status, running = "done", 0.0
    sync(device)
    t0 = time.perf_counter()
    step = start
    while step < cfg.steps:
        if (deadline is not None and time.time() > deadline) or (stop_after is not None and step - start >= stop_after):
            status = "incomplete"
            break
        set_lr(opt, base, schedule(step, cfg.steps))
        x, y = corpus.batch("train", cfg.batch, cfg.ctx, batch_generator(spec.seed, step))
        with _autocast(device):
            loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        running += loss.detach()
        step += 1
        if step % cfg.eval_every == 0 or step == cfg.steps:
            sync(device)
            train_s += time.perf_counter() - t0  # evaluation is not training time
            train_curve.append((step, float(running) / (step - (train_curve[-1][0] if train_curve else start))))
            running = 0.0
            curve.append((step, mean_loss(model, vb, device)))
            if not math.isfinite(curve[-1][1]) or not math.isfinite(train_curve[-1][1]):
                status = "diverged"
                break
            t0 = time.perf_counter()
    if status == "incomplete" and ckpt:
        sync(device)
        train_s += time.perf_counter() - t0
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "curve": curve,
                    "train_curve": train_curve, "train_s": train_s}, ckpt)
    final = final_val_loss(model, corpus, cfg, device) if status == "done" else float("nan")
    if status == "done" and ckpt and os.path.exists(ckpt):
        os.remove(ckpt)
    return {"run_id": spec.run_id, "spec": dataclasses.asdict(spec), "status": status, "steps": step,
            "final_val": final, "curve": curve, "train_curve": train_curve, "train_s": train_s}


def time_steps(specs: Sequence[RunSpec], cfg: Config, corpus: Corpus, device: torch.device,
               warmup: int = 10, timed: int = 40) -> Dict[str, float]:
    """ms per training step (forward, backward, optimizer; no evaluation) of each spec's configuration,
    one at a time, nothing else on the device: the clock for the wall-clock comparison."""
    out = {}
    for spec in specs:
        torch.manual_seed(0)
        model = GPT(VOCAB, cfg.d, cfg.layers, cfg.heads, cfg.ctx).to(device)
        opt = make_optimizer(spec, model, device)
        t0 = 0.0
        for i in range(warmup + timed):
            if i == warmup:
                sync(device)
                t0 = time.perf_counter()
            x, y = corpus.batch("train", cfg.batch, cfg.ctx, batch_generator(0, i))
            with _autocast(device):
                loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync(device)
        out[spec.config_name] = 1e3 * (time.perf_counter() - t0) / timed
        del model, opt
    return out


# --------------------------------------------------------------------------- the tuning plan


@dataclass(frozen=True)
class TuningPlan:
    grids: Dict[str, Tuple[float, ...]]  # stage-1 matrix lrs, a log grid, per family
    aux: Dict[str, Optional[float]]  # stage-1 aux lr per family; None = tied to the matrix lr
    aux_factors: Tuple[float, ...] = (0.5, 2.0)
    max_extend: int = 2  # extra grid points when the best lr is at an edge
    seeds: Tuple[int, ...] = (0, 1)
    variants: Tuple[Tuple[str, str], ...] = ()  # (family, variant)


# Known good ranges: AdamW's matrix lr ~1e-3..3e-3 at this size; match_rms_adamw makes Muon's lr
# AdamW's; the shape rule's ~0.01..0.05. PolarGrad's step is lr·⟨O, M⟩·O with ‖M‖_* of the blocks'
# gradients ≈ 2..15 at init here, so an update RMS like AdamW's (≈ 0.2·lr_adamw ≈ 4e-4) needs
# lr ≈ 4e-4·√max(m, n)/‖M‖_* ≈ 1e-3..6e-3 at init (CPU, one batch); the EMA momentum's ‖M‖_* is
# smaller than a gradient's and falls as training goes on, pushing the best lr up (lm.py's small model
# on easy text settled at 0.08), hence 5 points up to 4e-2 (the edge extension reaches 0.16).
FULL_PLAN = TuningPlan(
    grids={
        "adamw": (5e-4, 1e-3, 2e-3, 4e-3),
        "muon_rms": (5e-4, 1e-3, 2e-3, 4e-3),
        "muon_shape": (5e-3, 1e-2, 2e-2, 4e-2),
        "polargrad": (2.5e-3, 5e-3, 1e-2, 2e-2, 4e-2),
    },
    aux={"adamw": None, "muon_rms": None, "muon_shape": 2e-3, "polargrad": 2e-3},
    variants=(("muon_rms", "polar_express"), ("polargrad", "muon_coefs"), ("polargrad", "qdwh")),
)
QUICK_PLAN = TuningPlan(
    grids={"adamw": (2e-3, 8e-3), "muon_rms": (2e-3, 8e-3), "muon_shape": (1e-2, 4e-2), "polargrad": (1e-2, 4e-2)},
    aux={"adamw": None, "muon_rms": None, "muon_shape": 4e-3, "polargrad": 4e-3},
    aux_factors=(2.0,),
    max_extend=0,
    variants=(("muon_rms", "polar_express"),),
)
STAGE_PRIORITY = {"seed": 0, "aux": 1, "lr": 2, "variant": 3}


def _score(result: Optional[Dict[str, Any]]) -> float:
    """Final validation loss; a diverged run scores +inf, so it is never the best unless all are."""
    if result is None or result["status"] != "done" or not math.isfinite(result["final_val"]):
        return math.inf
    return result["final_val"]


def _finished(results: Dict[str, Dict[str, Any]], specs: Iterable[RunSpec]) -> bool:
    return all(s.run_id in results and results[s.run_id]["status"] in ("done", "diverged") for s in specs)


def _extend(points: List[float], best: float, ratio: float) -> Optional[float]:
    """The next point outwards when ``best`` is at an edge of ``points`` (sorted), else None."""
    if len(points) > 1 and best == points[-1]:
        return best * ratio
    if len(points) > 1 and best == points[0]:
        return best / ratio
    return None


def plan_family(plan: TuningPlan, family: str, results: Dict[str, Dict[str, Any]]) -> List[Tuple[str, RunSpec]]:
    """Every run of ``family`` that the results so far determine, as (stage, spec), in stage order.

    Pure: the same results always give the same list, so a restarted launcher re-derives the plan."""
    grid = sorted(plan.grids[family])
    ratio = grid[1] / grid[0] if len(grid) > 1 else 2.0

    def at(lr: float, aux: Optional[float] = None, **kw: Any) -> RunSpec:
        a = aux if aux is not None else (lr if plan.aux[family] is None else plan.aux[family])
        return RunSpec(family, lr, a, **kw)

    out: List[Tuple[str, RunSpec]] = [("lr", at(lr)) for lr in grid]
    for _ in range(plan.max_extend):
        if not _finished(results, (s for _, s in out)):
            return out
        best = min((s for _, s in out), key=lambda s: _score(results[s.run_id]))
        nxt = _extend(grid, best.lr, ratio)
        if nxt is None or not math.isfinite(_score(results[best.run_id])):
            break
        grid = sorted(grid + [nxt])
        out.append(("lr", at(nxt)))
    if not _finished(results, (s for _, s in out)):
        return out
    base = min((s for _, s in out), key=lambda s: _score(results[s.run_id]))
    out += [("variant", dataclasses.replace(base, variant=v)) for f, v in plan.variants if f == family]
    aux_runs = [at(base.lr, base.aux_lr * f) for f in plan.aux_factors]
    out += [("aux", s) for s in aux_runs]
    if not _finished(results, aux_runs):
        return out
    tried = [base] + aux_runs
    best = min(tried, key=lambda s: _score(results[s.run_id]))
    auxes = sorted(s.aux_lr for s in tried)
    nxt = _extend(auxes, best.aux_lr, 2.0) if len(plan.aux_factors) > 1 else None
    if nxt is not None and math.isfinite(_score(results[best.run_id])):
        more = at(base.lr, nxt)
        out.append(("aux", more))
        if not _finished(results, [more]):
            return out
        tried.append(more)
        best = min(tried, key=lambda s: _score(results[s.run_id]))
    out += [("seed", dataclasses.replace(best, seed=s)) for s in plan.seeds if s != best.seed]
    return out


def plan_all(plan: TuningPlan, results: Dict[str, Dict[str, Any]]) -> List[Tuple[str, RunSpec]]:
    """All families' determined runs, most urgent first: later stages (they gate nothing, but each
    is on its family's critical path) before stage-1 points, variants last (QDWH the very last), and
    families interleaved within a stage."""
    per = [plan_family(plan, f, results) for f in plan.grids]
    flat = [(i, j, st, s) for f, runs in enumerate(per) for j, (st, s) in enumerate(runs) for i in [f]]
    key = lambda t: (STAGE_PRIORITY[t[2]] + (1 if t[3].variant == "qdwh" else 0), t[1], t[0])  # noqa: E731
    return [(st, s) for _, _, st, s in sorted(flat, key=key)]


def best_runs(plan: TuningPlan, results: Dict[str, Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """Per family, the runs of its best setting (seed 0 first, then the other seeds that finished)."""
    out = {}
    for family in plan.grids:
        runs = [s for st, s in plan_family(plan, family, results) if st in ("lr", "aux") and s.run_id in results]
        if not runs:
            continue
        best = min(runs, key=lambda s: _score(results[s.run_id]))
        seeds = [dataclasses.replace(best, seed=k) for k in plan.seeds]
        out[family] = [results[s.run_id] for s in seeds if s.run_id in results]
    return out


# --------------------------------------------------------------------------- worker pool


def _worker(wid: int, tasks: "mp.Queue", done: "mp.Queue", cfg: Config, corpus_path: str, device_name: str,
            run_dir: str, threads: int) -> None:
    """A worker process: loads the corpus once, then trains the runs it is sent until it gets None."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    saved = torch.load(corpus_path, weights_only=False)
    corpus = Corpus(**saved).to(device)
    while True:
        task = tasks.get()
        if task is None:
            return
        kind, payload, deadline = task
        try:
            if kind == "time":
                n = (1, 2) if cfg.steps < 100 else (10, 40)  # a pipeline test needs no precise clock
                done.put((wid, "time", time_steps(payload, cfg, corpus, device, *n)))
                continue
            result = train_run(payload, cfg, corpus, device, run_dir=run_dir, deadline=deadline)
            result["worker"] = wid
            with open(os.path.join(run_dir, payload.run_id + ".json"), "w") as f:
                json.dump(result, f)
            done.put((wid, "run", result))
        except Exception as e:  # noqa: BLE001 - report it and keep serving; the launcher records it
            done.put((wid, "error", {"run_id": getattr(payload, "run_id", kind), "error": f"{type(e).__name__}: {e}"}))


def load_results(run_dir: str, cfg: Config, resume_json: Optional[str]) -> Dict[str, Dict[str, Any]]:
    """Finished runs: an earlier ``lm_text.json``'s (same config only), then the run dir's."""
    results: Dict[str, Dict[str, Any]] = {}
    if resume_json:
        with open(resume_json) as f:
            old = json.load(f)
        if old.get("config") != dataclasses.asdict(cfg):
            raise ValueError(f"{resume_json} was run with config {old.get('config')}, not {dataclasses.asdict(cfg)}")
        results.update({r["run_id"]: r for r in old["runs"] if r["status"] in ("done", "diverged")})
    for name in sorted(os.listdir(run_dir)):
        if name.endswith(".json") and name not in ("config.json", "step_ms.json"):
            with open(os.path.join(run_dir, name)) as f:
                r = json.load(f)
            if r["status"] in ("done", "diverged"):
                results[r["run_id"]] = r
    return results


def run_pool(plan: Optional[TuningPlan], explicit: List[RunSpec], cfg: Config, corpus: Corpus, device: torch.device,
             *, workers: int, threads: int, run_dir: str, deadline: float,
             results: Dict[str, Dict[str, Any]], step_ms: Dict[str, float]) -> List[Dict[str, Any]]:
    """Train every run of ``plan`` (or the ``explicit`` list) on ``workers`` processes until all are
    finished or ``deadline`` passes. ``results`` (finished runs) is updated in place; ``step_ms`` gets
    each configuration's ms/step (measured first, alone, when missing). Returns the errors."""
    if plan is not None and all(s.run_id in results for _, s in plan_all(plan, results)) and all(
            f"{f}+{v}" in step_ms for f, v in plan.variants) and all(f in step_ms for f in plan.grids):
        return []  # everything finished earlier: no processes to start
    ctx = mp.get_context("spawn")
    corpus_path = os.path.join(run_dir, "corpus.pt")
    torch.save({k: getattr(corpus, k) for k in ("root", "train_files", "val_files", "train", "val")}, corpus_path)
    done: "mp.Queue" = ctx.Queue()
    inboxes = [ctx.Queue() for _ in range(workers)]
    procs = [ctx.Process(target=_worker, args=(w, inboxes[w], done, cfg, corpus_path, str(device), run_dir, threads),
                         daemon=True) for w in range(workers)]
    for p in procs:
        p.start()
    errors: List[Dict[str, Any]] = []
    busy: Dict[int, Optional[str]] = {w: None for w in range(workers)}
    stopped = set()

    def specs_now() -> List[Tuple[str, RunSpec]]:
        return plan_all(plan, results) if plan is not None else [("explicit", s) for s in explicit]

    configs = {}
    for _, s in specs_now():
        configs.setdefault(s.config_name, dataclasses.replace(s, seed=0))
    if plan is not None:  # the variants are not determined yet: time them on a nominal lr
        for f, v in plan.variants:
            configs.setdefault(f"{f}+{v}", RunSpec(f, plan.grids[f][0], plan.grids[f][0], variant=v))
    missing = [s for name, s in configs.items() if name not in step_ms]
    if missing:
        inboxes[0].put(("time", missing, None))
        busy[0] = "timing"
    try:
        while True:
            running = {r for r in busy.values() if r}
            todo = [s for _, s in specs_now() if s.run_id not in results and s.run_id not in running
                    and s.run_id not in {e["run_id"] for e in errors}]
            free = [w for w in range(workers) if busy[w] is None and procs[w].is_alive()]
            time_left = deadline - time.time()
            while todo and free and time_left > 5 and busy[0] != "timing":
                w, s = free.pop(0), todo.pop(0)
                inboxes[w].put(("run", s, deadline))
                busy[w] = s.run_id
                print(f"[{time.strftime('%H:%M:%S')}] worker {w}: {s.run_id}", flush=True)
            if not running and not any(busy.values()) and (not todo or time_left <= 5):
                break
            try:
                wid, kind, payload = done.get(timeout=1.0)
            except queue.Empty:
                for w, p in enumerate(procs):
                    if busy[w] and not p.is_alive() and w not in stopped:
                        stopped.add(w)
                        errors.append({"run_id": busy[w], "error": f"worker {w} died (exit {p.exitcode})"})
                        busy[w] = None
                if all(not p.is_alive() for p in procs):
                    break
                continue
            busy[wid] = None
            if kind == "time":
                step_ms.update(payload)
                print("ms/step alone: " + ", ".join(f"{k} {v:.2f}" for k, v in payload.items()), flush=True)
            elif kind == "error":
                errors.append(payload)
                print(f"  error in {payload['run_id']}: {payload['error']}", flush=True)
            else:
                if payload["status"] in ("done", "diverged"):
                    results[payload["run_id"]] = payload
                print(f"[{time.strftime('%H:%M:%S')}]   {payload['run_id']}: {payload['status']} at step "
                      f"{payload['steps']}, final val {payload['final_val']:.4f}", flush=True)
    finally:
        for q in inboxes:
            q.put(None)
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    return errors


# --------------------------------------------------------------------------- reporting


def val_at_step(curve: Sequence[Sequence[float]], step: float) -> float:
    """The validation curve linearly interpolated at ``step`` (NaN beyond its last point)."""
    pts = [(float(s), float(v)) for s, v in curve]
    if step > pts[-1][0] + 1e-9:
        return float("nan")
    for (s0, v0), (s1, v1) in zip(pts, pts[1:]):
        if s0 <= step <= s1:
            return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return pts[0][1]


def _config_of(r: Dict[str, Any]) -> str:
    return r["spec"]["family"] + (f"+{r['spec']['variant']}" if r["spec"]["variant"] else "")


def summarize(plan: Optional[TuningPlan], results: Dict[str, Dict[str, Any]], step_ms: Dict[str, float],
              cfg: Config) -> Dict[str, Any]:
    """Best setting per family (mean over its seeds), at equal steps and at equal wall-clock (the time
    the fastest family's best run took for all its steps, on each family's alone-measured clock), and
    each variant against its base run."""
    out: Dict[str, Any] = {"best": {}, "variants": []}
    if plan is None:
        return out
    best = best_runs(plan, results)
    times = {f: cfg.steps * step_ms[f] / 1e3 for f in best if f in step_ms}
    t_eq = min(times.values()) if times else None
    for f, runs in best.items():
        finals = [r["final_val"] for r in runs]
        eq = None
        if t_eq is not None and f in step_ms:
            eq = sum(val_at_step(r["curve"], t_eq * 1e3 / step_ms[f]) for r in runs) / len(runs)
        end = sum(r["curve"][-1][1] for r in runs) / len(runs)
        out["best"][f] = {"lr": runs[0]["spec"]["lr"], "aux_lr": runs[0]["spec"]["aux_lr"], "seeds": len(runs),
                          "val_at_end": end,
                          "final_val": finals, "mean": sum(finals) / len(finals), "ms_step": step_ms.get(f),
                          "train_s_alone": times.get(f), "val_at_equal_time": eq, "equal_time_s": t_eq}
    for f, v in plan.variants:
        rs = [r for r in results.values() if _config_of(r) == f"{f}+{v}"]
        for r in rs:
            base_id = dataclasses.replace(RunSpec(**r["spec"]), variant="").run_id
            if base_id in results:
                out["variants"].append({"family": f, "variant": v, "lr": r["spec"]["lr"], "aux_lr": r["spec"]["aux_lr"],
                                        "final_val": r["final_val"], "base_val": results[base_id]["final_val"],
                                        "ms_step": step_ms.get(f"{f}+{v}"), "base_ms_step": step_ms.get(f)})
    return out


def _f(x: Optional[float], spec: str = ".4f") -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def markdown(meta: Dict[str, Any], results: Dict[str, Dict[str, Any]], summary: Dict[str, Any]) -> str:
    cfg, corpus = meta["config"], meta["corpus"]
    lines = [
        f"`{meta['env']['command']}` on {meta['env']['device']}, torch {meta['env']['torch']}, "
        f"python {meta['env']['python']}, {meta['env']['date']}.",
        "",
        f"Corpus: Python {corpus['python']} standard library `*.py` ({corpus['files']['train']} + "
        f"{corpus['files']['val']} files; {corpus['bytes']['train']:,} train + {corpus['bytes']['val']:,} "
        f"validation bytes), byte-level. Model: GPT, {cfg['layers']} layers, d = {cfg['d']}, ctx {cfg['ctx']}, "
        f"{meta['params'] / 1e6:.1f}M params; batch {cfg['batch']}, {cfg['steps']} steps, warm-up 5% + cosine "
        f"to 10%. Loss: nats/byte on the whole validation split.",
        "",
    ]
    if summary["best"]:
        t_eq = next(iter(summary["best"].values()))["equal_time_s"]
        lines += ["| optimizer | lr | aux lr | val loss (seeds 0 / 1) | mean | curve val, equal steps | ms/step alone | "
                  f"curve val, equal time ({_f(t_eq, '.1f')} s) |", "|---|---|---|---|---|---|---|---|"]
        for f, b in sorted(summary["best"].items(), key=lambda kv: kv[1]["mean"]):
            lines.append(f"| {f} | {b['lr']:.3g} | {b['aux_lr']:.3g} | {' / '.join(_f(v) for v in b['final_val'])} | "
                         f"{_f(b['mean'])} | {_f(b['val_at_end'])} | {_f(b['ms_step'], '.2f')} | "
                         f"{_f(b['val_at_equal_time'])} |")
        lines += ["", "val loss: the whole validation split at the end; curve val: the 16 fixed validation batches "
                  "of the curve (mean over seeds), at the last step and at the time the fastest optimizer's "
                  "best run needs for all its steps, on each optimizer's clock measured alone.", ""]
    if summary["variants"]:
        lines += ["| variant | lr | val loss | base val loss | ms/step | base ms/step |", "|---|---|---|---|---|---|"]
        for v in summary["variants"]:
            lines.append(f"| {v['family']} + {v['variant']} | {v['lr']:.3g} | {_f(v['final_val'])} | "
                         f"{_f(v['base_val'])} | {_f(v['ms_step'], '.2f')} | {_f(v['base_ms_step'], '.2f')} |")
        lines.append("")
    lines += ["All runs (`family[+variant]_lr<lr>_aux<aux lr>_s<seed>`):", "", "| run | status | steps | final val | last curve val |",
              "|---|---|---|---|---|"]
    for rid, r in sorted(results.items()):
        lines.append(f"| {rid} | {r['status']} | {r['steps']} | {_f(r['final_val'])} | {_f(r['curve'][-1][1])} |")
    return "\n".join(lines) + "\n"


def plot(results: Dict[str, Dict[str, Any]], summary: Dict[str, Any], step_ms: Dict[str, float], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not importable: no plot")
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {}
    shown = []
    for f, b in summary["best"].items():
        for r in results.values():
            s = r["spec"]
            if s["family"] == f and not s["variant"] and s["lr"] == b["lr"] and s["aux_lr"] == b["aux_lr"]:
                shown.append((f, r, "-"))
    for v in summary["variants"]:
        for r in results.values():
            if _config_of(r) == f"{v['family']}+{v['variant']}":
                shown.append((f"{v['family']}+{v['variant']}", r, "--"))
    for name, r, style in shown:
        steps, vals = zip(*r["curve"])
        label = f"{name} lr {r['spec']['lr']:.3g} s{r['spec']['seed']}"
        line = a1.plot(steps, vals, style, color=colors.get(name), label=label)[0]
        colors.setdefault(name, line.get_color())
        if name in step_ms:
            a2.plot([s * step_ms[name] / 1e3 for s in steps], vals, style, color=colors[name], label=label)
    for ax, xl in ((a1, "step"), (a2, "seconds (steps × ms/step measured alone)")):
        ax.set_xlabel(xl)
        ax.set_ylabel("validation loss (nats/byte)")
        ax.grid(alpha=0.3)
        vals = [v for _, r, _ in shown for _, v in r["curve"][1:] if math.isfinite(v)]
        if vals:
            ax.set_ylim(min(vals) - 0.05, min(max(vals), min(vals) + 1.5))
    a1.legend(fontsize=7)
    fig.suptitle("byte-level GPT on the Python standard library: best setting of each optimizer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


# --------------------------------------------------------------------------- main


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="lm_text_out", help="folder for lm_text.json / .md / .png")
    ap.add_argument("--run-dir", default=".lm_text_runs", help="per-run results and checkpoints (resumable)")
    ap.add_argument("--resume-json", default=None, help="import the finished runs of an earlier lm_text.json")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny model, few steps, small plan: a pipeline test")
    ap.add_argument("--runs", default=None, help="explicit runs family:lr:aux[:variant[:seed]],… instead of the plan")
    ap.add_argument("--steps", type=int, default=None, help="override the config's step count")
    ap.add_argument("--batch", type=int, default=None, help="override the batch size (e.g. for a CPU check)")
    ap.add_argument("--eval-batches", type=int, default=None, help="validation batches of the curve (default 16)")
    ap.add_argument("--final-windows", type=int, default=None, help="validation windows for the final loss (default all)")
    ap.add_argument("--workers", type=int, default=None, help="training processes sharing the device (default 8; 2 quick)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per worker (default 1)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="stop training (checkpointing) after this many s")
    return ap.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    t_start = time.time()
    device = pick_device(args.device)
    cfg = QUICK if args.quick else FULL
    if args.steps:
        cfg = dataclasses.replace(cfg, steps=args.steps, eval_every=max(1, min(cfg.eval_every, args.steps)))
    if args.batch:
        cfg = dataclasses.replace(cfg, batch=args.batch)
    if args.eval_batches:
        cfg = dataclasses.replace(cfg, eval_batches=args.eval_batches)
    if args.final_windows:
        cfg = dataclasses.replace(cfg, final_windows=args.final_windows)
    plan = None if args.runs else (QUICK_PLAN if args.quick else FULL_PLAN)
    explicit = parse_runs(args.runs) if args.runs else []
    workers = args.workers or (2 if args.quick else 8)
    threads = args.threads or 1
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.run_dir, exist_ok=True)
    cfg_path = os.path.join(args.run_dir, "config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            old = json.load(f)
        if old != dataclasses.asdict(cfg):
            raise SystemExit(f"--run-dir {args.run_dir} holds runs of config {old}, not {dataclasses.asdict(cfg)}: "
                             "use another --run-dir")
    with open(cfg_path, "w") as f:
        json.dump(dataclasses.asdict(cfg), f)

    env = environment(device)
    corpus = load_corpus()
    n_params = sum(p.numel() for p in GPT(VOCAB, cfg.d, cfg.layers, cfg.heads, cfg.ctx).parameters())
    meta = {"env": env, "corpus": corpus.describe(), "config": dataclasses.asdict(cfg), "params": n_params,
            "workers": workers, "threads": threads, "plan": dataclasses.asdict(plan) if plan else None}
    print(f"command: {env['command']}\ndevice: {env['device']} | torch {env['torch']} | python {env['python']}")
    print(f"corpus: {json.dumps(meta['corpus']['bytes'])} bytes, {json.dumps(meta['corpus']['files'])} files")
    print(f"model: {n_params / 1e6:.2f}M params, {cfg}; {workers} workers × {threads} threads")

    results = load_results(args.run_dir, cfg, args.resume_json)
    step_path = os.path.join(args.run_dir, "step_ms.json")
    step_ms: Dict[str, float] = json.load(open(step_path)) if os.path.exists(step_path) else {}
    deadline = t_start + args.budget_s
    errors = run_pool(plan, explicit, cfg, corpus, device, workers=workers, threads=threads, run_dir=args.run_dir,
                      deadline=deadline, results=results, step_ms=step_ms)
    with open(step_path, "w") as f:
        json.dump(step_ms, f)

    summary = summarize(plan, results, step_ms, cfg)
    pending = [s.run_id for _, s in (plan_all(plan, results) if plan else [("", s) for s in explicit])
               if s.run_id not in results]
    payload = {**meta, "step_ms": step_ms, "runs": [results[k] for k in sorted(results)], "summary": summary, "errors": errors,
               "pending": pending, "wall_s": time.time() - t_start}
    with open(os.path.join(args.out, "lm_text.json"), "w") as f:
        json.dump(payload, f, indent=1, default=str)
    md = markdown(meta, results, summary)
    with open(os.path.join(args.out, "lm_text.md"), "w") as f:
        f.write(md)
    print(md)
    if summary["best"]:
        plot(results, summary, step_ms, os.path.join(args.out, "lm_text.png"))
    print(f"{len(results)} runs finished, {len(pending)} pending, {len(errors)} errors; {time.time() - t_start:.0f} s")
    if pending:
        print("pending (run again with the same --run-dir, or --resume-json on a fresh machine): " + ", ".join(pending))
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
