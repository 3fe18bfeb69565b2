"""Bytes and ops of one distributed step against the one-device step, without a GPU.

One step (after a first step that builds the state) of each recipe runs inside ``OpLedger``
(``benchmarks/op_ledger.py``), on CPU in spawned gloo ranks (``--world``, default 1):

* ``one-device polargrad_step`` (rank 0): plain tensors, the one-device state (stacked momentum);
* ``distributed step``: the same matrices as FSDP2 ``fully_shard`` params on a mesh of every rank
  (DTensor ``Shard(0)``), the distributed state, ``fpolar.polargrad_step``; rank 0's ledger and, with
  more than one rank, the sum over ranks (the all_to_all's bytes counted on both sides).

The matrix set is ``distributed_gpu.py``'s GPT-2 block set (qkv (3d, d), out (d, d), fc (4d, d),
proj (d, 4d) per layer), scaled down (``--d``, ``--layers``) so the real math runs on a CPU in
seconds; bytes scale with d², so the ratios are those of the full set. Hparams are the GPU
benchmark's (Muon: shape scale, Nesterov, 5 "muon" steps, no decay) with the iteration in bfloat16 as
on CUDA. On a CPU both recipes run the torch glue (on CUDA the one-device step runs the fused glue:
fewer bytes still); what the table shows is the distributed step's extra work over the one-device
step's same math. Ops that move no bytes (views, bare allocations, funcol's waits: ``NO_BYTES``) are
counted as ops but not as bytes.

    PYTHONPATH=$PWD python benchmarks/distributed_traffic.py            # d 256, 4 layers, world 1
    PYTHONPATH=$PWD python benchmarks/distributed_traffic.py --world 2  # the exchange path
    PYTHONPATH=$PWD python benchmarks/distributed_traffic.py --d 128 --layers 2 --ops --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections import defaultdict
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import fpolar  # noqa: E402
from op_ledger import COPY_OPS, OpLedger  # noqa: E402

MIB = 2**20
# Ops that move no bytes: views (the ledger counts a view's size as read and written), allocations
# without a fill, funcol's wrappers and waits (they return their input), dtype queries.
NO_BYTES = frozenset(
    {"view", "_unsafe_view", "select", "slice", "transpose", "t", "permute", "unsqueeze", "squeeze", "expand",
     "as_strided", "alias", "unbind", "split", "split_with_sizes", "narrow", "detach", "diagonal", "unflatten",
     "empty", "empty_like", "empty_strided", "_wrap_tensor_autograd", "wait_tensor", "promote_types", "lift_fresh"}
)


def matrix_set(d: int, layers: int) -> List[Tuple[int, int]]:
    """``distributed_gpu.matrix_set``: per layer qkv (3d, d), out (d, d), fc (4d, d), proj (d, 4d)."""
    return [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)] * layers


def hparams() -> fpolar.PolarGradHParams:
    """``distributed_gpu.functional_hparams`` with the CUDA iteration dtype (bfloat16)."""
    return fpolar.PolarGradHParams(
        lr=torch.tensor(0.02), weight_decay=0.0, momentum=0.95, nesterov=True, scale="shape",
        coefficients="muon", ns_steps=5, nonfinite="propagate", polar_dtype=torch.bfloat16,
    )


def weights(shapes: List[Tuple[int, int]]) -> List[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen) / s[1] ** 0.5 for s in shapes]


def grads_like(shapes: List[Tuple[int, int]]) -> List[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(s, generator=gen) for s in shapes]


def one_device(shapes) -> Tuple[OpLedger, List[torch.Tensor]]:
    params, grads, hp = weights(shapes), grads_like(shapes), hparams()
    state = fpolar.init_state(params, hp)
    with torch.no_grad():
        fpolar.polargrad_step(params, grads, state, hp)
        with OpLedger() as ledger:
            fpolar.polargrad_step(params, grads, state, hp)
    return ledger, params


def distributed(shapes, world: int, rank: int) -> Tuple[OpLedger, List[torch.Tensor]]:
    """One step of the distributed step on ``fully_shard`` params over ``world`` ranks; this rank's
    ledger, and the whole params after it (gathered)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from fpolar.distributed.layout import chunk_spans

    mesh = init_device_mesh("cpu", (world,))
    model = nn.Module()
    model.layers = nn.ModuleList()
    for w in weights(shapes):
        layer = nn.Module()
        layer.weight = nn.Parameter(w)
        model.layers.append(layer)
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    params = [layer.weight for layer in model.layers]
    grads = []
    for g, p in zip(grads_like(shapes), params):
        start, length = chunk_spans(g.shape[0], world)[rank]
        grads.append(DTensor.from_local(g[start : start + length].contiguous(), mesh, p.placements, run_check=False,
                                        shape=p.shape, stride=p.stride()))
    hp = hparams()
    state = fpolar.init_state(params, hp)
    with torch.no_grad():
        fpolar.polargrad_step(params, grads, state, hp)
        with OpLedger() as ledger:
            fpolar.polargrad_step(params, grads, state, hp)
    return ledger, [p.full_tensor() for p in params]


