"""The polar factor of a matrix split along one dim across a tensor-parallel group.

Orthogonalizing each shard on its own is wrong (the shards' factors are not the blocks of the whole
matrix's factor). Two correct ways, selectable:

"distributed": Newton–Schulz on the shards. Turn the input so the split dim is the columns,
    Y = [Y₁ … Y_T]; then the Gram matrix Y Yᵀ = Σ_t Y_t Y_tᵀ is a sum of the shards' partial Grams:
    one all-reduce of an a×a matrix per iteration (a = the unsplit side), the polynomial
    B = b·A + c·A·A on the replicated Gram, and Y_t ← a·Y_t + B·Y_t locally. The Frobenius norm is one
    all-reduce of the shards' sums of squares. This needs the unsplit side to be the short (or equal)
    side: split along the short side, the partial Grams of the small side do not add up (it would
    need the big one), and this refuses, naming ``partition_dim``.
"duplicated": all-gather the whole matrix, run any polar backend on it, keep this rank's slice.
    Replicated work and memory, any split, any method.

Reached through ``fpolar.polar(x_shard, …, process_group=…, partition_dim=…)``, which hands in its spec
and its one-device polar for the duplicated mode (this module sits below ``fpolar.polar``'s package
module and does not import it).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch import Tensor

from .newton_schulz import NSOps, _torch_apply, _torch_poly, aol_precondition

TP_MODES = ("distributed", "duplicated")


def _sum(t: Tensor, group: Any) -> Tensor:
    return funcol.wait_tensor(funcol.all_reduce(t, "sum", group))


def _distributed_newton_schulz(y: Tensor, spec: Any, group: Any) -> Tensor:
    """NS on column shards ``y`` (B, a, b_t) of wide matrices; the Gram all-reduced every iteration."""
    dtype = spec.compute_dtype(y)
    acc = torch.promote_types(y.dtype, torch.float32)
    sq = _sum(y.to(acc).square().sum(dim=(-2, -1), keepdim=True), group)
    x = (y.to(acc) / (sq.sqrt() * spec.safety + spec.eps)).to(dtype)
    ops = NSOps(lambda t: _sum(torch.bmm(t, t.mT), group), _torch_poly, _torch_apply)
    gram = None
    if spec.normalization == "aol":
        x, gram = aol_precondition(x, spec.eps, ops)
    for a, b, c in spec.schedule:
        if gram is None:
            gram = ops.gram(x)
        x = ops.apply(x, ops.poly(gram, b, c), a)
        gram = None
    return x


def _gather_along(x: Tensor, dim: int, sizes: Sequence[int], group: Any) -> Tensor:
    """All-gather shards of ``x`` along ``dim`` (sizes per rank, maybe uneven) into the whole tensor."""
    biggest = max(sizes)
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, biggest - x.shape[dim]]
    padded = F.pad(x, pad) if biggest > x.shape[dim] else x
    moved = padded.movedim(dim, 0).contiguous()
    whole = funcol.wait_tensor(funcol.all_gather_tensor(moved, 0, group))  # (T·biggest, …)
    pieces = [whole[r * biggest : r * biggest + s] for r, s in enumerate(sizes)]
    return torch.cat(pieces).movedim(0, dim)


def tensor_parallel_polar(
    x_shard: Tensor,
    spec: Any,
    polar_whole: Callable[[Tensor], Tensor],
    *,
    process_group: Any,
    partition_dim: int,
    mode: str = "distributed",
    partition_sizes: Optional[Sequence[int]] = None,
) -> Tensor:
    """This rank's shard of the polar factor of a matrix (or batch) split along ``partition_dim``.

    Args:
        x_shard: (…, m, n) this rank's shard; not modified. Leading dims are a batch.
        spec: the ``PolarSpec`` (how the polar factor is computed).
        polar_whole: the one-device polar factor of a (B, m, n) batch of either orientation, returned
            in that orientation (used by the duplicated mode).
        process_group: the tensor-parallel group (every rank calls this with its shard).
        partition_dim: the split matrix dim: ``x_shard.dim() − 2`` / −2 (rows) or ``x_shard.dim() − 1`` / −1
            (columns).
        mode: "distributed" (Newton–Schulz with the Gram all-reduced each iteration) or "duplicated"
            (gather, any method, narrow).
        partition_sizes: the split dim's size on every rank, in rank order; None means all equal to
            this rank's.

    Returns:
        The shard of the whole matrix's polar factor, ``x_shard``'s shape and dtype.

    Raises:
        ValueError naming the bad value, before any communication: a ``partition_dim`` that is not a
        matrix dim, a distributed-mode split along the short side, a method other than Newton–Schulz
        in distributed mode, ``partition_sizes`` of the wrong length or not matching this shard.
    """
    if mode not in TP_MODES:
        raise ValueError(f"unknown tensor-parallel mode {mode!r}; expected one of {list(TP_MODES)}")
    nd = x_shard.dim()
    if nd < 2:
        raise ValueError(f"x_shard must be a matrix or a batch of matrices, got shape {tuple(x_shard.shape)}")
    if isinstance(partition_dim, bool) or not isinstance(partition_dim, int) or partition_dim not in (-2, -1, nd - 2, nd - 1):
        raise ValueError(
            f"partition_dim={partition_dim!r} is not a matrix dim of a {nd}-D shard; use -2 / {nd - 2} (rows) "
            f"or -1 / {nd - 1} (columns)"
        )
    dim = partition_dim % nd
    world, rank = dist.get_world_size(process_group), dist.get_rank(process_group)
    sizes = list(partition_sizes) if partition_sizes is not None else [x_shard.shape[dim]] * world
    if len(sizes) != world or sizes[rank] != x_shard.shape[dim]:
        raise ValueError(
            f"partition_sizes={sizes} must give the split dim's size on each of the {world} ranks; this rank "
            f"({rank}) holds {x_shard.shape[dim]}"
        )
    whole_split, other = sum(sizes), x_shard.shape[nd - 1 if dim == nd - 2 else nd - 2]
    if mode == "duplicated":
        whole = _gather_along(x_shard, dim, sizes, process_group)
        m, n = whole.shape[-2:]
        out = polar_whole(whole.reshape(-1, m, n)).reshape(whole.shape)
        start = sum(sizes[:rank])
        return out.narrow(dim, start, sizes[rank]).to(x_shard.dtype).contiguous()
    if spec.method != "newton_schulz":
        raise ValueError(
            f"tensor-parallel mode 'distributed' runs Newton–Schulz, got method={spec.method!r}; use mode='duplicated'"
        )
    if other > whole_split:
        side = "rows" if dim == nd - 2 else "columns"
        raise ValueError(
            f"partition_dim={partition_dim} splits the {side}, the short side of a {other}×{whole_split} "
            f"(unsplit × split) matrix: the partial Gram matrices of the short side do not sum to the whole "
            f"one. Split the long side, or use mode='duplicated'"
        )
    y = x_shard.reshape(-1, *x_shard.shape[-2:])
    y = y.mT if dim == nd - 2 else y  # the split dim as the columns
    o = _distributed_newton_schulz(y, spec, process_group)
    o = o.mT if dim == nd - 2 else o
    return o.reshape(x_shard.shape).to(x_shard.dtype)
