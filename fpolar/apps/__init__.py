"""Programs built on the library: the command line and what it runs. Nothing in ``fpolar`` imports them.

    cli           ``python -m fpolar [demo|bench|paper]``: parses the command line, dispatches
    demo          PolarGrad, Muon and AdamW side by side on a small MLP (the default command)
    bench         fpolar's whole optimizer step against torch.optim.Muon
    experiments/  the PolarGrad paper's §6.1 / §6.2 reproductions

Nothing is imported here, so ``import fpolar.apps.cli`` stays cheap.
"""
