"""Independent pieces of a captured step recorded side by side: one CUDA stream each, forked from the
capturing stream and joined back to it.

Why: a step is a row of independent pieces — each shape group's polar step, the AdamW groups. Run one
after another, each piece ends in a tail where most of the device idles (the last wave of a batched
768³ product fills a fraction of the SMs), and the memory-bound pieces (the glue, AdamW) run while
the tensor cores wait. Recorded on separate streams, the CUDA graph holds them as parallel branches
and the device overlaps them.

Only while a CUDA graph is captured. There the branches and the memory of each are fixed once: every
allocation of a branch comes from the graph's pool, and a block is reused only on the stream that
freed it, so the graph's pool holds each concurrent branch's workspace at once. That is the price:
on GPT-2-small's parameters the drop-in's graph pool grows from about 390 to about 810–870 MiB with 4
lanes (``benchmarks/side_streams.py``, H200). So a call whose jobs' estimated workspace adds up to
more than ``MEMORY_FRACTION`` of the device's memory runs them in order: large models keep the
one-branch-at-a-time workspace. Eagerly, a tensor that crosses streams would need ``record_stream``
and each fork host time per step; a torch.compile trace does not see Python streams. So everywhere
else ``side_by_side`` calls the jobs in place, in order.

Off by default for the drop-in (``MAX_LANES`` = 1): on the H200 its step alone was faster with 4
lanes, its measured whole train step was not. ``fpolar.compile.capture_cuda_graph``, whose one graph
holds forward, backward and both steps, records with 4 lanes by default (``with lanes(4)``): there
the whole train step was faster with them.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch

__all__ = ["MAX_LANES", "MEMORY_FRACTION", "being_captured", "check_lanes", "lanes", "side_by_side"]


def check_lanes(count: object, name: str = "lanes") -> int:
    """``count`` as a lane count (an int ≥ 1; 1 runs the pieces in order), else ValueError naming it."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"{name} must be an integer ≥ 1 (1: in order), got {count!r}")
    return count


def _lanes_from_environment() -> int:
    text = os.environ.get("FPOLAR_LANES", "1")
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"FPOLAR_LANES must be an integer ≥ 1 (1: groups in order), got {text!r}")
    return int(text)


# At most this many pieces of one scope run at once; more jobs share the lanes round-robin (in order
# on a lane). 1, the default, turns side-by-side running off everywhere: on the H200 4 lanes took the
# drop-in's step alone on GPT-2-small's parameters from 2.95 to 2.77 ms, yet its whole train step
# came out 0.26–0.42 ms slower than with its groups in order, in three of four same-run comparisons
# (benchmarks/side_streams.py, benchmarks/train.py; BENCHMARKS.md). ``FPOLAR_LANES=4`` turns it on.
MAX_LANES = _lanes_from_environment()

# Side by side only while the jobs' estimated workspace adds up to at most this share of the device's
# memory (2.2 GB of an H200's 141 GB).
MEMORY_FRACTION = 1 / 64



@contextlib.contextmanager
def lanes(count: int) -> Iterator[None]:
    """Inside the block, ``MAX_LANES`` is ``count`` (whatever ``FPOLAR_LANES`` said); restored after.
    Raises ValueError for a ``count`` that is not an int ≥ 1, before changing anything."""
    global MAX_LANES
    check_lanes(count)
    before, MAX_LANES = MAX_LANES, count
    try:
        yield
    finally:
        MAX_LANES = before


_pools: Dict[torch.device, List["torch.cuda.Stream"]] = {}
_taken: Dict[torch.device, int] = {}  # lanes held by enclosing scopes: a nested call takes the next ones


def side_by_side(
    device: torch.device, jobs: Sequence[Callable[[], None]], workspace_bytes: Optional[Sequence[int]] = None
) -> None:
    """Runs each of ``jobs`` (independent: no job reads what another writes) — on a lane of its own
    while a CUDA graph is being captured on ``device``'s current stream, else in place, in order.

    ``workspace_bytes``: an estimate of what each job allocates; when they add up to more than
    ``MEMORY_FRACTION`` of the device's memory the jobs run in order (None: no estimate, no limit).
    Forked lanes start after everything the current stream recorded so far, and the current stream
    waits for all of them before this returns. A job returns nothing: what it allocates lives on its
    lane; what it reads was made before the call and lives on past the join."""
    if (
        not being_captured(device)
        or MAX_LANES <= 1
        or len(jobs) <= 1
        or (workspace_bytes is not None and sum(workspace_bytes) > MEMORY_FRACTION * _device_memory(device))
    ):
        for job in jobs:
            job()
        return
    wanted = min(MAX_LANES, len(jobs))
    start = _taken.get(device, 0)
    origin = torch.cuda.current_stream(device)
    lanes = _lanes(device, start, wanted, origin)
    count = len(lanes)
    _taken[device] = start + wanted
    try:
        for lane in lanes:
            lane.wait_stream(origin)
        for k, job in enumerate(jobs):
            with torch.cuda.stream(lanes[k % count]):
                job()
    finally:
        for lane in lanes:
            origin.wait_stream(lane)
        _taken[device] = start


def _lanes(device: torch.device, start: int, count: int, origin: "torch.cuda.Stream") -> List["torch.cuda.Stream"]:
    """Lanes ``start`` to ``start + count`` of the device's pool, made on first use. PyTorch hands
    out streams round-robin from a fixed pool, so a new one can be a stream already in use: each lane
    is kept distinct from the others (the pool stops growing when no distinct one comes) and from
    ``origin``, which a lane equal to it would just run on (correct, not side by side)."""
    pool = _pools.setdefault(device, [])
    for _ in range(64):
        if len(pool) >= start + count:
            break
        stream = torch.cuda.Stream(device)
        if stream not in pool:
            pool.append(stream)
    return [lane for lane in pool[start : start + count] if lane != origin] or [origin]


def being_captured(device: torch.device) -> bool:
    """Whether this eager call is being recorded into a CUDA graph on ``device``'s current stream;
    never while torch.compile traces (its graphs are not captured this way)."""
    return (
        device.type == "cuda"
        and not torch.compiler.is_compiling()
        and torch.cuda.is_current_stream_capturing()
    )


_memory: Dict[torch.device, int] = {}


def _device_memory(device: torch.device) -> int:
    if device not in _memory:
        _memory[device] = torch.cuda.get_device_properties(device).total_memory
    return _memory[device]
