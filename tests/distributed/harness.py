"""Spawned gloo process groups for the distributed tests: one spawn per world size runs many checks.

Each child initializes gloo on a free port, limits itself to one thread, runs every check of
``checks.CHECKS`` in order and writes one JSON record per check; the process group is destroyed in
``finally``. The parent waits up to a deadline and then kills the children it started, so a check that
hangs a collective fails the test instead of hanging CI.

``run_world(..., backend="nccl", device="cuda")`` runs the same checks one GPU a rank (used by
``benchmarks/distributed_gpu.py``): the child sets ``FPOLAR_DIST_DEVICE`` before importing ``checks``.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import traceback
from datetime import timedelta
from typing import Dict, List, Optional

import torch
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(
    rank: int,
    world_size: int,
    port: int,
    out_dir: str,
    shared_dir: str,
    backend: str = "gloo",
    device: str = "cpu",
    names: Optional[List[str]] = None,
) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), FPOLAR_DIST_DEVICE=device)
    torch.set_num_threads(1)
    if device == "cuda":
        torch.cuda.set_device(rank)
    records: List[Dict[str, object]] = []
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        import checks

        for name, fn in checks.CHECKS:
            wanted = world_size in getattr(fn, "worlds", (2, 4)) if names is None else name in names
            if not wanted:
                continue
            start = time.perf_counter()
            try:
                values = fn(rank, world_size, shared_dir) or {}
                records.append({"name": name, "ok": True, "values": values})
            except Exception:  # noqa: BLE001 - recorded and reported by the parent test
                records.append({"name": name, "ok": False, "error": traceback.format_exc()})
            records[-1]["seconds"] = round(time.perf_counter() - start, 2)
            with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
                json.dump(records, f, default=str)
    finally:
        dist.destroy_process_group()


def run_world(
    world_size: int,
    shared_dir: str,
    timeout_s: float = 420.0,
    backend: str = "gloo",
    device: str = "cpu",
    names: Optional[List[str]] = None,
) -> Dict[str, List[dict]]:
    """Run every check on ``world_size`` spawned ranks; returns {check name: [record of each rank]}.

    ``backend``/``device``: "gloo"/"cpu" (the tests) or "nccl"/"cuda" (rank r on GPU r). ``names``: run
    exactly these checks (whatever their ``worlds``); None: every check made for ``world_size``."""
    out_dir = tempfile.mkdtemp(prefix=f"fpolar_dist{world_size}_")
    path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, HERE] + ([path] if path else []))
    ctx = mp.start_processes(
        _child,
        args=(world_size, free_port(), out_dir, shared_dir, backend, device, names),
        nprocs=world_size, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout_s
    error = None
    try:
        while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                error = f"world {world_size}: children still running after {timeout_s} s"
                break
    except Exception as e:  # a child raised outside the per-check guard
        error = f"world {world_size}: {e}"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
    results: Dict[str, List[dict]] = {}
    for rank in range(world_size):
        try:
            with open(os.path.join(out_dir, f"rank{rank}.json")) as f:
                for rec in json.load(f):
                    results.setdefault(rec["name"], []).append(rec)
        except FileNotFoundError:
            pass
    if error is not None:
        results["__spawn__"] = [{"ok": False, "error": error}]
    return results


def assert_check(results: Dict[str, List[dict]], name: str, world_size: int) -> List[dict]:
    """Fail unless check ``name`` ran and passed on every rank; returns its records."""
    if "__spawn__" in results and name not in results:
        raise AssertionError(results["__spawn__"][0]["error"])
    recs = results.get(name, [])
    failed = [r for r in recs if not r["ok"]]
    if failed:
        raise AssertionError(f"{name} failed on {len(failed)} rank(s):\n{failed[0]['error']}")
    if len(recs) != world_size:
        extra = results.get("__spawn__", [{"error": ""}])[0]["error"]
        raise AssertionError(f"{name} ran on {len(recs)} of {world_size} ranks. {extra}")
    return recs
