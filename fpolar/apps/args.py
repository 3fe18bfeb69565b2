"""Command-line argument types shared by the commands: numbers argparse refuses, devices that exist.

A bad value ends the command like any tool's: one line on stderr naming the value and what to give
instead, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, NoReturn, Optional

import torch


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def available_devices() -> List[str]:
    """The devices this torch build can use here: "cpu", then "cuda:0"… and "mps" where present."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def _fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def usable_device(name: Optional[str], prog: str) -> torch.device:
    """``name`` as a torch.device that works here (None: cuda if available, else cpu).

    Exits with status 2 and one line on stderr naming the available devices when ``name`` is not a
    device or this machine / torch build cannot use it.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    have = ", ".join(available_devices())
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        _fail(prog, f"--device {name!r} is not a device name; available here: {have}")
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            _fail(prog, f"--device {name!r} cannot be used ({why}); available here: {have}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            _fail(prog, f"--device {name!r}: there are {torch.cuda.device_count()} CUDA devices; available here: {have}")
        return dev
    if dev.type == "mps" and "mps" in available_devices():
        return dev
    _fail(prog, f"--device {name!r} cannot be used here; available here: {have}")
