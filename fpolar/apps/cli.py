"""``python -m fpolar [demo|bench|paper] …``: the demo (default), a quick benchmark, the paper runs."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .args import positive_int, usable_device

# Measured with `time python -m fpolar demo` (34 s on a shared 2-core CPU under load, 2026-12-02):
# keep in step with the demo's defaults.
DEMO_DURATION = "Takes well under a minute on a 2-core CPU."

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
        "AdamW, same init and batches, one step each in turn; a row of train losses is printed every N steps "
        "as training reaches it, then validation loss, accuracy and time per step. "
        f"{DEMO_DURATION}",
    )
    parser.add_argument("--steps", type=positive_int, default=300, help="training steps per optimizer (default 300)")
    parser.add_argument("--every", type=positive_int, default=50, help="print the losses every N steps (default 50)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--threads", type=positive_int, default=1, help="CPU threads for torch (default 1: the model is small)")
    args = parser.parse_args(argv)
    device = usable_device(args.device, parser.prog)
    from .demo import run_demo

    run_demo(steps=args.steps, every=args.every, device=str(device), threads=args.threads)
    return 0


def _usage() -> str:
    lines = ["usage: python -m fpolar [command] [options]", "", "fpolar: polar-factor optimizers for PyTorch.", "", "commands:"]
    lines += [f"  {name:<6} {text}" for name, text in COMMANDS.items()]
    lines += ["", "`python -m fpolar COMMAND --help` explains each command's options."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``python -m fpolar``'s command line on ``argv`` (default ``sys.argv[1:]``); returns the exit
    status. Bad arguments exit with status 2 and a one-line message (``SystemExit``), as argparse does."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        print(_usage(), file=sys.stderr)
        print(f"python -m fpolar: error: unknown command {argv[0]!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
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
