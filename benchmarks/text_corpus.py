"""A real-text corpus that every machine has without a download: the Python standard library's source.

    corpus = load_corpus()                       # this interpreter's stdlib, 90% / 10% split by file
    x, y = corpus.batch("train", batch=32, ctx=256, gen=torch.Generator().manual_seed(0))

Byte-level (vocabulary 256): a token is one byte of the UTF-8 source, so nothing needs a tokenizer and
every file is kept exactly. The files are the ``*.py`` files under ``sysconfig.get_paths()["stdlib"]``
in sorted order of their relative POSIX path, leaving out

* ``site-packages`` / ``dist-packages``: what is installed there differs from machine to machine;
* test suites (directories ``test``, ``tests``, ``idle_test``): some distributions ship them in a
  separate package, so keeping them would make the corpus depend on the distribution, not only on
  the Python version;
* ``encodings`` and ``pydoc_data``: generated tables and text dumps, not written code.

Train and validation are split BY FILE, by a hash of the relative path (sha256, so the split of a
file never depends on which other files exist), so no validation file is ever seen in training. Each
split is the concatenation of its files, each followed by one NUL byte (absent from source text) that
marks the file boundary. The corpus still differs between Python versions: record
``Corpus.describe()`` beside any number measured on it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

EXCLUDED_DIRS: Tuple[str, ...] = (
    "site-packages", "dist-packages", "test", "tests", "idle_test", "encodings", "pydoc_data", "__pycache__",
)  # fmt: skip
FILE_END = b"\x00"
SPLITS: Tuple[str, ...] = ("train", "val")


def stdlib_root() -> str:
    """The directory of this interpreter's standard library sources."""
    return sysconfig.get_paths()["stdlib"]


def list_source_files(root: str, excluded_dirs: Sequence[str] = EXCLUDED_DIRS) -> List[str]:
    """Relative POSIX paths of the ``*.py`` files under ``root``, sorted, without ``excluded_dirs``.

    A file is left out when any directory on its path (relative to ``root``) is named in
    ``excluded_dirs``. Symbolic links to directories are not followed (no cycles, no double counts).
    """
    if not os.path.isdir(root):
        raise ValueError(f"corpus root {root!r} is not a directory")
    excluded = set(excluded_dirs)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in excluded]
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.endswith(".py") and os.path.isfile(os.path.join(dirpath, name)):
                rel = name if rel_dir == "." else os.path.join(rel_dir, name)
                out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def is_validation(rel_path: str, val_fraction: float) -> bool:
    """Whether ``rel_path`` belongs to the validation split: the first 8 bytes of its sha256, read as a
    fraction of 2⁶⁴, fall below ``val_fraction``. Depends on the path alone, on every machine."""
    h = int.from_bytes(hashlib.sha256(rel_path.encode("utf-8")).digest()[:8], "big")
    return h < val_fraction * 2**64


@dataclass
class Corpus:
    """Both splits as uint8 tensors (bytes, on ``device``), and the files that made each.

    ``train`` / ``val``: 1-D uint8, the concatenation of the split's files, each followed by NUL.
    """

    root: str
    train_files: List[str]
    val_files: List[str]
    train: Tensor
    val: Tensor

    def split(self, name: str) -> Tensor:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {list(SPLITS)}")
        return self.train if name == "train" else self.val

    def batch(self, split: str, batch: int, ctx: int, gen: torch.Generator) -> Tuple[Tensor, Tensor]:
        """``batch`` windows of ``ctx + 1`` bytes at uniform random starts in ``split`` (drawn from ``gen``,
        a CPU generator): inputs (batch, ctx) and next-byte targets (batch, ctx), int64 on the corpus'
        device. The same generator state gives the same batch on every device."""
        src = self.split(split)
        if len(src) < ctx + 2:
            raise ValueError(f"split {split!r} has {len(src)} bytes, fewer than ctx + 2 = {ctx + 2}")
        starts = torch.randint(0, len(src) - ctx - 1, (batch,), generator=gen)
        idx = starts[:, None] + torch.arange(ctx + 1)[None, :]
        chunk = src[idx.to(src.device)].long()
        return chunk[:, :-1], chunk[:, 1:]

    def windows(self, split: str, ctx: int) -> Tuple[Tensor, Tensor]:
        """The whole split cut into consecutive non-overlapping windows of ``ctx`` targets (the tail that
        does not fill one is dropped): inputs and targets, each (n_windows, ctx) int64. For an exact,
        sampling-free validation loss."""
        src = self.split(split)
        n = (len(src) - 1) // ctx
        x = src[: n * ctx].view(n, ctx).long()
        y = src[1 : n * ctx + 1].view(n, ctx).long()
        return x, y

    def to(self, device: torch.device) -> "Corpus":
        return Corpus(self.root, self.train_files, self.val_files, self.train.to(device), self.val.to(device))

    def describe(self) -> Dict[str, object]:
        """What a reader needs to know which corpus a number was measured on."""
        return {
            "source": "python stdlib *.py",
            "python": platform.python_version(),
            "root": self.root,
            "files": {"train": len(self.train_files), "val": len(self.val_files)},
            "bytes": {"train": int(self.train.numel()), "val": int(self.val.numel())},
            "excluded_dirs": list(EXCLUDED_DIRS),
        }


def _concat(root: str, files: Sequence[str]) -> Tensor:
    parts = []
    for rel in files:
        with open(os.path.join(root, rel), "rb") as f:
            parts.append(f.read())
        parts.append(FILE_END)
    data = b"".join(parts)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def load_corpus(root: Optional[str] = None, val_fraction: float = 0.1) -> Corpus:
    """Read every source file under ``root`` (default: this interpreter's stdlib) into a ``Corpus`` on
    the CPU. Raises ValueError naming the value for a ``val_fraction`` outside (0, 1), a missing root,
    or a root with no source files."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    root = root or stdlib_root()
    files = list_source_files(root)
    if not files:
        raise ValueError(f"no *.py files under {root!r}")
    val_files = [f for f in files if is_validation(f, val_fraction)]
    train_files = [f for f in files if not is_validation(f, val_fraction)]
    return Corpus(root, train_files, val_files, _concat(root, train_files), _concat(root, val_files))


def decode(ids: Tensor) -> bytes:
    """A 1-D tensor of byte ids back to bytes."""
    return bytes(ids.to(torch.uint8).cpu().tolist())


if __name__ == "__main__":
    import json

    print(json.dumps(load_corpus().describe(), indent=1))
