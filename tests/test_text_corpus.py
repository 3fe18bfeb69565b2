"""The stdlib text corpus of benchmarks/lm_text.py: a deterministic, disjoint split by file, exact bytes,
batches from the split they name."""

import os
import random
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import text_corpus  # noqa: E402
from text_corpus import FILE_END, decode, is_validation, list_source_files, load_corpus  # noqa: E402


def _fake_stdlib(root, n_files=60, seed=0):
    """A small tree shaped like a stdlib: packages, excluded dirs, non-.py files, random bytes (no NUL)."""
    r = random.Random(seed)
    files = {}
    for i in range(n_files):
        rel = f"pkg{i % 4}/mod_{i}.py" if i % 3 else f"top_{i}.py"
        files[rel] = bytes(r.randrange(1, 256) for _ in range(r.randrange(50, 400)))
    excluded = {"test/test_x.py": b"excluded", "site-packages/lib.py": b"excluded", "pkg1/tests/t.py": b"excluded",
                "encodings/cp1.py": b"excluded", "README.txt": b"not python"}
    for rel, data in {**files, **excluded}.items():
        path = os.path.join(root, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return files


def test_listing_sorted_and_excludes(tmp_path):
    files = _fake_stdlib(str(tmp_path))
    listed = list_source_files(str(tmp_path))
    assert listed == sorted(files)


def test_split_deterministic_disjoint_and_by_path(tmp_path):
    _fake_stdlib(str(tmp_path))
    a, b = load_corpus(str(tmp_path), 0.3), load_corpus(str(tmp_path), 0.3)
    assert a.train_files == b.train_files and a.val_files == b.val_files
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert not set(a.train_files) & set(a.val_files)
    assert sorted(a.train_files + a.val_files) == list_source_files(str(tmp_path))
    assert a.val_files and a.train_files
    # the split of a file depends on its path alone, not on which other files exist
    assert all(is_validation(f, 0.3) for f in a.val_files)
    assert not any(is_validation(f, 0.3) for f in a.train_files)


def test_bytes_round_trip(tmp_path):
    files = _fake_stdlib(str(tmp_path), seed=1)
    c = load_corpus(str(tmp_path), 0.3)
    for name, names in (("train", c.train_files), ("val", c.val_files)):
        expected = b"".join(files[f] + FILE_END for f in names)
        assert decode(c.split(name)) == expected
        assert c.split(name).dtype == torch.uint8


def test_batches_come_from_their_split(tmp_path):
    _fake_stdlib(str(tmp_path), seed=2)
    c = load_corpus(str(tmp_path), 0.3)
    streams = {s: decode(c.split(s)) for s in ("train", "val")}
    gen = torch.Generator().manual_seed(0)
    for split, other in (("train", "val"), ("val", "train")):
        x, y = c.batch(split, 8, 24, gen)
        assert x.shape == y.shape == (8, 24) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the next bytes
        for row_x, row_y in zip(x, y):
            window = decode(torch.cat([row_x, row_y[-1:]]))
            assert window in streams[split]
            assert window not in streams[other]  # 25 random bytes: a chance match is impossible here
    # same generator state, same batch
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(c.batch("train", 4, 16, g1)[0], c.batch("train", 4, 16, g2)[0])
    xw, yw = c.windows("val", 16)
    assert decode(xw.reshape(-1)) == streams["val"][: xw.numel()]
    assert decode(yw.reshape(-1)) == streams["val"][1 : xw.numel() + 1]


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="1.5"):
        load_corpus(str(tmp_path), 1.5)
    with pytest.raises(ValueError, match="no \\*.py files"):
        load_corpus(str(tmp_path))
    _fake_stdlib(str(tmp_path))
    c = load_corpus(str(tmp_path), 0.3)
    with pytest.raises(ValueError, match="'dev'"):
        c.split("dev")


def test_real_stdlib_size_sanity():
    c = load_corpus()
    d = c.describe()
    assert text_corpus.stdlib_root() == c.root
    assert d["files"]["train"] + d["files"]["val"] > 300
    total = d["bytes"]["train"] + d["bytes"]["val"]
    assert total > 3_000_000, d  # several MB of real source
    assert 0.04 < d["bytes"]["val"] / total < 0.2, d
    assert not any(part in ("test", "tests", "site-packages") for f in c.train_files + c.val_files
                   for part in f.split("/")[:-1])
    assert "os.py" in c.train_files + c.val_files
    assert b"def " in decode(c.train[:200_000])
