"""How the drop-in's CUDA-graph program follows the grads (``fpolar.optim.compiled_step``), on CPU.

A captured graph reads the grads at the addresses it was captured with. The policy — replay the
layout's graph whose addresses match, capture another for addresses not seen, copy into the
program's own grads after ``RECAPTURES_BEFORE_COPYING`` — is exercised here with a stand-in for
``torch.cuda.CUDAGraph`` that keeps the recorded call, tensors and all, and runs it again on each
replay: a replay reads the tensors the capture saw, as a real graph reads their memory. So a graph
replayed on grads that moved would step with stale values, and the params would leave the eager
twin's. The same scenarios on a GPU: tests/gpu/test_optim_compiled_gpu.py.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

import pytest
import torch

import fpolar.optim as fo
import fpolar.optim.compiled_step as compiled_step
from fpolar.optim.compiled_step import RECAPTURES_BEFORE_COPYING, StepProgram

TOL = dict(rtol=2e-6, atol=2e-6)  # fused AdamW in the program, foreach AdamW in the eager twin


class RecordedCall:
    """Stands in for ``torch.cuda.CUDAGraph``: ``replay()`` runs the recorded call again."""

    def __init__(self) -> None:
        self.record: Optional[Callable[[], None]] = None
        self.pool: Any = None

    def replay(self) -> None:
        assert self.record is not None
        self.record()


@pytest.fixture
def pools(monkeypatch) -> List[Any]:
    """Replaces the CUDA capture with ``RecordedCall``; returns the pool each capture was given. No
    grad counts as small (every one is followed) unless a test sets ``SMALL_GRAD_BYTES`` itself."""
    seen: List[Any] = []
    monkeypatch.setattr(compiled_step, "SMALL_GRAD_BYTES", 0)

    def capture(graph: RecordedCall, record: Callable[[], None], device: torch.device, pool: Any = None) -> None:
        graph.record, graph.pool = record, pool
        seen.append(pool)

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", RecordedCall)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: object())
    monkeypatch.setattr(compiled_step, "capture_keeping_cache", capture)
    return seen


def make_params(seed: int = 0) -> List[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(12, 8), (12, 8), (8, 20), (12,), (8,)]
    return [torch.randn(s, generator=gen).requires_grad_() for s in shapes]


def fresh_grads(params: List[torch.Tensor], seed: int) -> List[torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + seed)
    return [torch.randn(p.shape, generator=gen) for p in params]


def build(params: List[torch.Tensor]) -> fo.Muon:
    groups = [{"params": params[:3]}, {"params": params[3:], "algorithm": "adamw", "lr": 3e-3, "weight_decay": 0.01}]
    return fo.Muon(groups, lr=0.02, weight_decay=0.05, polar_dtype=torch.float32, compiled=False)


def twins() -> tuple:
    """Two equal param sets, an optimizer for each, and the program that steps the second."""
    p_e, p_g = make_params(), make_params()
    return p_e, p_g, build(p_e), build(p_g), StepProgram("cuda_graph")


def give_fresh(params: List[torch.Tensor], values: List[torch.Tensor]) -> None:
    """Each param's grad: a new tensor holding this step's value (new memory every step)."""
    for p, v in zip(params, values):
        p.grad = v.clone()


def step_both(opt_e: fo.Muon, opt_g: fo.Muon, prog: StepProgram) -> None:
    with torch.no_grad():
        opt_e._prepare()
        opt_e._apply()
        opt_g._prepare()
        prog(opt_g)


def test_grads_cycling_between_two_places_replay_two_graphs(pools):
    """Grads written each step into one of two sets of buffers, in turn (a loop whose grad is
    allocated while the last one is alive): the layout is captured once per set, then every step
    replays the graph of the set the grads are in: no more captures, no copy, the eager twin's params
    at every step. Both graphs were given one memory pool."""
    p_e, p_g, opt_e, opt_g, prog = twins()
    buffers = [[torch.empty_like(p) for p in p_g] for _ in range(2)]
    for k in range(10):
        values = fresh_grads(p_e, k)
        give_fresh(p_e, values)
        for p, b, v in zip(p_g, buffers[k % 2], values):
            p.grad = b.copy_(v)
        step_both(opt_e, opt_g, prog)
        torch.testing.assert_close(p_g, p_e, **TOL)
    # step 0 warm-up, 1 captured on set B, 2 captured on set A, 3-9 replays
    assert (prog.warmups, prog.captures, prog.recaptures, prog.graphs, prog.copies_grads) == (1, 2, 1, 2, False)
    assert prog.replays == 9
    assert len(pools) == 2 and pools[0] is pools[1] and pools[0] is not None
    assert max(float((a - b).detach().abs().max()) for a, b in zip(p_g, make_params())) > 1e-3


def test_grads_somewhere_new_every_step_end_copied_in(pools):
    """Grads in new memory every step (the old ones kept alive): the layout is captured again on
    them ``RECAPTURES_BEFORE_COPYING`` times, keeping every graph; the next move drops them with
    their pool and captures one graph, in a new pool, on tensors of the program's own, into which
    each step's grads are copied.
    Never a replay on stale grads: the eager twin's params at every step."""
    p_e, p_g, opt_e, opt_g, prog = twins()
    kept = []
    steps = RECAPTURES_BEFORE_COPYING + 5
    for k in range(steps):
        values = fresh_grads(p_e, k)
        give_fresh(p_e, values)
        give_fresh(p_g, values)
        kept.append([p.grad for p in p_g])
        step_both(opt_e, opt_g, prog)
        torch.testing.assert_close(p_g, p_e, **TOL)
        if k == RECAPTURES_BEFORE_COPYING + 1:  # step 0 was the warm-up
            assert not prog.copies_grads and prog.graphs == RECAPTURES_BEFORE_COPYING + 1
    assert prog.copies_grads and prog.graphs == 1 and prog.copied_grads == len(p_g)
    assert prog.captures == RECAPTURES_BEFORE_COPYING + 2  # one per place seen, then one on its own grads
    assert prog.recaptures == RECAPTURES_BEFORE_COPYING + 1
    assert prog.replays == steps - 1
    # the graphs for the places seen shared one pool; the graph on the program's own grads, captured
    # after they were dropped (and their pool released with them), has a new one
    assert len(set(map(id, pools[:-1]))) == 1 and pools[-1] is not pools[0]


