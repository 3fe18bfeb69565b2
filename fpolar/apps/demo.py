"""The main job: train one small model with PolarGrad, Muon and AdamW side by side and print a table.

The task is made here, so it needs no download: a fixed random "teacher" MLP labels Gaussian inputs
into 10 classes, and a student MLP (3 weight matrices + biases) learns it. Every optimizer starts from
the same student weights and sees the same batches. Matrix weights go to ``polargrad_step``; biases go
to ``adamw_step`` in the same step, as in real training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List

import torch
from torch import Tensor, nn

import fpolar
from fpolar.routing import is_matrix


@dataclass
class Task:
    inputs: Tensor  # (steps, batch, d_in)
    labels: Tensor  # (steps, batch)
    val_inputs: Tensor
    val_labels: Tensor


def make_task(steps: int, batch: int, d_in: int, classes: int, device: torch.device, seed: int = 0) -> Task:
    gen = torch.Generator().manual_seed(seed)
    teacher = [torch.randn(d_in, 64, generator=gen) / d_in**0.5, torch.randn(64, classes, generator=gen) / 8.0]

    def label(x: Tensor) -> Tensor:
        return (torch.tanh(x @ teacher[0]) @ teacher[1]).argmax(-1)

    x = torch.randn(steps, batch, d_in, generator=gen)
    xv = torch.randn(4096, d_in, generator=gen)
    return Task(x.to(device), label(x).to(device), xv.to(device), label(xv).to(device))


def make_student(d_in: int, width: int, classes: int, device: torch.device, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d_in, width), nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, classes)
    ).to(device)


def split(model: nn.Module) -> tuple[List[Tensor], List[Tensor]]:
    """Matrices (``fpolar.routing.is_matrix``) for the polar step, everything else for AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [p for p in params if is_matrix(p)], [p for p in params if not is_matrix(p)]


def make_polar_stepper(model: nn.Module, hp: fpolar.PolarGradHParams, adam_lr: float) -> Callable[[], None]:
    matrices, others = split(model)
    state = fpolar.init_state(matrices, hp)
    ahp = fpolar.AdamWHParams(lr=adam_lr, weight_decay=0.0)
    astate = fpolar.init_adamw_state(others, ahp)

    def step() -> None:
        with torch.no_grad():
            fpolar.polargrad_step(matrices, [p.grad for p in matrices], state, hp)
            fpolar.adamw_step(others, [p.grad for p in others], astate, ahp)

    return step


def make_adamw_stepper(model: nn.Module, lr: float) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]
    hp = fpolar.AdamWHParams(lr=lr, weight_decay=0.0)
    state = fpolar.init_adamw_state(params, hp)

    def step() -> None:
        with torch.no_grad():
            fpolar.adamw_step(params, [p.grad for p in params], state, hp)

    return step


OPTIMIZERS: Dict[str, Callable[[nn.Module], Callable[[], None]]] = {
    # lrs tuned on this task by a coarse sweep (powers of ~3, 300 steps, best val loss); the nuclear-norm scale makes PolarGrad's
    # lr small because the step is lr·‖M‖_*·O.
    "PolarGrad": lambda m: make_polar_stepper(m, fpolar.PolarGradHParams(lr=1e-2), adam_lr=3e-3),
    "Muon": lambda m: make_polar_stepper(
        m, fpolar.PolarGradHParams(lr=0.01, scale="shape", nesterov=True, coefficients="muon"), adam_lr=3e-3
    ),
    "AdamW": lambda m: make_adamw_stepper(m, lr=1e-3),
}


def run_demo(steps: int = 300, every: int = 50, batch: int = 256, width: int = 256, device: str | None = None) -> Dict[str, dict]:
    """Train each optimizer for ``steps`` steps; print and return losses every ``every`` steps and ms/step."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    d_in, classes = 32, 10
    task = make_task(steps, batch, d_in, classes, dev)
    results: Dict[str, dict] = {}
    for name, make in OPTIMIZERS.items():
        model = make_student(d_in, width, classes, dev)
        step = make(model)
        losses, elapsed = {}, 0.0
        for t in range(steps):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss = nn.functional.cross_entropy(model(task.inputs[t]), task.labels[t])
            model.zero_grad(set_to_none=True)
            loss.backward()
            step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if t > 0:  # the first step pays one-time costs
                elapsed += time.perf_counter() - start
            if (t + 1) % every == 0 or t == 0:
                losses[t + 1] = loss.item()
        with torch.no_grad():
            val = nn.functional.cross_entropy(model(task.val_inputs), task.val_labels).item()
            acc = (model(task.val_inputs).argmax(-1) == task.val_labels).float().mean().item()
        results[name] = {"losses": losses, "ms_per_step": 1e3 * elapsed / max(steps - 1, 1), "val_loss": val, "val_acc": acc}
    print_table(results, dev, batch, width)
    return results


def print_table(results: Dict[str, dict], dev: torch.device, batch: int, width: int) -> None:
    names = list(results)
    print(f"fpolar demo: MLP 32→{width}→{width}→10 on a teacher-labelled task, batch {batch}, device {dev}")
    print("train loss by step (matrices: the named optimizer; biases: AdamW)")
    header = f"{'step':>6} " + " ".join(f"{n:>10}" for n in names)
    print(header)
    print("-" * len(header))
    for t in results[names[0]]["losses"]:
        print(f"{t:>6} " + " ".join(f"{results[n]['losses'][t]:>10.4f}" for n in names))
    print("-" * len(header))
    print(f"{'val':>6} " + " ".join(f"{results[n]['val_loss']:>10.4f}" for n in names))
    print(f"{'acc':>6} " + " ".join(f"{results[n]['val_acc']:>10.3f}" for n in names))
    print(f"{'ms/st':>6} " + " ".join(f"{results[n]['ms_per_step']:>10.2f}" for n in names))
