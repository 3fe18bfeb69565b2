"""``fpolar.side_streams.side_by_side`` off a CUDA capture (CPU here): the jobs run in place, in the
order given, each once, nested calls too; an exception propagates. The lanes themselves need a
CUDA graph capture: tests/gpu/test_side_streams_gpu.py."""

from __future__ import annotations

import pytest
import torch

from fpolar.side_streams import side_by_side


def test_jobs_run_in_order_in_place_when_not_capturing():
    ran = []
    x = torch.zeros(3)

    def job(k):
        def run():
            ran.append(k)
            x[k] += k + 1

        return run

    side_by_side(torch.device("cpu"), [job(0), lambda: side_by_side(torch.device("cpu"), [job(1), job(2)])])
    assert ran == [0, 1, 2]
    assert x.tolist() == [1.0, 2.0, 3.0]


def test_a_failing_job_raises_and_stops_the_rest():
    ran = []

    def boom():
        raise ValueError("bad job")

    with pytest.raises(ValueError, match="bad job"):
        side_by_side(torch.device("cpu"), [lambda: ran.append(0), boom, lambda: ran.append(2)])
    assert ran == [0]


@pytest.mark.parametrize("value, lanes", [("1", 1), ("4", 4), (" 2 ", 2)])
def test_lanes_from_the_environment(monkeypatch, value, lanes):
    from fpolar import side_streams

    monkeypatch.setenv("FPOLAR_LANES", value)
    assert side_streams._lanes_from_environment() == lanes


@pytest.mark.parametrize("value", ["0", "-1", "four", "2.5", ""])
def test_a_bad_lane_count_names_the_value(monkeypatch, value):
    from fpolar import side_streams

    monkeypatch.setenv("FPOLAR_LANES", value)
    with pytest.raises(ValueError, match="FPOLAR_LANES must be an integer ≥ 1") as err:
        side_streams._lanes_from_environment()
    assert repr(value) in str(err.value)


def test_lanes_context_sets_and_restores_the_count():
    """``lanes(n)`` holds ``MAX_LANES`` at n inside the block, restores it after (an exception
    included), and refuses a bad count, naming it, before changing anything."""
    from fpolar import side_streams

    before = side_streams.MAX_LANES
    with side_streams.lanes(3):
        assert side_streams.MAX_LANES == 3
    assert side_streams.MAX_LANES == before
    with pytest.raises(RuntimeError, match="inside"):
        with side_streams.lanes(5):
            raise RuntimeError("inside")
    assert side_streams.MAX_LANES == before
    for bad in (0, -2, 1.5, False, "4"):
        with pytest.raises(ValueError, match=f"lanes must be an integer ≥ 1.*got {bad!r}"):
            with side_streams.lanes(bad):  # type: ignore[arg-type]
                pass
        assert side_streams.MAX_LANES == before
