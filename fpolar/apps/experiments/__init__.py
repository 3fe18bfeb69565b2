"""Reproductions of the PolarGrad paper's experiments with fpolar's functional API.

    python -m fpolar paper --quick          # or: python benchmarks/paper/run.py --quick

Modules, one idea each:
    quadratic_regression   §6.1 problem: data, loss, closed-form gradient, float64 optimum
    logistic_regression    §6.2 problem: data, minibatches, loss, closed-form gradient
    optimizers             the optimizer configurations as data, and their functional-API steppers
    runner                 the training loop that records a curve
    report, plot           markdown tables against the paper's figures; the PNG
    paper                  the paper's settings, references, and ``main`` (the command line)

Nothing is imported here, so ``import fpolar`` and ``python -m fpolar.apps.experiments.paper`` stay cheap and
clean; import ``fpolar.apps.experiments.paper`` for ``main`` and ``run_reproduction``.
"""
