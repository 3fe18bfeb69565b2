"""Curves of the reproductions as one PNG (matplotlib, an optional dependency: ``pip install fpolar[bench]``)."""

from __future__ import annotations

import importlib.util
import math
from typing import Dict, Sequence, Tuple

from .runner import Curve


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_curves(panels: Sequence[Tuple[str, str, Dict[str, Curve]]], path: str) -> None:
    """One log-scale panel per (title, y label, curves by name); writes ``path``.

    Non-positive values (a quadratic gap at float64 rounding level) and non-finite ones (a diverged
    run) cannot sit on a log axis and are left out of their line.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed on a server
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
    for ax, (title, ylabel, curves) in zip(axes[0], panels):
        colors = plt.get_cmap("tab20").colors  # 11 curves per panel: the default 10-colour cycle repeats
        for i, (name, curve) in enumerate(curves.items()):
            pts = [(s, v) for s, v in zip(curve.steps, curve.values) if math.isfinite(v) and v > 0]
            label = name + (f" (diverged @{curve.diverged_at})" if curve.diverged_at is not None else "")
            style = "--" if "decay" in name else "-"
            ax.semilogy([s for s, _ in pts], [v for _, v in pts], style, color=colors[(2 * i) % 20 + (i >= 10)], label=label)
        ax.set_title(title)
        ax.set_xlabel("iteration k")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
