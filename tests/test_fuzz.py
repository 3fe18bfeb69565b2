"""Random shapes and random valid hparams: every step stays finite (grads of any magnitude in float32's
range, zero grads, NaN grads that must be skipped). Seeded, about 60 configurations, a few seconds."""

import math
import random

import torch

import fpolar


def random_hparams(rng: random.Random) -> fpolar.PolarGradHParams:
    polar = rng.choice(["newton_schulz", "newton_schulz", "gram_newton_schulz", "qdwh", "svd"])
    kw = dict(
        lr=rng.choice([1e-3, 0.02, torch.tensor(0.01)]),
        momentum=rng.choice([0.0, 0.9, 0.95]),
        nesterov=rng.random() < 0.5,
        weight_decay=rng.choice([0.0, 0.1]),
        weight_decay_mode=rng.choice(["decoupled", "independent", "l2"]),
        order=rng.choice(["momentum_first", "polar_first"]),
        scale=rng.choice(["nuclear", "shape", "spectral", "rms_adamw", "unit_rms", "none"]),
        polar=polar,
    )
    if polar in ("newton_schulz", "gram_newton_schulz"):
        kw["coefficients"] = rng.choice(["polar_express", "muon", "quintic"] + (["aol"] if polar == "newton_schulz" else []))
        kw["ns_steps"] = rng.choice([None, 3, 8])
    return fpolar.PolarGradHParams(**kw)


def random_shape(rng: random.Random):
    kind = rng.random()
    if kind < 0.6:
        return (rng.randint(1, 9), rng.randint(1, 9))
    if kind < 0.8:
        return (rng.randint(1, 3), rng.randint(1, 6), rng.randint(1, 6))
    return (rng.randint(1, 4), rng.randint(1, 3), 2, 2)


def test_fuzz_steps_stay_finite():
    rng = random.Random(1234)
    torch.manual_seed(1234)
    for _ in range(60):
        hp = random_hparams(rng)
        shapes = [random_shape(rng) for _ in range(rng.randint(1, 4))]
        params = [torch.randn(s) for s in shapes]
        state = fpolar.init_state(params, hp)
        skipped = 0
        for k in range(3):
            magnitude = rng.choice([1.0, 1e20, 1e-30, 0.0])
            grads = [torch.randn(s) * magnitude for s in shapes]
            if rng.random() < 0.3:
                grads[rng.randrange(len(grads))].view(-1)[0] = rng.choice([math.nan, math.inf])
                skipped += 1
            fpolar.polargrad_step(params, grads, state, hp)
            assert all(torch.isfinite(p).all() for p in params), (hp, shapes, magnitude)
            assert all(torch.isfinite(b).all() for b in state.buffers), (hp, shapes, magnitude)
        assert state.skipped.item() == skipped and state.step.item() == 3 - skipped