def summary(ledger: OpLedger) -> Dict[str, Any]:
    recs = [r for r in ledger.records if r.name not in NO_BYTES]
    per_op: Dict[str, List[int]] = defaultdict(lambda: [0, 0, 0])
    for r in recs:
        per_op[r.name][0] += 1
        per_op[r.name][1] += r.read
        per_op[r.name][2] += r.written
    copies = [r for r in recs if r.name in COPY_OPS]
    return {
        "ops": len(ledger.records),
        "ops_moving_bytes": len(recs),
        "read_bytes": sum(r.read for r in recs),
        "written_bytes": sum(r.written for r in recs),
        "copies": len(copies),
        "copy_bytes": sum(r.written for r in copies),
        "peak_live_bytes": ledger.peak_live_bytes,
        "per_op": {k: {"count": v[0], "read": v[1], "written": v[2]} for k, v in per_op.items()},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, world: int, port: int, shapes: List[Tuple[int, int]], out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1 if world > 1 else max(1, min(4, os.cpu_count() or 1)))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        dis, p_dis = distributed(shapes, world, rank)
        out: Dict[str, Any] = {"distributed": summary(dis)}
        if rank == 0:
            one, p_one = one_device(shapes)
            out["one_device"] = summary(one)
            out["max_abs_diff"] = max((a - b).abs().max().item() for a, b in zip(p_one, p_dis))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


def main() -> None:
    import tempfile

    import torch.multiprocessing as mp

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=256, help="model width (GPT-2-medium: 1024)")
    ap.add_argument("--layers", type=int, default=4, help="blocks (GPT-2-medium: 24)")
    ap.add_argument("--world", type=int, default=1, help="gloo ranks of the distributed step (spawned)")
    ap.add_argument("--ops", action="store_true", help="also print each recipe's bytes per op")
    ap.add_argument("--json", help="write the summaries here")
    args = ap.parse_args()
    if args.world < 1:
        raise SystemExit(f"--world {args.world}: need at least 1 rank")
    shapes = matrix_set(args.d, args.layers)
    out_dir = tempfile.mkdtemp(prefix="fpolar_traffic_")
    path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), HERE] + ([path] if path else []))
    mp.start_processes(_rank, args=(args.world, free_port(), shapes, out_dir), nprocs=args.world, start_method="spawn")
    ranks = []
    for r in range(args.world):
        with open(os.path.join(out_dir, f"rank{r}.json")) as f:
            ranks.append(json.load(f))
    param_bytes = sum(r * c for r, c in shapes) * 4
    diff = ranks[0]["max_abs_diff"]
    results = {"one-device polargrad_step": ranks[0]["one_device"]}
    if args.world == 1:
        results["distributed step, 1-rank fully_shard"] = ranks[0]["distributed"]
    else:
        results[f"distributed step, rank 0 of {args.world}"] = ranks[0]["distributed"]
        total = {k: sum(rk["distributed"][k] for rk in ranks) for k in ("ops", "ops_moving_bytes", "read_bytes",
                                                                         "written_bytes", "copies", "copy_bytes")}
        total["peak_live_bytes"] = max(rk["distributed"]["peak_live_bytes"] for rk in ranks)
        total["per_op"] = {}
        for rk in ranks:
            for op, v in rk["distributed"]["per_op"].items():
                acc = total["per_op"].setdefault(op, {"count": 0, "read": 0, "written": 0})
                for k in acc:
                    acc[k] += v[k]
        results[f"distributed step, sum of {args.world} ranks"] = total
    print(f"d {args.d}, {args.layers} layers: {len(shapes)} matrices, {param_bytes / MIB:.1f} MiB of fp32 params "
          f"(P); bf16 iteration, CPU, world {args.world}; params after two steps differ by {diff:.3g}")
    print(f"{'recipe':<38} {'ops':>5} {'moving':>6} {'copies':>6} {'copy/P':>7} {'read/P':>7} {'written/P':>9} {'peak live/P':>11}")
    for name, s in results.items():
        print(f"{name:<38} {s['ops']:>5} {s['ops_moving_bytes']:>6} {s['copies']:>6} {s['copy_bytes'] / param_bytes:>7.2f} "
              f"{s['read_bytes'] / param_bytes:>7.2f} {s['written_bytes'] / param_bytes:>9.2f} "
              f"{s['peak_live_bytes'] / param_bytes:>11.2f}")
        if args.ops:
            rows = sorted(s["per_op"].items(), key=lambda kv: -(kv[1]["read"] + kv[1]["written"]))
            for op, v in rows:
                print(f"    {op:<28} ×{v['count']:<4} read {v['read'] / param_bytes:6.2f} P  written {v['written'] / param_bytes:6.2f} P")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"d": args.d, "layers": args.layers, "world": args.world, "param_bytes": param_bytes, "max_abs_diff": diff,
                       "recipes": results}, f, indent=1)


if __name__ == "__main__":
    main()
