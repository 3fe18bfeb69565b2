"""``fpolar.side_streams.side_by_side`` on a GPU (skipped without one): captured in a CUDA graph, each
job is recorded on a lane of its own (nested calls on lanes of their own), the graph's replay gives
what running the jobs in order gives, and the capturing stream waits for every lane; with
``MAX_LANES = 1``, or not capturing, the jobs run in place on the current stream. The drop-in and the
captured train step run their groups this way: their own GPU tests compare them with eager steps."""

from __future__ import annotations

import pytest
import torch

import fpolar.side_streams as side_streams
from fpolar.side_streams import side_by_side

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _jobs(inputs, outputs, streams):
    """Job k: outputs[k] ← inputs[k] @ inputs[k]ᵀ, then a few elementwise ops; records its stream."""

    def job(k):
        def run():
            streams.append((k, torch.cuda.current_stream()))
            y = torch.mm(inputs[k], inputs[k].T)
            outputs[k].copy_(torch.tanh(y) * 0.5 + y.sin())

        return run

    return [job(k) for k in range(len(inputs))]


def _assert_replay_equals_jobs_in_order(graph, xs, outs):
    """The graph's replay writes into ``outs`` exactly what the jobs on ``xs`` write run in order."""
    for o in outs:
        o.zero_()
    graph.replay()
    torch.cuda.synchronize()
    expected = [torch.zeros_like(o) for o in outs]
    for job in _jobs(xs, expected, []):
        job()
    for o, e in zip(outs, expected):
        torch.testing.assert_close(o, e, rtol=0, atol=0)


def _inputs(count, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(256 + 64 * k, 512, device="cuda", generator=gen) for k in range(count)]


def test_captured_jobs_run_on_lanes_of_their_own_and_replay_equals_in_order(monkeypatch):
    monkeypatch.setattr(side_streams, "MAX_LANES", 4)
    xs = _inputs(5, 0)
    outs = [torch.zeros(x.shape[0], x.shape[0], device="cuda") for x in xs]
    streams = []
    side_by_side(torch.device("cuda"), _jobs(xs, outs, []))  # warm-up, outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        capture_stream = torch.cuda.current_stream()
        side_by_side(torch.device("cuda"), _jobs(xs, outs, streams))
    lanes = [s for _, s in streams]
    assert len({s.stream_id for s in lanes}) == 4  # 5 jobs on 4 lanes, round-robin
    assert lanes[0] == lanes[4] and capture_stream not in lanes
    for x in xs:  # fresh inputs at the captured addresses
        x.copy_(torch.randn_like(x))
    _assert_replay_equals_jobs_in_order(graph, xs, outs)


def test_nested_calls_take_lanes_of_their_own(monkeypatch):
    monkeypatch.setattr(side_streams, "MAX_LANES", 3)
    xs = _inputs(4, 1)
    outs = [torch.zeros(x.shape[0], x.shape[0], device="cuda") for x in xs]
    inner_streams, outer_streams = [], []
    inner = _jobs(xs[:3], outs[:3], inner_streams)
    last = _jobs(xs[3:], outs[3:], outer_streams)[0]

    def outer_first():
        outer_streams.append((-1, torch.cuda.current_stream()))
        side_by_side(torch.device("cuda"), inner)

    side_by_side(torch.device("cuda"), [outer_first, last])
    graph = torch.cuda.CUDAGraph()
    inner_streams.clear(), outer_streams.clear()
    with torch.cuda.graph(graph):
        side_by_side(torch.device("cuda"), [outer_first, last])
    assert not {s.stream_id for _, s in inner_streams} & {s.stream_id for _, s in outer_streams}
    assert side_streams._taken[torch.device("cuda")] == 0  # every scope gave its lanes back
    _assert_replay_equals_jobs_in_order(graph, xs, outs)


@pytest.mark.parametrize("capturing", [False, True])
def test_one_lane_or_no_capture_runs_in_place_in_order(monkeypatch, capturing):
    monkeypatch.setattr(side_streams, "MAX_LANES", 1 if capturing else 4)
    xs = _inputs(3, 2)
    outs = [torch.zeros(x.shape[0], x.shape[0], device="cuda") for x in xs]
    streams = []
    if capturing:
        side_by_side(torch.device("cuda"), _jobs(xs, outs, []))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            here = torch.cuda.current_stream()
            side_by_side(torch.device("cuda"), _jobs(xs, outs, streams))
    else:
        here = torch.cuda.current_stream()
        side_by_side(torch.device("cuda"), _jobs(xs, outs, streams))
    assert [k for k, _ in streams] == [0, 1, 2]
    assert all(s == here for _, s in streams)
