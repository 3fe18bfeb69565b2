"""``python -m fpolar [demo|bench|paper] …``: the demo (default), a quick benchmark, the paper runs."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

COMMANDS = {
    "demo": "(default) train a small MLP with PolarGrad, Muon and AdamW side by side; print loss and ms/step",
    "bench": "time fpolar's whole optimizer step against torch.optim.Muon on the GPT-2-small matrix set "
    "(CUDA) or a smaller set (CPU)",
    "paper": "reproduce the PolarGrad paper's §6.1/§6.2 experiments and compare with its figures "
    "(--quick: a CPU-sized version in about a minute)",
}


def _demo(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fpolar demo",
        description="Train a small MLP on a task generated on the fly with PolarGrad, Muon (matrices) and "
        "AdamW, same init and batches, and print a table of train loss per N steps and time per step.",
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps per optimizer (default 300)")
    parser.add_argument("--every", type=int, default=50, help="print the loss every N steps (default 50)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = parser.parse_args(argv)
    from .demo import run_demo

    run_demo(steps=args.steps, every=args.every, device=args.device)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print("usage: python -m fpolar [command] [options]\n\nfpolar: polar-factor optimizers for PyTorch.\n\ncommands:")
        for name, text in COMMANDS.items():
            print(f"  {name:<6} {text}")
        print("\n`python -m fpolar COMMAND --help` explains each command's options.")
        return 0
    command, rest = (argv[0], argv[1:]) if argv and argv[0] in COMMANDS else ("demo", argv)
    if command == "demo":
        return _demo(rest)
    if command == "bench":
        from .bench import main as bench_main

        return bench_main(rest)
    from .experiments.paper import main as paper_main

    return paper_main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