def test_a_new_layout_drops_the_graphs_and_their_pool(pools):
    """A param losing its grad is a new layout: warmed up again, captured on a pool of its own; the
    old layout's graphs are gone."""
    p_e, p_g, opt_e, opt_g, prog = twins()
    buffers = [[torch.empty_like(p) for p in p_g] for _ in range(2)]
    for k in range(6):
        values = fresh_grads(p_e, k)
        for i, (pe, pg, b, v) in enumerate(zip(p_e, p_g, buffers[k % 2], values)):
            skip = k >= 4 and i == 1
            pe.grad = None if skip else v.clone()
            pg.grad = None if skip else b.copy_(v)
        step_both(opt_e, opt_g, prog)
        torch.testing.assert_close(p_g, p_e, **TOL)
    assert (prog.warmups, prog.captures, prog.graphs) == (2, 3, 1)
    assert pools[0] is pools[1] and pools[2] is not pools[0]


def test_small_grads_are_copied_in_and_large_ones_followed(pools, monkeypatch):
    """Grads of at most ``SMALL_GRAD_BYTES`` (here the two vectors, 48 and 32 bytes; the matrices
    have 384 and more) are copied into the program's own tensors each step, so their moving (a new
    tensor every step, the old ones kept alive) costs no capture: the matrices' grads stay in their
    buffers, and the one graph replays every step, equal to the eager twin."""
    monkeypatch.setattr(compiled_step, "SMALL_GRAD_BYTES", 64)
    p_e, p_g, opt_e, opt_g, prog = twins()
    large = [torch.empty_like(p) for p in p_g[:3]]
    kept = []
    for k in range(6):
        values = fresh_grads(p_e, k)
        give_fresh(p_e, values)
        for p, b, v in zip(p_g[:3], large, values[:3]):
            p.grad = b.copy_(v)
        give_fresh(p_g[3:], values[3:])
        kept.append([p.grad for p in p_g[3:]])
        step_both(opt_e, opt_g, prog)
        torch.testing.assert_close(p_g, p_e, **TOL)
    assert (prog.warmups, prog.captures, prog.recaptures, prog.replays) == (1, 1, 0, 5)
    assert prog.copied_grads == 2 and not prog.copies_grads
