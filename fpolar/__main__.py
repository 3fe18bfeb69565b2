"""``python -m fpolar``: the demo (default). Run ``python -m fpolar --help`` for the sub-commands."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fpolar",
        description="fpolar: polar-factor optimizers for PyTorch.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{demo}")
    demo = sub.add_parser(
        "demo",
        help="(default) train a small MLP with PolarGrad, Muon and AdamW side by side; print loss and ms/step",
        description="Train a small MLP on a task generated on the fly with PolarGrad, Muon (matrices) and "
        "AdamW, same init and batches, and print a table of train loss per N steps and time per step.",
    )
    demo.add_argument("--steps", type=int, default=300, help="training steps per optimizer (default 300)")
    demo.add_argument("--every", type=int, default=50, help="print the loss every N steps (default 50)")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:] or ["demo"])
    if args.command in (None, "demo"):
        from .demo import run_demo

        run_demo(steps=getattr(args, "steps", 300), every=getattr(args, "every", 50), device=getattr(args, "device", None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
