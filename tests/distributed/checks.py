"""Checks run inside every spawned rank (see harness.py); each returns measured values or raises.

The model: matrices of mixed shapes, each in its own layer, ``fully_shard``-ed per layer:
three (7, 8) (7 rows: not divisible by 2 or 4), a (3, 7) (fewer rows than 4 ranks: empty shards), a
tall (10, 3), a 3-D (3, 5, 6) stack (whole matrices per rank; one rank of 4 holds none), a conv
weight (5, 3, 3, 3) and a fused QKV (12, 8) split as [6, 3, 3]. The reference is the one-process
``fpolar.polargrad_step`` on full tensors (the QKV as three separate params).

The checks run on CPU under gloo (the test suite) unless ``FPOLAR_DIST_DEVICE`` names another device
type: "cuda" runs them on NCCL, one GPU a rank (``benchmarks/distributed_gpu.py``). The one-process
reference stays on CPU in float32; on CUDA the polar iteration is asked for in float32 (its CUDA
default is bfloat16) so the reference stays a tight check (TOL 1e-3 there: GPU float32 matmuls and
QDWH's factorizations round differently from the CPU's), and the bfloat16 path keeps its own check
(``check_bf16_exchange``).
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from torch import nn

import fpolar
import fpolar.optim
from fpolar.distributed import distributed_polargrad_step, init_distributed_state
from fpolar.distributed.layout import chunk_spans

SHAPES: Dict[str, Tuple[int, ...]] = {
    "a": (7, 8),
    "b": (7, 8),
    "c": (7, 8),
    "small": (3, 7),
    "tall": (10, 3),
    "stack": (3, 5, 6),
    "conv": (5, 3, 3, 3),
    "qkv": (12, 8),
}
QKV_SPLIT = (6, 3, 3)
DEVICE_TYPE = os.environ.get("FPOLAR_DIST_DEVICE", "cpu")
ON_CPU = DEVICE_TYPE == "cpu"
TOL = 1e-5 if ON_CPU else 1e-3
FP32_POLAR: dict = {} if ON_CPU else {"polar_dtype": torch.float32}


def on_device(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the checks' device (the current CUDA device under NCCL); itself on CPU."""
    return t if ON_CPU else t.to(DEVICE_TYPE)


