"""Moving matrices to their owners and the polar factors back, with functional collectives.

Functional collectives (``torch.distributed._functional_collectives``) return new tensors instead of
filling caller buffers, so ``torch.compile(fullgraph=True)`` traces them as graph nodes. Every
collective here has static, equal splits fixed by the plan: one per exchange group and direction.

"rows" (FSDP2 Shard(0)): rank r holds rows of every matrix. The send buffer is (W, S, c, n): for each
destination rank d and each of its S slots, r's rows of that matrix padded to the group's longest
block c (zeros for empty shards and padding slots). After ``all_to_all`` the owner holds (W, S, c, n)
= every source's rows of its own matrices and concatenates them. The way back carries the polar factor
rows and, per matrix, its scale bit-cast into the payload dtype (a float32 scale in two bfloat16 slots),
so the scale arrives exactly and the step still needs one collective per direction.

"replicated" (DDP): every rank holds every matrix; the owner takes its own and ``all_gather`` returns
(W·S, m·n + k): every owner's factors and scales.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch import Tensor

from .plan import ExchangeGroup


def scale_dtype(payload: torch.dtype) -> torch.dtype:
    """The dtype a scale is computed in for a polar factor of ``payload`` dtype: at least float32."""
    return torch.promote_types(payload, torch.float32)


def scale_slots(payload: torch.dtype) -> int:
    """Payload elements one bit-cast scale takes (2 bfloat16 slots for a float32 scale)."""
    return scale_dtype(payload).itemsize // payload.itemsize


def ready(t: Tensor) -> Tensor:
    """Wait for a collective's result (eagerly an ``AsyncCollectiveTensor``; traced, a no-op wrapper)."""
    return funcol.wait_tensor(t)


def _pad_rows(t: Tensor, rows: int) -> Tensor:
    return F.pad(t, (0, 0, 0, rows - t.shape[0])) if t.shape[0] < rows else t


def _scale_bits(scales: Optional[Tensor], slots: int, payload: torch.dtype) -> Optional[Tensor]:
    """(slots, k) payload-dtype view of the per-slot scales (padding slots get 0)."""
    if scales is None:
        return None
    s = F.pad(scales.to(scale_dtype(payload)), (0, slots - scales.shape[0]))
    return s.view(payload).reshape(slots, -1)


def _unpack_scales(bits: Tensor, payload: torch.dtype) -> Tensor:
    """Inverse of ``_scale_bits`` on (…, k) payload slots: (…) scales.

    The slots are copied into fresh storage before the bit-cast: a dtype view needs a storage offset
    divisible by the size ratio, and the slots sit after an odd number of payload elements whenever
    c·n (or m·n) is odd. ``.contiguous()`` is not enough: with one rank and one slot the (1, 1, k)
    slice is already contiguous, so it returns the same misaligned view. The copy is W·S·k elements.
    """
    return bits.clone(memory_format=torch.contiguous_format).view(scale_dtype(payload)).squeeze(-1)


def rows_to_owners(group: ExchangeGroup, local_rows: Sequence[Tensor], payload: torch.dtype) -> Tensor:
    """Start the all_to_all of this rank's rows of every matrix to the owners; returns the in-flight
    (W, S, c, n) receive buffer for ``owned_matrices``. Issue every group's before waiting on any.

    ``local_rows[i]``: this rank's (rows_i, n) block of the group's matrix i (rows_i may be 0).
    """
    w, s, c, n = group.world_size, group.slots, group.block_rows, group.n
    zero = torch.zeros(c, n, dtype=payload, device=local_rows[0].device) if local_rows else None
    blocks = []
    for d in range(w):
        owned = group.owned[d]
        for j in range(s):
            blocks.append(_pad_rows(local_rows[owned[j]].to(payload), c) if j < len(owned) else zero)
    return funcol.all_to_all_single(torch.stack(blocks), None, None, group.process_group)


