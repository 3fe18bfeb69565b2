"""Every aten op of a piece of code, with the bytes it reads, writes and allocates, on any device.

``OpLedger`` is a ``TorchDispatchMode``: inside ``with OpLedger() as ledger:`` each aten op that
reaches the dispatcher is recorded (composite ops show as the ops they decompose into). Bytes are
counted from the tensors' sizes (numel · itemsize of each view, not of its storage): an input is
read once, an output written once, an in-place op's target counted as read and written.

Allocations: an output whose storage existed before the op is a view or in-place write; any other is
a new storage. Each new storage is followed through every tensor the ops return on it (views
included) with weakrefs, and counts as live until the last of them is gone; ``peak_live_bytes`` is
the most bytes of storages made inside the block that were alive at once: the step's workspace.

Runs on the meta device too (no data, no compute: the GPT-2-small set takes seconds), where the
ops and sizes are those of a CPU run. Copies are the ops in ``COPY_OPS``: they move bytes and
compute nothing.
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Ops that only move or re-lay-out bytes (``.contiguous()`` is ``clone``; ``.to(dtype)`` is ``_to_copy``).
COPY_OPS = frozenset(
    {"copy_", "cat", "stack", "clone", "_to_copy", "contiguous", "_foreach_copy_", "index_copy_", "index_put_",
     "copy", "slice_scatter", "select_scatter", "as_strided_scatter"}
)


@dataclass
class OpRecord:
    """One aten op: its name (no overload), bytes read and written, bytes of new storages."""

    name: str
    read: int
    written: int
    allocated: int
    shapes: Tuple[Tuple[int, ...], ...]


@dataclass
class OpLedger(TorchDispatchMode):
    """Records every aten op run inside the block; see the module docstring."""

    records: List[OpRecord] = field(default_factory=list)
    live_bytes: int = 0
    peak_live_bytes: int = 0
    _storages: Dict[int, List[int]] = field(default_factory=dict)  # storage key -> [nbytes, live refs]

    def __post_init__(self) -> None:
        super().__init__()

    # ----------------------------------------------------------------- recording

    @staticmethod
    def _key(t: torch.Tensor) -> int:
        return t.untyped_storage()._cdata

    def _track(self, t: torch.Tensor, key: int) -> None:
        entry = self._storages[key]
        entry[1] += 1

        def release(entry: List[int] = entry, ledger: "OpLedger" = self, key: int = key) -> None:
            entry[1] -= 1
            if entry[1] == 0:
                ledger.live_bytes -= entry[0]
                if ledger._storages.get(key) is entry:  # the address may be reused by a later storage
                    del ledger._storages[key]

        weakref.finalize(t, release)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        flat_in = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        before = {self._key(t) for t in flat_in}
        out = func(*args, **kwargs)
        flat_out = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        name = func.overloadpacket.__name__
        mutated = {id(o) for o in flat_out} & {id(t) for t in flat_in}
        read = sum(t.numel() * t.element_size() for t in flat_in)
        written = sum(o.numel() * o.element_size() for o in flat_out)
        if func._schema.is_mutable and not flat_out:  # in-place ops that return nothing (foreach)
            written += sum(
                t.numel() * t.element_size()
                for a, t in zip(func._schema.arguments, args) if a.is_write
                for t in (t if isinstance(t, (list, tuple)) else [t]) if isinstance(t, torch.Tensor)
            )
        allocated = 0
        for o in flat_out:
            if id(o) in mutated:
                continue
            key = self._key(o)
            if key in before:
                if key in self._storages:  # a view of a storage made in the block
                    self._track(o, key)
                continue
            if key not in self._storages:
                nbytes = o.untyped_storage().nbytes()
                self._storages[key] = [nbytes, 0]
                allocated += nbytes
                self.live_bytes += nbytes
                self.peak_live_bytes = max(self.peak_live_bytes, self.live_bytes)
            self._track(o, key)
        self.records.append(OpRecord(name, read, written, allocated, tuple(tuple(o.shape) for o in flat_out)))
        return out

    # ----------------------------------------------------------------- summaries

    def copies(self) -> List[OpRecord]:
        """The records of copy ops (``COPY_OPS``)."""
        return [r for r in self.records if r.name in COPY_OPS]

    def summary(self) -> Dict[str, Any]:
        """Totals: ops, bytes read / written / allocated, copies (count and bytes written), per-op
        counts, and the peak of live new storages."""
        copies = self.copies()
        return {
            "ops": len(self.records),
            "read_bytes": sum(r.read for r in self.records),
            "written_bytes": sum(r.written for r in self.records),
            "allocated_bytes": sum(r.allocated for r in self.records),
            "peak_live_bytes": self.peak_live_bytes,
            "copies": len(copies),
            "copy_bytes": sum(r.written for r in copies),
            "op_counts": dict(Counter(r.name for r in self.records)),
        }
