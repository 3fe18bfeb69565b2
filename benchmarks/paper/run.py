"""The PolarGrad paper's §6.1 / §6.2 reproductions; the same as ``python -m fpolar paper``.

    python benchmarks/paper/run.py --quick                       # ~1 minute on a 2-core CPU
    python benchmarks/paper/run.py --device cuda --out paper.json --plot paper.png   # full size

All the code lives in ``fpolar.apps.experiments`` (see ``fpolar/apps/experiments/paper.py`` for the settings).
"""

import sys
from pathlib import Path

# Run from a checkout without installing: the repository root holds the fpolar package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fpolar.apps.experiments.paper import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