class Layer(nn.Module):
    def __init__(self, shape: Tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(shape) / shape[-1] ** 0.5)
        self.bias = nn.Parameter(torch.randn(shape[0]) * 0.1)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({k: Layer(s) for k, s in SHAPES.items()})

    def __getitem__(self, key: str) -> Layer:
        return self.layers[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # fully_shard needs a root with a forward
        return x


_MODEL: dict = {}


def sharded_model(world_size: int):
    """The model, fully_shard-ed per layer once per process, its weights reset to the seed-0 values."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    fresh = Model()
    full = {k: layer.weight.detach().clone() for k, layer in fresh.layers.items()}
    if world_size not in _MODEL:
        mesh = init_device_mesh(DEVICE_TYPE, (world_size,))
        for layer in fresh.layers.values():
            fully_shard(layer, mesh=mesh)
        fully_shard(fresh, mesh=mesh)
        _MODEL[world_size] = (fresh, mesh)
    model, mesh = _MODEL[world_size]
    with torch.no_grad():
        for k in SHAPES:
            model[k].weight.to_local().copy_(as_shard(full[k], model[k].weight).to_local())
    return model, full, mesh


def full_grads(step: int) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    return {k: torch.randn(s, generator=gen) for k, s in SHAPES.items()}


def as_shard(full: torch.Tensor, like) -> torch.Tensor:
    """The DTensor Shard(0) of ``full`` on ``like``'s mesh, built from local rows (no communication)."""
    from torch.distributed.tensor import DTensor

    mesh = like.device_mesh
    start, length = chunk_spans(full.shape[0], mesh.size())[mesh.get_local_rank()]
    local = full[start : start + length].contiguous()
    return DTensor.from_local(local, mesh, like.placements, run_check=False, shape=full.shape, stride=full.stride())


def reference_params(full: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
    out = []
    for k in SHAPES:
        out.extend(full[k].split(QKV_SPLIT) if k == "qkv" else [full[k]])
    return [t.clone() for t in out]


def reference_grads(g: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
    out = []
    for k in SHAPES:
        out.extend(g[k].split(QKV_SPLIT) if k == "qkv" else [g[k]])
    return out


def split_of() -> Dict[int, Tuple[int, ...]]:
    return {list(SHAPES).index("qkv"): QKV_SPLIT}


CONFIGS = [
    dict(polar=polar, order=order, scale=scale)
    for polar in ("newton_schulz", "qdwh", "svd")
    for order in ("momentum_first", "polar_first")
    for scale in ("nuclear", "shape")
]


def hparams(cfg: dict, nesterov: bool) -> fpolar.PolarGradHParams:
    """Default ``nonfinite="skip"``: on these finite grads every rank agrees on "no skip" (one
    all_reduce) and steps like the single-process reference."""
    lr = 0.01 if cfg["scale"] == "nuclear" else 0.05
    return fpolar.PolarGradHParams(lr=lr, weight_decay=0.1, nesterov=nesterov, **cfg, **FP32_POLAR)


def run_reference(full, hp, steps: int) -> List[torch.Tensor]:
    ref = reference_params(full)
    state = fpolar.init_state(ref, hp)
    for t in range(steps):
        fpolar.polargrad_step(ref, reference_grads(full_grads(t)), state, hp)
    return ref


def compare(got: Dict[str, torch.Tensor], ref: List[torch.Tensor]) -> float:
    ref_full, k = {}, 0
    for name in SHAPES:
        parts = len(QKV_SPLIT) if name == "qkv" else 1
        ref_full[name] = torch.cat(ref[k : k + parts]) if parts > 1 else ref[k]
        k += parts
    return max((got[n].cpu() - ref_full[n]).abs().max().item() for n in SHAPES)


def check_fsdp_parity(rank: int, world: int, shared: str) -> dict:
    """5 steps of the planned step on fully_shard params == the one-process step."""
    errors = {}
    # every config at 2 ranks; at 4 ranks (empty shards, fewer rows than ranks) a subset that still
    # covers each method, order and scale, to keep CI time down
    chosen = range(len(CONFIGS)) if world == 2 else (0, 3, 5, 6, 9, 11)
    for j in chosen:
        cfg = CONFIGS[j]
        model, full, _ = sharded_model(world)
        params = [model[k].weight for k in SHAPES]
        hp = hparams(cfg, nesterov=j % 2 == 1)
        state = init_distributed_state(params, hp, split_sizes=split_of())
        for t in range(5):
            g = full_grads(t)
            grads = [as_shard(g[k], model[k].weight) for k in SHAPES]
            with torch.no_grad():
                distributed_polargrad_step(params, grads, state, hp)
        got = {k: model[k].weight.full_tensor() for k in SHAPES}
        err = compare(got, run_reference(full, hp, 5))
        errors["/".join(cfg.values()) + ("/nesterov" if j % 2 else "")] = err
        assert err <= TOL, f"{cfg}: max abs error {err:.3g} > {TOL}"
        mom_is_dtensor = all(type(m).__name__ == "DTensor" for m in state.momentum)
        assert mom_is_dtensor, "momentum must stay DTensor in the params' layout"
    return {"max_abs_error": errors}


def check_bf16_exchange(rank: int, world: int, shared: str) -> dict:
    """A bfloat16 polar dtype (the CUDA default): rows travel in bf16, step sizes as float32 bit-cast into
    two bf16 slots. Against the one-process bf16 step: close, not equal, because the owner's ⟨O, X⟩
    reads X after its bf16 trip (the one-process step reads the float32 momentum)."""
    model, full, _ = sharded_model(world)
    params = [model[k].weight for k in SHAPES]
    hp = fpolar.PolarGradHParams(lr=0.01, weight_decay=0.1, polar_dtype=torch.bfloat16, nonfinite="propagate")
    state = fpolar.init_state(params, hp, split_sizes=split_of())
    for t in range(3):
        g = full_grads(t)
        with torch.no_grad():
            fpolar.polargrad_step(params, [as_shard(g[k], model[k].weight) for k in SHAPES], state, hp)
    err = compare({k: model[k].weight.full_tensor() for k in SHAPES}, run_reference(full, hp, 3))
    moved = compare({k: full[k] for k in SHAPES}, run_reference(full, hp, 3))
    # bf16 Newton–Schulz is itself accurate to a few percent, and rounding its input to bf16 moves O by
    # up to ~10% on these shapes (measured: polar(x) vs polar(bf16(x)), both bf16): the bound is that,
    # not 1e-5. A mangled scale bit pattern would be off by orders of magnitude (the bits are checked
    # exactly in tests/test_distributed_plan.py).
    assert err == err and err <= 0.15 * moved, f"bf16 exchange: error {err:.3g} against a total update of {moved:.3g}"
    return {"max_abs_error": err, "max_abs_update": moved}


# world 1 too: the bf16 step on a one-rank mesh, where every group is "local" (no exchange)
check_bf16_exchange.worlds = (1, 2)
check_fsdp_parity.worlds = (1, 2, 4)  # one rank: every group "local", equal to the one-process step


def check_replicate_dtensor(rank: int, world: int, shared: str) -> dict:
    """DTensor params with a Replicate placement share the polar work like DDP (one all_gather per group);
    a NaN grad (Replicate: the same on every rank) is skipped on every rank without an all_reduce."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate

    mesh = init_device_mesh(DEVICE_TYPE, (world,))
    torch.manual_seed(0)
    full = {k: torch.randn(s) / s[-1] ** 0.5 for k, s in SHAPES.items()}
    params = [DTensor.from_local(full[k].clone(), mesh, [Replicate()], run_check=False) for k in SHAPES]
    hp = hparams(CONFIGS[0], nesterov=True)
    state = fpolar.init_state(params, hp, split_sizes=split_of())
    assert {g.kind for g in state.plan.groups} == ({"replicated"} if world > 1 else {"local"})
    for t in range(3):
        g = full_grads(t)
        grads = [DTensor.from_local(g[k], mesh, [Replicate()], run_check=False) for k in SHAPES]
        fpolar.polargrad_step(params, grads, state, hp)
    bad = [DTensor.from_local(v.clone(), mesh, [Replicate()], run_check=False) for v in full_grads(9).values()]
    bad[2].to_local()[0, 0] = float("nan")
    before = _bits(params + state.momentum + [state.step])
    counts = _comm_counts(lambda: fpolar.polargrad_step(params, bad, state, hp))
    assert _same_bits(_bits(params + state.momentum + [state.step]), before) and state.skipped.item() == 1
    assert _collectives(counts, "all_reduce") == 0, counts
    err = compare({k: p.to_local() for k, p in zip(SHAPES, params)}, run_reference(full, hp, 3))
    assert err <= TOL, f"Replicate DTensor params differ from one process by {err:.3g}"
    return {"max_abs_error": err, "skipped_call_collectives": counts}


check_replicate_dtensor.worlds = (2,)


def check_replicated_parity(rank: int, world: int, shared: str) -> dict:
    """DDP-style: plain replicated params, init with process_group, equals the one-process step."""
    errors = {}
    for j, cfg in enumerate(CONFIGS[::3]):
        torch.manual_seed(0)
        full = {k: torch.randn(s) / s[-1] ** 0.5 for k, s in SHAPES.items()}
        params = [on_device(full[k].clone()) for k in SHAPES]
        hp = hparams(cfg, nesterov=j % 2 == 0)
        state = init_distributed_state(params, hp, process_group=dist.group.WORLD, split_sizes=split_of())
        for t in range(5):
            g = full_grads(t)
            distributed_polargrad_step(params, [on_device(g[k]) for k in SHAPES], state, hp)
        err = compare(dict(zip(SHAPES, params)), run_reference(full, hp, 5))
        errors["/".join(cfg.values())] = err
        assert err <= TOL, f"{cfg}: max abs error {err:.3g} > {TOL}"
    return {"max_abs_error": errors}


def _comm_counts(fn) -> Dict[str, int]:
    from torch.distributed.tensor.debug import CommDebugMode

    with CommDebugMode() as mode:
        fn()
    return {str(k): v for k, v in mode.get_comm_counts().items()}


def _collectives(counts: Dict[str, int], name: str) -> int:
    return sum(v for k, v in counts.items() if name in k)


def check_comm_counts(rank: int, world: int, shared: str) -> dict:
    """Collectives per step, exactly. FSDP2: two all_to_all per exchanged ("rows") shape group; with
    nonfinite="skip" one all_reduce more (the skip flag, one element), on a clean and on a skipped
    call alike. DDP-style replicated params: one all_gather per group, and no all_reduce under "skip"
    (their grads, hence the flags, are the same on every rank). One rank: every group is "local" (the
    rank owns every matrix whole), so no collective at all."""
    model, _, _ = sharded_model(world)
    params = [model[k].weight for k in SHAPES]
    g = full_grads(0)
    grads = [as_shard(g[k], model[k].weight) for k in SHAPES]
    found = {}
    for mode in ("propagate", "skip"):
        hp = fpolar.PolarGradHParams(lr=0.01, nonfinite=mode)
        state = init_distributed_state(params, hp, split_sizes=split_of())
        rows_groups = sum(g.kind == "rows" for g in state.plan.groups)
        with torch.no_grad():
            counts = _comm_counts(lambda: distributed_polargrad_step(params, grads, state, hp))
        a2a, reduces = _collectives(counts, "all_to_all"), _collectives(counts, "all_reduce")
        kinds = {g.kind for g in state.plan.groups}
        assert (rows_groups > 0) if world > 1 else kinds == {"local"}, kinds
        want_reduces = 1 if mode == "skip" and world > 1 else 0
        assert a2a == 2 * rows_groups, f"{mode}: {a2a} all_to_all for {rows_groups} row-sharded groups: {counts}"
        assert reduces == want_reduces and sum(counts.values()) == a2a + reduces, f"{mode}: {counts}"
        found[f"fsdp_{mode}"] = counts
    described = fpolar.describe_plan(state, hp)
    assert [r["kind"] for r in described].count("rows") == rows_groups

    torch.manual_seed(0)
    plain = [on_device(torch.randn(s)) for s in SHAPES.values()]
    for mode in ("propagate", "skip"):
        hp = fpolar.PolarGradHParams(lr=0.01, nonfinite=mode)
        rstate = init_distributed_state(plain, hp, process_group=dist.group.WORLD, split_sizes=split_of())
        rgrads = [torch.randn_like(p) for p in plain]
        if mode == "skip":
            rgrads[1][0, 0] = float("nan")  # the same on every rank, as DDP's all-reduced grads are
            before = [p.clone() for p in plain]
        rcounts = _comm_counts(lambda: distributed_polargrad_step(plain, rgrads, rstate, hp))
        gathers = _collectives(rcounts, "all_gather")
        replicated = sum(g.kind == "replicated" for g in rstate.plan.groups)
        assert replicated == (len(rstate.plan.groups) if world > 1 else 0), [g.kind for g in rstate.plan.groups]
        assert gathers == replicated and sum(rcounts.values()) == gathers, rcounts
        if mode == "skip":
            assert rstate.skipped.item() == 1 and all(torch.equal(a, b) for a, b in zip(plain, before))
        found[f"replicated_{mode}"] = rcounts
    return {"bytes_sent_per_step": sum(r["bytes_sent_per_step"] for r in described), "fsdp_row_groups": rows_groups,
            "replicated_groups": sum(g.kind == "replicated" for g in rstate.plan.groups), **found}


def _bits(ts) -> List[torch.Tensor]:
    """Each tensor's local part as raw bytes, copied (DTensors: this rank's shard)."""
    out = []
    for t in ts:
        t = t.to_local() if hasattr(t, "to_local") else t
        out.append(t.detach().reshape(-1).view(torch.uint8).clone())
    return out


def _same_bits(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _owner_of_row(rows: int, row: int, world: int) -> int:
    return next(r for r, (start, length) in enumerate(chunk_spans(rows, world)) if start <= row < start + length)


# (step, param, row, value): a non-finite value in ONE rank's shard only. "a" (7, 8) row 6 lives on the
# last rank (a row-sharded matrix, all_to_all exchange); "stack" (3, 5, 6) matrix 2 lives on rank 1 of
# 2 or rank 2 of 4 (whole matrices per rank, no exchange: only the agreement tells the others).
POISON = ((1, "a", 6, float("nan")), (2, "stack", 2, float("inf")))


def poisoned_grads(step: int) -> Dict[str, torch.Tensor]:
    g = full_grads(step)
    for t, name, row, value in POISON:
        if t == step:
            g[name][row].view(-1)[0] = value
    return g


def check_skip_when_one_rank_sees_nan(rank: int, world: int, shared: str) -> dict:
    """A NaN / inf in one rank's grad shard only: every rank skips (params, momentum, step bitwise
    unchanged, ``skipped`` == 1 then 2 on every rank); the clean step after equals the one-process step
    (which skips the same calls) to TOL. Three configs: NS momentum-first, NS polar-first + Nesterov
    (the momentum is written after the exchange), SVD (it must never see the NaN)."""
    owners = {name: _owner_of_row(SHAPES[name][0], row, world) for _, name, row, _ in POISON}
    errors = {}
    for j, nesterov in ((0, False), (3, True), (8, False)):
        cfg = CONFIGS[j]
        model, full, _ = sharded_model(world)
        params = [model[k].weight for k in SHAPES]
        hp = hparams(cfg, nesterov)
        state = init_distributed_state(params, hp, split_sizes=split_of())
        ref = reference_params(full)
        ref_state = fpolar.init_state(ref, hp)
        for t in range(4):
            g = poisoned_grads(t)
            grads = [as_shard(g[k], model[k].weight) for k in SHAPES]
            before = _bits(params + state.momentum + [state.step])
            fpolar.polargrad_step(params, grads, state, hp)
            fpolar.polargrad_step(ref, reference_grads(g), ref_state, hp)
            skipped = [k for k, (tt, *_rest) in enumerate(POISON) if tt == t]
            if skipped:
                name = POISON[skipped[0]][1]
                mine = not torch.isfinite(grads[list(SHAPES).index(name)].to_local()).all().item()
                assert mine == (rank == owners[name]), "the poison should sit in one rank's shard only"
                assert _same_bits(_bits(params + state.momentum + [state.step]), before), f"step {t} changed state"
        assert state.skipped.item() == 2 and state.step.item() == 2, (state.skipped.item(), state.step.item())
        assert ref_state.skipped.item() == 2
        err = compare({k: model[k].weight.full_tensor() for k in SHAPES}, ref)
        errors["/".join(cfg.values()) + ("/nesterov" if nesterov else "")] = err
        assert err <= TOL, f"{cfg}: after the skips, max abs error {err:.3g} > {TOL}"
    return {"max_abs_error": errors, "poisoned_ranks": owners}


def check_adamw_skip_on_dtensors(rank: int, world: int, shared: str) -> dict:
    """fpolar.adamw_step on fully_shard biases: a NaN in the last rank's shard of one bias makes every
    rank skip (moments, steps, params bitwise), with one all_reduce (none on one rank); a clean step
    then moves them."""
    model, _, _ = sharded_model(world)
    params = [model[k].bias for k in SHAPES]
    hp = fpolar.AdamWHParams(lr=0.01, weight_decay=0.1)
    state = fpolar.init_adamw_state(params, hp)
    gen = torch.Generator().manual_seed(5)
    full = [torch.randn(p.shape, generator=gen) for p in params]
    full[0][SHAPES["a"][0] - 1] = float("nan")  # "a" has 7 rows: the last one lives on the last rank
    grads = [as_shard(f, p) for f, p in zip(full, params)]
    before = _bits(params + state.exp_avg + state.exp_avg_sq + state.step)
    counts = _comm_counts(lambda: fpolar.adamw_step(params, grads, state, hp))
    assert _same_bits(_bits(params + state.exp_avg + state.exp_avg_sq + state.step), before)
    want = 1 if world > 1 else 0  # a one-rank mesh holds the whole bias: nothing to agree on
    assert state.skipped.item() == 1 and _collectives(counts, "all_reduce") == want and sum(counts.values()) == want, counts
    full[0] = torch.randn(params[0].shape, generator=gen)
    fpolar.adamw_step(params, [as_shard(f, p) for f, p in zip(full, params)], state, hp)
    assert state.skipped.item() == 1 and all(s.item() == 1 for s in state.step)
    return {"collectives": counts}


check_comm_counts.worlds = (1, 2, 4)


def check_plan_same_on_every_rank(rank: int, world: int, shared: str) -> dict:
    model, _, _ = sharded_model(world)
    params = [model[k].weight for k in SHAPES]
    plan = init_distributed_state(params, None, split_sizes=split_of()).plan
    mine = [(g.kind, g.m, g.n, g.owned, g.slots) for g in plan.groups if g.kind != "local"]
    every = [None] * world
    dist.all_gather_object(every, mine)
    assert all(e == mine for e in every), f"plans differ between ranks: {every}"
    return {"groups": len(mine)}


CHECKS = [
    ("plan_same_on_every_rank", check_plan_same_on_every_rank),
    ("fsdp_parity", check_fsdp_parity),
    ("bf16_exchange", check_bf16_exchange),
    ("replicated_parity", check_replicated_parity),
    ("replicate_dtensor", check_replicate_dtensor),
    ("comm_counts", check_comm_counts),
    ("skip_when_one_rank_sees_nan", check_skip_when_one_rank_sees_nan),
    ("adamw_skip_on_dtensors", check_adamw_skip_on_dtensors),
]


def check_tensor_parallel_polar(rank: int, world: int, shared: str) -> dict:
    """TP polar of column- and row-sharded matrices (uneven splits) == the one-device polar."""
    pg = dist.group.WORLD
    errors = {}
    gen = torch.Generator().manual_seed(7)
    cases = [((6, 11), -1), ((11, 6), -2), ((8, 8), -2), ((8, 8), -1), ((2, 6, 13), 2)]
    for shape, pdim in cases:
        x = torch.randn(shape, generator=gen)
        d = pdim % x.dim()
        spans = chunk_spans(x.shape[d], world)
        sizes = [s[1] for s in spans]
        start, length = spans[rank]
        shard = on_device(x.narrow(d, start, length))
        for mode, method in (("distributed", "newton_schulz"), ("duplicated", "newton_schulz"), ("duplicated", "qdwh"), ("duplicated", "svd")):
            got = fpolar.polar(shard, method, process_group=pg, partition_dim=pdim, tp_mode=mode, partition_sizes=sizes,
                               **FP32_POLAR).cpu()
            want = fpolar.polar(x, method).narrow(d, start, length)
            err = (got - want).abs().max().item() if length else 0.0
            errors[f"{shape}/dim{pdim}/{mode}/{method}"] = err
            assert err <= TOL, f"{shape} split on {pdim}, {mode}/{method}: {err:.3g}"
    # a wide matrix split along its short side cannot use the all-reduced Gram
    x = torch.randn(6, 11, generator=gen)
    spans = chunk_spans(6, world)
    shard = on_device(x[spans[rank][0] : sum(spans[rank])])
    try:
        fpolar.polar(shard, process_group=pg, partition_dim=0, partition_sizes=[s[1] for s in spans])
    except ValueError as e:
        assert "partition_dim=0" in str(e), str(e)
    else:
        raise AssertionError("a short-side split in distributed mode was accepted")
    return {"max_abs_error": errors}


CHECKS.append(("tensor_parallel_polar", check_tensor_parallel_polar))


def _set_grads(model, step: int, sharded: bool, poison: str = "") -> None:
    """Seeded grads; ``poison``: the name of a param whose last row gets a NaN (a sharded model: only
    in the last rank's shard)."""
    gen = torch.Generator().manual_seed(2000 + step)
    for name, p in model.named_parameters():
        g = torch.randn(p.shape, generator=gen)
        if name == poison:
            g[-1].view(-1)[0] = float("nan")
        p.grad = as_shard(g, p) if sharded else g


def _muon(params):
    return fpolar.optim.Muon(params, lr=0.02, weight_decay=0.1, adamw_lr=0.01, **FP32_POLAR)


def _full_state(opt, model) -> Dict[str, torch.Tensor]:
    """Every optimizer state tensor, whole, keyed by param name and state key."""
    out = {}
    for name, p in model.named_parameters():
        for k, v in opt.state[p].items():
            out[f"{name}/{k}"] = v.full_tensor() if hasattr(v, "full_tensor") else v.clone()
    return out


def check_optim_on_fully_shard(rank: int, world: int, shared: str) -> dict:
    """fpolar.optim.Muon on a fully_shard-ed model's parameters(), no new argument: 3 steps equal the
    same optimizer on the unsharded model, and a step whose NaN sits in the last rank's shard of one
    weight is skipped on every rank (every state tensor bitwise, ``skipped_steps`` 1); a step costs
    2 all_to_all per row-sharded group and one all_reduce (the skip flag). Then DCP saves the state
    (world 4) or round-trips it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    model, full, _ = sharded_model(world)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                torch.manual_seed(len(name))
                p.to_local().copy_(as_shard(torch.randn(p.shape) * 0.1, p).to_local())
    torch.manual_seed(0)
    plain = Model()
    plain.load_state_dict({n: (p.full_tensor() if hasattr(p, "full_tensor") else p) for n, p in model.state_dict().items()})
    opt, ref = _muon(model.parameters()), _muon(plain.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not skipped on sharded params" warning any more
        for t in range(4):
            poison = "layers.a.weight" if t == 2 else ""
            _set_grads(model, t, True, poison)
            _set_grads(plain, t, False, poison)
            before = _full_state(opt, model) if poison else None
            before_params = _bits(model.parameters()) if poison else None
            counts = _comm_counts(opt.step)
            ref.step()
            if poison:
                after = _full_state(opt, model)
                assert all(torch.equal(before[k], after[k]) for k in before), "a skipped step changed the state"
                assert _same_bits(_bits(model.parameters()), before_params), "a skipped step changed a param"
    assert opt.skipped_steps.item() == 1 and ref.skipped_steps.item() == 1, opt.skipped_steps
    rows_groups = sum(g.kind == "rows" for rt in opt._runtime if rt.state is not None and hasattr(rt.state, "plan") for g in rt.state.plan.groups)
    a2a, reduces = _collectives(counts, "all_to_all"), _collectives(counts, "all_reduce")
    want_reduces = 1 if world > 1 else 0
    assert a2a == 2 * rows_groups and reduces == want_reduces and sum(counts.values()) == a2a + want_reduces, (
        f"optimizer step collectives {counts} for {rows_groups} groups")
    err = max((p.full_tensor().cpu() - q).abs().max().item() for p, q in zip(model.parameters(), plain.parameters()))
    assert err <= TOL, f"fpolar.optim.Muon on fully_shard params differs from one process by {err:.3g}"
    kinds = {type(s["momentum_buffer"]).__name__ for s in opt.state.values() if "momentum_buffer" in s}
    assert kinds == {"DTensor"}, f"momentum stored as {kinds}"

    osd = get_optimizer_state_dict(model, opt)
    ckpt = f"{shared}/optim_w{world}"
    dcp.save({"optim": osd}, checkpoint_id=ckpt)
    saved = _full_state(opt, model)
    if rank == 0:
        torch.save(saved, f"{shared}/optim_w{world}_full.pt")
    # round trip on the same world: a fresh optimizer loads the checkpoint bit-exactly. DCP builds the
    # fresh state by a zero-grad step only when no param has a grad, as when a run resumes.
    model.zero_grad(set_to_none=True)
    fresh = _muon(model.parameters())
    target = get_optimizer_state_dict(model, fresh)
    dcp.load({"optim": target}, checkpoint_id=ckpt)
    set_optimizer_state_dict(model, fresh, target)
    got = _full_state(fresh, model)
    bad = [k for k in saved if not torch.equal(saved[k], got[k])]
    assert not bad and set(got) == set(saved), f"DCP round trip changed {bad}"
    dist.barrier()
    return {"max_abs_error_vs_one_process": err, "state_tensors": len(saved), "optimizer_step_collectives": counts}


def check_dcp_reshard_from_4(rank: int, world: int, shared: str) -> dict:
    """Load the optimizer state world 4 saved into a world-2 fully_shard model: bit-exact, then it steps."""
    import os

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    if not os.path.exists(f"{shared}/optim_w4_full.pt"):
        raise AssertionError("world 4 saved no checkpoint (its optim_on_fully_shard check failed or did not run)")
    model, _, _ = sharded_model(world)
    model.zero_grad(set_to_none=True)
    opt = _muon(model.parameters())
    target = get_optimizer_state_dict(model, opt)
    dcp.load({"optim": target}, checkpoint_id=f"{shared}/optim_w4")
    set_optimizer_state_dict(model, opt, target)
    want = torch.load(f"{shared}/optim_w4_full.pt")
    got = _full_state(opt, model)
    bad = [k for k in want if not torch.equal(want[k], got[k])]
    assert not bad and set(got) == set(want), f"4 → 2 resharding changed {bad}"
    _set_grads(model, 9, True)
    opt.step()
    return {"state_tensors": len(got)}


check_dcp_reshard_from_4.worlds = (2,)


class MutationProbe:
    """A torch.compile backend (AOTAutograd, kernels run eagerly) that counts compiled frames and records,
    per graph, the mutated graph inputs that are not static: the ones for which Inductor's CUDA graphs
    (``mode="reduce-overhead"``) skip a graph ("skipping cudagraphs due to mutated inputs"). It reads
    the static-input indices Inductor reads (the tracing context's, after DTensor inputs are flattened
    into their local tensors), so it shows on CPU what a GPU run would skip."""

    def __init__(self) -> None:
        from torch._dynamo.backends.common import aot_autograd

        self.frame_count = 0
        self.unmarked: List[List[int]] = []
        self._aot = aot_autograd(fw_compiler=self._forward, keep_inference_input_mutations=True)

    def __call__(self, gm, example_inputs):
        self.frame_count += 1
        return self._aot(gm, example_inputs)

    def _forward(self, gm, example_inputs):
        from functorch.compile import make_boxed_func

        static = set(torch._guards.TracingContext.get().fw_metadata.static_input_indices)
        index = {n: i for i, n in enumerate(gm.graph.find_nodes(op="placeholder"))}
        mutated = {index[n.args[0]] for n in gm.graph.find_nodes(op="call_function", target=torch.ops.aten.copy_.default)
                   if n.args[0] in index}
        self.unmarked.append(sorted(mutated - static))
        return make_boxed_func(gm)


def check_compiled_step(rank: int, world: int, shared: str) -> dict:
    """The distributed functional step under torch.compile(fullgraph=True): one frame, no recompile over a
    20-step lr schedule (0-d lr tensor) in which step 5's NaN sits in the last rank's shard only (every
    rank skips it, in the same graph as the clean calls), and the same params as eager. With the state
    marked (``fpolar.compile.mark_static``: DTensor momentum, step, skip counter), every mutated input
    is static, so ``mode="reduce-overhead"`` would keep its CUDA graph (the marks reach the momentum's
    local tensors through AOTAutograd's flattening of DTensor inputs)."""
    from fpolar.compile import mark_static

    names = ["a", "small", "qkv"]
    model, full, _ = sharded_model(world)
    params = [model[k].weight for k in names]
    lr = torch.tensor(0.01)
    hp = fpolar.PolarGradHParams(lr=lr, weight_decay=0.1, **FP32_POLAR)
    state = fpolar.init_state(params, hp)
    mark_static(state, hp)
    g = full_grads(0)
    grads = [as_shard(g[k], model[k].weight) for k in names]
    bad_full = {k: v.clone() for k, v in g.items()}
    bad_full["a"][6, 0] = float("nan")  # row 6 of 7: the last rank's shard
    bad = [as_shard(bad_full[k], model[k].weight) for k in names]
    torch._dynamo.reset()
    counter = MutationProbe()
    step = torch.compile(fpolar.polargrad_step, backend=counter, fullgraph=True)
    ref = [full[k].clone() for k in names]
    ref_state = fpolar.init_state(ref, fpolar.PolarGradHParams(lr=lr, weight_decay=0.1, **FP32_POLAR))
    with torch.no_grad():
        for t in range(20):
            lr.fill_(0.01 * (1 - t / 20))
            if t == 5:
                before = _bits(params + state.momentum + [state.step])
            step(params, bad if t == 5 else grads, state, hp)
            if t == 5:
                assert _same_bits(_bits(params + state.momentum + [state.step]), before), "compiled skip changed state"
            fpolar.polargrad_step(ref, [(bad_full if t == 5 else g)[k] for k in names], ref_state, hp)
    assert counter.frame_count == 1, f"{counter.frame_count} frames (recompiles)"
    assert counter.unmarked == [[]], f"mutated inputs not static (CUDA graphs would skip): {counter.unmarked}"
    assert state.skipped.item() == 1 and ref_state.skipped.item() == 1 and state.step.item() == 19
    err = max((model[k].weight.full_tensor().cpu() - r).abs().max().item() for k, r in zip(names, ref))
    assert err <= TOL, f"compiled distributed step differs from one process by {err:.3g}"
    return {"frames": counter.frame_count, "max_abs_error": err, "unmarked_mutated_inputs": counter.unmarked}


def check_bad_input_changes_nothing(rank: int, world: int, shared: str) -> dict:
    """Errors name the problem and leave params and state as they were."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Shard

    model, full, mesh = sharded_model(world)
    params = [model[k].weight for k in ("a", "b")]
    hp = fpolar.PolarGradHParams(lr=0.01, nonfinite="propagate")
    before = [p.to_local().clone() for p in params]
    messages = {}

    # one shape group on two meshes
    other = DeviceMesh(DEVICE_TYPE, list(reversed(range(world))))
    def on_other_mesh() -> DTensor:
        return DTensor.from_local(torch.zeros(chunk_spans(7, world)[other.get_local_rank()][1], 8), other,
                                  [Shard(0)], run_check=False, shape=torch.Size([7, 8]), stride=(8, 1))

    odd = on_other_mesh()
    try:
        fpolar.init_state([params[0], odd], hp)
    except ValueError as e:
        messages["two_meshes"] = str(e)
        assert "different meshes" in str(e), str(e)
    else:
        raise AssertionError("params of one shape group on two meshes were accepted")

    # a state built for another layout (the other mesh) is refused before anything changes
    state = fpolar.init_state(params, hp)
    g = full_grads(0)
    moved = [odd, on_other_mesh()]  # two tensors: the same one twice is refused for that reason first
    try:
        fpolar.polargrad_step(moved, [as_shard(g["a"], odd)] * 2, state, hp)
    except ValueError as e:
        messages["other_mesh_state"] = str(e)
        assert "built for" in str(e), str(e)
    else:
        raise AssertionError("a state built for another mesh was accepted")
    # a state built for plain tensors refuses DTensors
    plain_state = fpolar.init_state([full["a"].clone(), full["b"].clone()], hp, process_group=dist.group.WORLD)
    try:
        fpolar.polargrad_step(params, [as_shard(g["a"], params[0]), as_shard(g["b"], params[1])], plain_state, hp)
    except ValueError as e:
        messages["plain_state_dtensor_params"] = str(e)
    else:
        raise AssertionError("a replicated-params state was accepted for DTensor params")
    # a GradScaler-style found_inf of two elements is refused, naming it, before anything changes
    grads_ab = [as_shard(g["a"], params[0]), as_shard(g["b"], params[1])]
    try:
        fpolar.polargrad_step(params, grads_ab, state, hp, found_inf=torch.zeros(2))
    except ValueError as e:
        messages["found_inf_shape"] = str(e)
        assert "found_inf" in str(e), str(e)
    else:
        raise AssertionError("a two-element found_inf was accepted")
    assert state.step.item() == 0 and plain_state.step.item() == 0
    assert all(torch.equal(b, p.to_local()) for b, p in zip(before, params)), "params changed before the error"
    assert all(m.to_local().abs().sum() == 0 for m in state.momentum), "momentum changed before the error"
    return {"messages": messages}


def check_captured_grads_copy_on_dtensors(rank: int, world: int, shared: str) -> dict:
    """A captured ``fpolar.optim`` program copies new grads into the ones its CUDA graph reads
    (``copy_grads_into``); on fully_shard params those are DTensors, for which ``_foreach_copy_`` has
    no sharding rule: the copy goes through the local shards (and through ``copy_`` where the two
    layouts differ). Every kept grad must equal its fresh one, whole."""
    from torch.distributed.tensor import DTensor, Replicate

    from fpolar.optim.compiled_step import copy_grads_into

    model, _, mesh = sharded_model(world)
    params = [model[k].weight for k in SHAPES]
    gen = torch.Generator().manual_seed(31)  # the same full grads on every rank
    fresh_full = [torch.randn(p.shape, generator=gen) for p in params]
    fresh = [as_shard(f, p) for f, p in zip(fresh_full, params)]
    kept = [as_shard(torch.zeros(p.shape), p) for p in params]
    # one kept grad replicated: a layout that differs from its fresh Shard(0) grad
    kept[0] = DTensor.from_local(on_device(torch.zeros(params[0].shape)), mesh, [Replicate()], run_check=False)
    kept_ids = [id(k) for k in kept]
    copy_grads_into(kept, fresh)
    assert [id(k) for k in kept] == kept_ids
    err = max((k.full_tensor().cpu() - f).abs().max().item() for k, f in zip(kept, fresh_full))
    assert err == 0.0, f"copied grads differ from the fresh ones by {err:.3g}"
    return {"max_abs_error": err, "grads": len(kept)}


check_captured_grads_copy_on_dtensors.worlds = (2,)
CHECKS.append(("captured_grads_copy_on_dtensors", check_captured_grads_copy_on_dtensors))


def check_one_rank_step_is_local(rank: int, world: int, shared: str) -> dict:
    """On a one-rank mesh the planned step is the one-device math on local tensors: no collective, no
    cast or cat of an exchange, no update copy, and (Nesterov) each blend written straight into its
    group's stack, so no copy as large as a matrix (only the skip flag's few bytes). Counted by
    ``benchmarks/op_ledger.py``; params equal the one-process step's."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks"))
    from op_ledger import COPY_OPS, OpLedger

    names = ["a", "b", "small", "tall"]
    model, full, _ = sharded_model(world)
    params = [model[k].weight for k in names]
    hp = fpolar.PolarGradHParams(lr=0.02, weight_decay=0.1, nesterov=True, **FP32_POLAR)
    state = fpolar.init_state(params, hp)
    ref = [full[k].clone() for k in names]
    ref_state = fpolar.init_state(ref, hp)
    g = full_grads(0)
    with torch.no_grad():
        for _ in range(2):
            # made before the ledger: on CUDA, as_shard's host-to-device copy is not the step's
            shards = [as_shard(g[k], model[k].weight) for k in names]
            with OpLedger() as ledger:
                fpolar.polargrad_step(params, shards, state, hp)
            fpolar.polargrad_step(ref, [g[k] for k in names], ref_state, hp)
    ops = {r.name for r in ledger.records}
    collectives = {n for n in ops if any(c in n for c in ("all_to_all", "all_reduce", "all_gather"))}
    copies = {r.name for r in ledger.copies()}
    stacked = sum(r.written for r in ledger.copies())
    matrix_bytes = sum(full[k].numel() * full[k].element_size() for k in names)
    assert {gr.kind for gr in state.plan.groups} == {"local"}, [gr.kind for gr in state.plan.groups]
    smallest = min(full[k].numel() * full[k].element_size() for k in names)
    big = [(r.name, r.shapes) for r in ledger.copies() if r.written >= smallest]
    assert not collectives and not big, (collectives, big)
    err = max((p.full_tensor().cpu() - r).abs().max().item() for p, r in zip(params, ref))
    assert err <= TOL, f"one-rank step differs from one process by {err:.3g}"
    return {"copies": sorted(copies), "copy_bytes": stacked, "matrix_bytes": matrix_bytes, "max_abs_error": err}


check_one_rank_step_is_local.worlds = (1,)
CHECKS.append(("one_rank_step_is_local", check_one_rank_step_is_local))


check_compiled_step.worlds = (2,)  # compiling takes ~40 s per world on 2 busy cores: once is enough

CHECKS += [
    ("bad_input_changes_nothing", check_bad_input_changes_nothing),
    ("optim_on_fully_shard", check_optim_on_fully_shard),
    ("dcp_reshard_from_4", check_dcp_reshard_from_4),
    ("compiled_step", check_compiled_step),
]
