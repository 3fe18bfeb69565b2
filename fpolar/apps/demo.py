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
    # lrs tuned on this task by a coarse sweep (powers of ~3, 300 steps, width 256, best val loss); the nuclear-norm scale makes PolarGrad's
    # lr small because the step is lr·‖M‖_*·O.
    "PolarGrad": lambda m: make_polar_stepper(m, fpolar.PolarGradHParams(lr=1e-2), adam_lr=3e-3),
    "Muon": lambda m: make_polar_stepper(
        m, fpolar.PolarGradHParams(lr=0.01, scale="shape", nesterov=True, coefficients="muon"), adam_lr=3e-3
    ),
    "AdamW": lambda m: make_adamw_stepper(m, lr=1e-3),
}


def run_demo(
    steps: int = 300,
    every: int = 50,
    batch: int = 256,
    width: int = 128,
    device: str | None = None,
    threads: int | None = 1,
) -> Dict[str, dict]:
    """Train the three optimizers side by side, one step each in turn, and stream the table: its header,
    then one row of train losses every ``every`` steps as training reaches it, then validation loss,
    accuracy and ms/step. Returns the same numbers.

    ``threads``: CPU threads for torch (None: leave torch's setting). Default 1: the model is small, so
    more threads only wait on each other (on a loaded 2-core machine, 2 threads made a step ~10× slower).
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cpu" and threads is not None:
        torch.set_num_threads(threads)
    d_in, classes = 32, 10
    task = make_task(steps, batch, d_in, classes, dev)
    models = {name: make_student(d_in, width, classes, dev) for name in OPTIMIZERS}
    steppers = {name: make(models[name]) for name, make in OPTIMIZERS.items()}
    losses: Dict[str, Dict[int, float]] = {name: {} for name in OPTIMIZERS}
    elapsed = {name: 0.0 for name in OPTIMIZERS}
    names = list(OPTIMIZERS)
    header = f"{'step':>6} " + " ".join(f"{n:>10}" for n in names)
    print(f"fpolar demo: MLP 32→{width}→{width}→10 on a teacher-labelled task, batch {batch}, device {dev}, {steps} steps")
    print("train loss by step (matrices: the named optimizer; biases: AdamW)")
    print(header)
    print("-" * len(header), flush=True)
    for t in range(steps):
        for name in names:
            model = models[name]
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss = nn.functional.cross_entropy(model(task.inputs[t]), task.labels[t])
            model.zero_grad(set_to_none=True)
            loss.backward()
            steppers[name]()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if t > 0:  # the first step pays one-time costs
                elapsed[name] += time.perf_counter() - start
            if (t + 1) % every == 0 or t == 0:
                losses[name][t + 1] = loss.item()
        if (t + 1) % every == 0 or t == 0:
            print(f"{t + 1:>6} " + " ".join(f"{losses[n][t + 1]:>10.4f}" for n in names), flush=True)
    results: Dict[str, dict] = {}
    with torch.no_grad():
        for name, model in models.items():
            logits = model(task.val_inputs)
            results[name] = {
                "losses": losses[name],
                "ms_per_step": 1e3 * elapsed[name] / max(steps - 1, 1),
                "val_loss": nn.functional.cross_entropy(logits, task.val_labels).item(),
                "val_acc": (logits.argmax(-1) == task.val_labels).float().mean().item(),
            }
    print("-" * len(header))
    print(f"{'val':>6} " + " ".join(f"{results[n]['val_loss']:>10.4f}" for n in names))
    print(f"{'acc':>6} " + " ".join(f"{results[n]['val_acc']:>10.3f}" for n in names))
    print(f"{'ms/st':>6} " + " ".join(f"{results[n]['ms_per_step']:>10.2f}" for n in names), flush=True)
    return results
