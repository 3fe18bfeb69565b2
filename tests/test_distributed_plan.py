"""The distributed plan without processes: LPT owners, the chunk layout, fused parts, describe_plan."""

from __future__ import annotations

import pytest
import torch

import fpolar
from fpolar.distributed import assign_owners, newton_schulz_cost
from fpolar.distributed.layout import chunk_spans, row_sharded_parts
from fpolar.distributed.owners import rank_loads


def test_chunk_spans_follow_torch_chunk_with_empty_tail():
    for size in (1, 3, 5, 7, 8, 18):
        for w in (1, 2, 4, 8):
            spans = chunk_spans(size, w)
            pieces = torch.arange(size).chunk(w)
            lengths = [len(p) for p in pieces] + [0] * (w - len(pieces))
            assert [s[1] for s in spans] == lengths
            assert sum(s[1] for s in spans) == size


def test_owners_slots_at_most_ceil_and_cover_every_matrix():
    counts, shapes = [5, 3, 1, 8], [(768, 768), (3072, 768), (10, 20), (64, 64)]
    costs = [newton_schulz_cost(*s) for s in shapes]
    for w in (1, 2, 4, 8):
        owners = assign_owners(counts, costs, w)
        for g, count in enumerate(counts):
            owned = sorted(i for rank in owners[g] for i in rank)
            assert owned == list(range(count))
            assert max(len(o) for o in owners[g]) == -(-count // w)
        assert owners == assign_owners(counts, costs, w)  # deterministic


def test_lpt_sends_partial_rounds_to_the_least_loaded_ranks():
    # one big matrix then three small: LPT puts the small ones on the other ranks, not on rank 0
    owners = assign_owners([1, 3], [newton_schulz_cost(3072, 768), newton_schulz_cost(64, 64)], 4)
    assert owners[0] == [[0], [], [], []]
    assert owners[1] == [[], [0], [1], [2]]
    loads = rank_loads(owners, [newton_schulz_cost(3072, 768), newton_schulz_cost(64, 64)], 4)
    assert loads[0] == newton_schulz_cost(3072, 768)


def test_fused_parts_intersect_each_rank_block():
    # 12 rows split [6, 3, 3] over 4 ranks (blocks of 3): part 0 on ranks 0-1, parts 1, 2 on ranks 2, 3
    refs = [row_sharded_parts(0, 12, (6, 3, 3), 4, r) for r in range(4)]
    assert refs[0][0].spans == ((0, 3), (3, 3), (0, 0), (0, 0))
    assert refs[2][1].spans == ((0, 0), (0, 0), (0, 3), (0, 0))
    assert (refs[2][1].local_start, refs[2][1].local_rows) == (0, 3)
    assert refs[1][1].local_rows == 0


def test_split_sizes_must_cover_the_rows():
    hp = fpolar.PolarGradHParams(lr=0.1)
    with pytest.raises(ValueError, match=r"split_sizes \[4, 4\] for params\[0\] sum to 8"):
        fpolar.init_state([torch.randn(12, 4)], hp, split_sizes={0: [4, 4]})
    with pytest.raises(ValueError, match="not a param index"):
        fpolar.init_state([torch.randn(12, 4)], hp, split_sizes={3: [12]})


@pytest.mark.parametrize("order", ["momentum_first", "polar_first"])
def test_fused_param_steps_like_its_parts(order):
    """One process, no communication: a (12, 4) param split [4, 8] equals two params (4, 4) and (8, 4),
    and a NaN / inf in one part's rows (steps 1 and 3) makes the call a bitwise no-op, counted."""
    torch.manual_seed(0)
    hp = fpolar.PolarGradHParams(lr=0.05, order=order, weight_decay=0.1, nesterov=True)
    w = torch.randn(12, 4)
    parts = [w[:4].clone(), w[4:].clone()]
    fused_state = fpolar.init_state([w], hp, split_sizes={0: [4, 8]})
    parts_state = fpolar.init_state(parts, hp)
    for t in range(5):
        g = torch.randn(12, 4)
        if t in (1, 3):
            g[5 if t == 1 else 2, 1] = float("nan") if t == 1 else float("inf")
            before = [w.clone(), *(m.clone() for m in fused_state.momentum), fused_state.step.clone()]
        fpolar.polargrad_step([w], [g], fused_state, hp)
        fpolar.polargrad_step(parts, [g[:4], g[4:]], parts_state, hp)
        if t in (1, 3):
            after = [w, *fused_state.momentum, fused_state.step]
            assert all(torch.equal(a.view(-1).view(torch.int32), b.view(-1).view(torch.int32)) for a, b in zip(after, before))
    torch.testing.assert_close(w, torch.cat(parts), rtol=0, atol=1e-6)
    assert fused_state.skipped.item() == 2 and fused_state.step.item() == 3
    rows = fpolar.describe_plan(fused_state, hp)
    assert [(r["kind"], r["shape"], r["bytes_sent_per_step"]) for r in rows] == [("local", (4, 4), 0), ("local", (8, 4), 0)]


@pytest.mark.parametrize("payload", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_scales_travel_bit_exactly_in_the_payload_dtype(payload):
    """Step sizes ride back in the polar dtype's slots (a float32 in two bf16 slots): unchanged bits."""
    from fpolar.distributed.exchange import _scale_bits, _unpack_scales, scale_dtype

    scales = torch.randn(3, dtype=torch.float64).exp().to(scale_dtype(payload))
    bits = _scale_bits(scales, 5, payload)  # 3 scales, 5 slots: two padding slots
    assert bits.dtype == payload and bits.shape[0] == 5
    back = _unpack_scales(bits, payload)
    assert torch.equal(back[:3], scales) and torch.equal(back[3:], torch.zeros(2, dtype=scales.dtype))


@pytest.mark.parametrize("payload", [torch.bfloat16, torch.float16])
def test_scales_unpack_from_a_slice_at_an_odd_offset(payload):
    """With one rank and one slot the received (1, 1, c·n + k) buffer's scale slots are a contiguous
    slice starting at c·n; an odd c·n (a (3, 7) matrix at world 1) must still unpack exactly."""
    from fpolar.distributed.exchange import _scale_bits, _unpack_scales, scale_dtype

    c, n = 3, 7
    scales = torch.randn(1, dtype=torch.float64).exp().to(scale_dtype(payload))
    bits = _scale_bits(scales, 1, payload)
    recv = torch.cat([torch.randn(c * n).to(payload), bits[0]]).view(1, 1, c * n + bits.shape[1])
    sliced = recv[:, :, c * n :]
    assert sliced.is_contiguous() and sliced.storage_offset() % 2 == 1  # the layout that failed
    back = _unpack_scales(sliced, payload)
    assert back.shape == (1, 1) and torch.equal(back.reshape(-1), scales)
    gathered = recv.view(1, -1)  # the replicated exchange's (W·S, m·n + k) at W·S = 1
    assert torch.equal(_unpack_scales(gathered[:, c * n :], payload).reshape(-1), scales)
