"""The distributed plan: which matrices go through which exchange, who owns them, what it costs.

Built once (``build_plan``) from metadata only, identically on every rank. Matrices are grouped by
(exchange kind, m, n, dtype, device, process group):

    kind          params                                   exchange per step
    "rows"        DTensor Shard(0), 2-D / ≥4-D (rows cut)  all_to_all rows → owner, all_to_all back
    "replicated"  plain tensors + process_group (DDP)      owner computes its share, all_gather
    "local"       3-D DTensor Shard(0) stacks (whole        none: every rank orthogonalizes what it holds
                  matrices per rank), a one-rank mesh or
                  process group, or no process group

A "rows" or "replicated" group pads its matrix count to a multiple of W (``slots`` per rank) and its
row blocks to the longest one (``block_rows``), so each exchange is one collective with equal splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from ..dtensor import is_dtensor, local_tensor
from ..routing import matrix_view_shape
from .layout import MatrixRef, chunk_spans, row_sharded_parts, whole_parts
from .owners import assign_owners, newton_schulz_cost

KINDS = ("rows", "replicated", "local")


def _dtensor_types() -> Tuple[type, type, type]:
    from torch.distributed.tensor import DTensor, Replicate, Shard

    return DTensor, Shard, Replicate


def mesh_name(mesh: Any) -> str:
    """A mesh told apart by its ranks (two meshes of one size print alike otherwise)."""
    return f"on the {mesh.device_type} mesh of ranks {mesh.mesh.tolist()}"


@dataclass(frozen=True)
class ExchangeGroup:
    """Matrices of one shape that travel together.

    Attributes:
        kind: "rows", "replicated" or "local".
        m, n: matrix shape (rows, columns) in the parameter's orientation.
        dtype, device: of the parameters.
        matrices: this rank's view of each matrix (``MatrixRef``), in group order.
        params: the distinct param indices, in order.
        world_size, rank: of ``process_group`` (1, 0 for "local").
        owned: per rank, the group indices of the matrices it orthogonalizes (slot order).
        slots: ⌈B/W⌉, the padded per-rank slot count of the exchange.
        block_rows: longest per-rank row block over the group's matrices ("rows" only).
        process_group: the group the exchange runs on (None for "local").
        mesh: the DeviceMesh of DTensor params (None otherwise).
    """

    kind: str
    m: int
    n: int
    dtype: torch.dtype
    device: torch.device
    matrices: Tuple[MatrixRef, ...]
    params: Tuple[int, ...]
    world_size: int = 1
    rank: int = 0
    owned: Tuple[Tuple[int, ...], ...] = ()
    slots: int = 0
    block_rows: int = 0
    process_group: Any = field(default=None, compare=False)
    mesh: Any = field(default=None, compare=False)

    @property
    def count(self) -> int:
        return len(self.matrices)

    @property
    def transposed(self) -> bool:
        return self.m > self.n

    def bytes_sent(self, payload_itemsize: int, scale_elems: int) -> int:
        """Bytes this rank sends per step (both directions), payload in the polar dtype.

        ``scale_elems``: payload elements per matrix that carry its scale back (0 for shape rules).
        A rank's block to itself is a local copy and is not counted.
        """
        w = self.world_size
        if self.kind == "rows":
            there = self.slots * self.block_rows * self.n
            back = self.slots * (self.block_rows * self.n + scale_elems)
            return (w - 1) * (there + back) * payload_itemsize
        if self.kind == "replicated":
            return (w - 1) * self.slots * (self.m * self.n + scale_elems) * payload_itemsize
        return 0


@dataclass(frozen=True)
class DistributedPlan:
    """Every matrix parameter's exchange group; see the module docstring.

    Attributes:
        groups: the exchange groups, in order of first appearance.
        world_size: of the process group(s) the plan was built for (1 if none).
        shapes: the (global) param shapes the plan was built for.
        process_group: the process group given to ``build_plan`` (None for DTensor meshes).
    """

    groups: Tuple[ExchangeGroup, ...]
    world_size: int
    shapes: Tuple[torch.Size, ...]
    process_group: Any = field(default=None, compare=False)

    def check_matches(self, params: Sequence[Tensor]) -> None:
        """Raise ValueError unless ``params`` are laid out as when the plan was built (shapes, meshes,
        placements, world size). Metadata only."""
        if len(params) != len(self.shapes):
            raise ValueError(f"distributed state was built for {len(self.shapes)} params but got {len(params)}")
        for g in self.groups:
            for i in g.params:
                p = params[i]
                if p.shape != self.shapes[i]:
                    raise ValueError(
                        f"distributed state was built for params[{i}] of shape {tuple(self.shapes[i])}, "
                        f"got {tuple(p.shape)}"
                    )
                if g.mesh is not None:
                    if not is_dtensor(p) or p.device_mesh != g.mesh:
                        where = mesh_name(p.device_mesh) if is_dtensor(p) else "a plain tensor"
                        raise ValueError(
                            f"distributed state was built for params[{i}] {mesh_name(g.mesh)}, but it is {where}; "
                            "build the state again for this layout"
                        )
                elif is_dtensor(p):
                    raise ValueError(
                        f"distributed state was built for params[{i}] as a plain tensor, but got a DTensor "
                        f"{mesh_name(p.device_mesh)}; build the state again for this layout"
                    )
        if self.process_group is not None:
            w = dist.get_world_size(self.process_group)
            if w != self.world_size:
                raise ValueError(
                    f"distributed state was built for a process group of {self.world_size} ranks, "
                    f"but that group now has {w}"
                )


def _check_parts(i: int, p: Tensor, parts: Optional[Sequence[int]]) -> Optional[Tuple[int, ...]]:
    if parts is None:
        return None
    sizes = tuple(parts)
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes) or not sizes:
        raise ValueError(f"split_sizes for params[{i}] must be positive ints, got {parts!r}")
    rows = p.shape[1] if p.dim() == 3 else p.shape[0]
    if sum(sizes) != rows:
        raise ValueError(
            f"split_sizes {list(sizes)} for params[{i}] sum to {sum(sizes)}, but its matrices have {rows} rows "
            f"(shape {tuple(p.shape)}); the parts must cover dim {1 if p.dim() == 3 else 0} exactly"
        )
    return sizes


def _placement_kind(i: int, p: Tensor, process_group: Any) -> Tuple[str, Any, Any]:
    """(kind, process group, mesh) of param ``i``; raises for layouts the plan does not handle."""
    DTensor, Shard, Replicate = _dtensor_types()
    if isinstance(p, DTensor):
        mesh = p.device_mesh
        if mesh.ndim != 1:
            raise ValueError(
                f"params[{i}] is a DTensor on a {mesh.ndim}-D mesh {mesh}; the distributed step handles 1-D meshes "
                "(FSDP2 fully_shard, or a Replicate DTensor)"
            )
        (placement,) = p.placements
        if isinstance(placement, Replicate):
            kind = "replicated"
        elif isinstance(placement, Shard) and placement.dim == 0:
            kind = "local" if p.dim() == 3 else "rows"
        else:
            raise ValueError(
                f"params[{i}] has placement {placement}; the distributed step handles Shard(0) (FSDP2) and Replicate"
            )
        # a one-rank mesh holds every matrix whole: it is its own owner, with nothing to exchange
        return ("local" if mesh.size() == 1 else kind), mesh.get_group(), mesh
    if process_group is not None:
        return ("local" if dist.get_world_size(process_group) == 1 else "replicated"), process_group, None
    return "local", None, None


def build_plan(
    params: Sequence[Tensor],
    process_group: Any = None,
    split_sizes: Optional[Dict[int, Sequence[int]]] = None,
) -> DistributedPlan:
    """The plan for ``params`` (plain tensors and/or 1-D-mesh DTensors); see the module docstring.

    Args:
        params: matrix parameters (≥ 2-D). DTensors must be ``Shard(0)`` or ``Replicate`` on a 1-D mesh.
        process_group: for plain tensors replicated on every rank (DDP): the ranks that share the polar
            work. None: plain tensors are handled locally.
        split_sizes: {param index: row counts of its fused matrices along dim 0 (dim 1 of a 3-D stack)}.

    Raises:
        ValueError naming the param: params of one shape group on different meshes or process groups,
        an unsupported placement, split sizes that do not cover the rows, a local shard whose shape
        does not match ``torch.chunk``'s rule.
    """
    split_sizes = dict(split_sizes or {})
    for k in split_sizes:
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(params):
            raise ValueError(f"split_sizes has key {k!r}, not a param index in [0, {len(params)})")
    buckets: Dict[tuple, Dict[str, Any]] = {}
    shape_owner: Dict[tuple, Tuple[int, Any, Any]] = {}
    for i, p in enumerate(params):
        kind, pg, mesh = _placement_kind(i, p, process_group)
        parts = _check_parts(i, p, split_sizes.get(i))
        k, m, n = matrix_view_shape(p.shape)
        row_sizes = parts or (m,)
        local = local_tensor(p)
        world = dist.get_world_size(pg) if pg is not None else 1
        rank = dist.get_rank(pg) if pg is not None else 0
        if kind == "rows":
            expect = chunk_spans(p.shape[0], world)[rank][1]
            if local.shape[0] != expect:
                raise ValueError(
                    f"params[{i}] (shape {tuple(p.shape)}) holds {local.shape[0]} rows on rank {rank}, but Shard(0) "
                    f"over {world} ranks by torch.chunk's rule gives {expect}; uneven custom sharding is not supported"
                )
            refs = row_sharded_parts(i, m, parts, world, rank)
        else:
            lk = matrix_view_shape(local.shape)[0] if kind == "local" else k
            refs = [r for s in range(lk) for r in whole_parts(i, s, m, parts)]
        for ref, rows in zip(refs, list(row_sizes) * max(1, len(refs) // len(row_sizes))):
            key = (kind, rows, n, p.dtype, local.device if kind != "rows" else p.device, id(pg))
            shape_key = (rows, n, p.dtype, kind)
            seen = shape_owner.get(shape_key)
            if seen is not None and (seen[1] is not pg or (seen[2] is not None and seen[2] != mesh)):
                j = seen[0]
                raise ValueError(
                    f"params[{i}] and params[{j}] share the matrix shape ({rows}, {n}) and dtype {p.dtype} but "
                    f"live on different meshes / process groups; one shape group must use one mesh"
                )
            shape_owner.setdefault(shape_key, (i, pg, mesh))
            b = buckets.setdefault(key, {"refs": [], "pg": pg, "mesh": mesh, "world": world, "rank": rank})
            b["refs"].append(ref)
    keys = list(buckets)
    costs = [newton_schulz_cost(k[1], k[2]) for k in keys]
    exchanged = [b["world"] if k[0] != "local" else 1 for k, b in zip(keys, buckets.values())]
    # One LPT pass per process-group size keeps ranks of one group balanced over all its shape groups.
    owners: Dict[tuple, List[List[int]]] = {}
    for world in sorted(set(exchanged)):
        sel = [j for j, w in enumerate(exchanged) if w == world]
        result = assign_owners([len(buckets[keys[j]]["refs"]) for j in sel], [costs[j] for j in sel], world)
        for j, slots in zip(sel, result):
            owners[keys[j]] = slots
    groups = []
    for key, b in buckets.items():
        kind, m, n, dtype, device, _ = key
        refs = tuple(b["refs"])
        world = b["world"] if kind != "local" else 1
        count = len(refs)
        block = max((s[1] for r in refs for s in r.spans), default=0) if kind == "rows" else 0
        groups.append(
            ExchangeGroup(
                kind=kind,
                m=m,
                n=n,
                dtype=dtype,
                device=device,
                matrices=refs,
                params=tuple(dict.fromkeys(r.param for r in refs)),
                world_size=world,
                rank=b["rank"] if kind != "local" else 0,
                owned=tuple(tuple(o) for o in owners[key]),
                slots=-(-count // world),
                block_rows=block,
                process_group=b["pg"] if kind != "local" else None,
                mesh=b["mesh"],
            )
        )
    worlds = {g.world_size for g in groups if g.kind != "local"}
    return DistributedPlan(
        groups=tuple(groups),
        world_size=max(worlds) if worlds else 1,
        shapes=tuple(p.shape for p in params),
        process_group=process_group,
    )