def owned_matrices(group: ExchangeGroup, received: Tensor) -> Tensor:
    """The owned matrices whole, (len(group.owned[rank]), m, n) in slot order, from ``rows_to_owners``."""
    w, s, c, n = group.world_size, group.slots, group.block_rows, group.n
    recv = ready(received).view(w, s, c, n)
    mine = group.owned[group.rank]
    if mine and all(length == c for i in mine for _, length in group.matrices[i].spans):
        # every rank sent a whole block (no padding rows): slot j's matrix is recv[:, j] in rank order,
        # gathered by one copy instead of a cat per matrix and a stack
        return recv[:, : len(mine)].transpose(0, 1).reshape(len(mine), w * c, n)
    full = [
        torch.cat([recv[r, j, : group.matrices[i].spans[r][1]] for r in range(w)])
        for j, i in enumerate(mine)
    ]
    if not full:
        return torch.zeros(0, group.m, n, dtype=recv.dtype, device=recv.device)
    return torch.stack(full)


def rows_from_owners(
    group: ExchangeGroup, polar: Tensor, scales: Optional[Tensor]
) -> Tuple[List[Tensor], Optional[Tensor]]:
    """All_to_all back: the owned polar factors (S_own, m, n) and scales (S_own,) or None → every rank's
    rows. Returns (per matrix of the group, this rank's (rows_i, n) rows of its factor; the (B,) scales
    of all the group's matrices or None)."""
    w, s, c, n = group.world_size, group.slots, group.block_rows, group.n
    payload = polar.dtype
    zero = torch.zeros(c * n, dtype=payload, device=polar.device)
    bits = _scale_bits(scales, s, payload)
    blocks = []
    for r in range(w):
        for j in range(s):
            if j < polar.shape[0]:
                i = group.owned[group.rank][j]
                start, length = group.matrices[i].spans[r]
                rows = _pad_rows(polar[j, start : start + length], c).reshape(c * n)
            else:
                rows = zero
            blocks.append(rows if bits is None else torch.cat([rows, bits[j]]))
    width = c * n + (0 if bits is None else bits.shape[1])
    recv = ready(funcol.all_to_all_single(torch.stack(blocks), None, None, group.process_group)).view(w, s, width)
    out: List[Tensor] = [None] * group.count  # type: ignore[list-item]
    order = []
    for d in range(w):
        for j, i in enumerate(group.owned[d]):
            out[i] = recv[d, j, : c * n].view(c, n)[: group.matrices[i].local_rows]
            order.append((i, d, j))
    got_scales = None
    if bits is not None:
        per_slot = _unpack_scales(recv[:, :, c * n :], payload)  # (W, S)
        index = [0] * group.count
        for i, d, j in order:
            index[i] = d * s + j
        got_scales = per_slot.reshape(-1)[torch.tensor(index, device=recv.device)] if index else None
    return out, got_scales


def replicated_to_owners(group: ExchangeGroup, matrices: Sequence[Tensor], payload: torch.dtype) -> Tensor:
    """The matrices this rank owns, (S_own, m, n) in ``payload`` dtype; no communication."""
    mine = group.owned[group.rank]
    if not mine:
        return torch.zeros(0, group.m, group.n, dtype=payload, device=matrices[0].device)
    return torch.stack([matrices[i].to(payload) for i in mine])


def replicated_from_owners(
    group: ExchangeGroup, polar: Tensor, scales: Optional[Tensor]
) -> Tuple[List[Tensor], Optional[Tensor]]:
    """All_gather: every owner's factors (and scales) → every rank. Returns (per matrix its (m, n)
    factor; the (B,) scales or None)."""
    s, m, n = group.slots, group.m, group.n
    payload = polar.dtype
    flat = F.pad(polar.reshape(polar.shape[0], m * n), (0, 0, 0, s - polar.shape[0]))
    bits = _scale_bits(scales, s, payload)
    if bits is not None:
        flat = torch.cat([flat, bits], dim=1)
    gathered = ready(funcol.all_gather_tensor(flat.contiguous(), 0, group.process_group))  # (W·S, m·n + k)
    out: List[Tensor] = [None] * group.count  # type: ignore[list-item]
    index = [0] * group.count
    for d in range(group.world_size):
        for j, i in enumerate(group.owned[d]):
            out[i] = gathered[d * s + j, : m * n].view(m, n)
            index[i] = d * s + j
    got_scales = None
    if bits is not None:
        got_scales = _unpack_scales(gathered[:, m * n :], payload)[torch.tensor(index, device=gathered.device)]
    return out, got_scales
