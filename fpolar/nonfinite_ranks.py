"""Every rank agrees on the skip: one rank's non-finite grad shard makes every rank skip the call.

Under sharding (FSDP2 ``Shard(0)``, a 3-D stack split by whole matrices) each rank reads only its own
grad shards, so its flag from ``fpolar.nonfinite.found_nonfinite`` is a local verdict: a NaN in rank 1's
rows leaves rank 0's flag False. If rank 0 stepped while rank 1 skipped, one matrix would be half
stepped (and the owner orthogonalizing it would mix NaN rows with clean ones). ``agree``
turns the local flag into the global one with one ``all_reduce(MAX)`` of a 1-element tensor per
process group the sharded tensors live on (one for a model on one mesh), through functional
collectives: no host sync, and ``torch.compile(fullgraph=True)`` traces it as a graph node. It runs
before any tensor is written, so every rank either writes or does not.

Replicated tensors (DDP's plain params, ``Replicate`` DTensors) need no collective: their grads are
the same bits on every rank (DDP's all-reduce hands every rank the same result, and a ``Replicate``
placement says so), so every rank's flag is already the same. The replicated exchange relies on that
too: each owner orthogonalizes its share and every rank takes the owner's result.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Optional, Sequence

import torch
from torch import Tensor

from .dtensor import is_dtensor


def shard_groups(tensors: Iterable[Optional[Tensor]]) -> List[Any]:
    """The process groups over which ``tensors`` hold different data: for each DTensor, the group of
    every mesh dimension of more than one rank it is not ``Replicate`` on; each group once, in order of first appearance (the
    same order on every rank, given the same tensors). Metadata only."""
    groups: List[Any] = []
    for t in tensors:
        if t is None or not is_dtensor(t):
            continue
        mesh = t.device_mesh
        for dim, placement in enumerate(t.placements):
            if placement.is_replicate() or mesh.size(dim) == 1:  # a one-rank dimension holds the whole data
                continue
            pg = mesh.get_group(dim)
            if not any(pg is g for g in groups):
                groups.append(pg)
    return groups


def agree(found: Tensor, groups: Sequence[Any]) -> Tensor:
    """``found`` (0-d bool, this rank's verdict on its own shards) made the same on every rank: True
    where any rank's is True, reduced over each of ``groups`` in turn (``shard_groups``; for the groups
    of one device mesh, any number of dimensions, that is every rank of the mesh).

    No collective for no group (plain or ``Replicate`` tensors only); else one ``all_reduce(MAX)`` of one
    int32 element per group. Every rank must call it with the same groups (the collectives must match).
    Returns a 0-d bool on ``found``'s device.
    """
    if not groups:
        return found
    import torch.distributed._functional_collectives as funcol

    flag = found.reshape(1).to(torch.int32)
    for pg in groups:
        flag = funcol.wait_tensor(funcol.all_reduce(flag, "max", pg))
    return flag.reshape(()) != 0
