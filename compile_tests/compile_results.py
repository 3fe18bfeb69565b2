"""Measured compile facts, written where a GPU or CI run can collect them.

If ``FPOLAR_RESULTS_DIR`` is set, ``record(name, data)`` writes ``<dir>/compile_<name>.json`` (one file
per fact, so tests stay independent and any subset can run). Without it, nothing is written.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict

import torch


def record(name: str, data: Dict[str, Any]) -> None:
    out = os.environ.get("FPOLAR_RESULTS_DIR")
    if not out:
        return
    os.makedirs(out, exist_ok=True)
    payload = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        **data,
    }
    with open(os.path.join(out, f"compile_{name}.json"), "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True, default=str)
